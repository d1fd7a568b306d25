"""`riskflow bench --stage STAGE --scale S|M [--json PATH]`: run one benchmark stage, print a table."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from types import ModuleType

from flows.output import table, to_json
from riskmodel.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parent.parent.parent / "bench"
NOT_STAGES = {"__init__", "common"}
COLUMNS = ["stage", "scale", "rows", "seconds", "rows_per_s", "peak_rss_mb", "output_mb", "baseline_ratio",
           "limit_ratio"]


def stages() -> list[str]:
    """Stage names: the modules in bench/ other than the shared ones."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_STAGES)


def table_columns(module: ModuleType) -> list[str]:
    """The columns a stage's table prints: its `TABLE_COLUMNS` if it defines them, else the row's."""
    return list(getattr(module, "TABLE_COLUMNS", COLUMNS))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `bench` (its --json takes a path, so it does not inherit the common --json flag)."""
    p = sub.add_parser("bench", help="run one benchmark stage and print a table")
    p.add_argument("--spec", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    p.add_argument("--stage", required=True,
                   help=f"stage module in bench/: {', '.join(stages())}")
    p.add_argument("--scale", required=True, choices=["S", "M"], help="S = 5k x 90 days, M = 100k x 180")
    p.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list ('-' for stdout)")
    p.add_argument("--workdir", type=Path, default=Path(".riskflow/bench"),
                   help="where seeded banks, lakes and outputs are cached (default .riskflow/bench)")
    p.add_argument("--bank", action="append", choices=["synthetic", "control"],
                   help="model stage: run only this bank (repeatable; default both)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import bench.<stage>, run it, print the table and write the JSON list."""
    if args.stage not in stages():
        raise ConfigError(f"bench --stage {args.stage!r}: choose one of {stages()}")
    module = importlib.import_module(f"bench.{args.stage}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.bank and args.stage != "model":
        raise ConfigError(f"bench --bank applies to --stage model, not {args.stage!r}")
    rows = (module.run(args.scale, args.workdir, banks=args.bank) if args.bank
            else module.run(args.scale, args.workdir))
    if args.json == "-":
        print(to_json(rows))
        return 0
    print(table(rows, table_columns(module)))
    for row in rows:
        if row.get("baseline") is not None:
            print(f"  {row['stage']}: baseline = {row['baseline']}; limit = {row['limit']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0
