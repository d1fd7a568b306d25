"""What every benchmark stage shares: scales, the row format, a cached seeded bank, child-process runs.

A stage module `bench/<stage>.py` defines `run(scale, workdir) -> list[dict]`, each dict made by
`bench_row`. The measured work runs in a fresh child process (`in_child`) so that `peak_rss_mb`
is that of a process that ran only the stage. Banks are seeded once per scale into an embedded
Postgres under `workdir/bank-<scale>` and reused while their marker file matches.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from riskmodel.child import run_in_child
from riskmodel.errors import ConfigError
from riskmodel.settings import Settings

log = logging.getLogger("riskflow.bench")

END_DATE = date(2026, 6, 30)
SEED = 7


@dataclass(frozen=True)
class Scale:
    """A benchmark size: how many accounts over how many days."""

    accounts: int
    days: int


SCALES = {"S": Scale(5_000, 90), "M": Scale(100_000, 180)}
ROW_KEYS = ("stage", "scale", "rows", "seconds", "rows_per_s", "peak_rss_mb", "output_mb", "baseline",
            "baseline_ratio", "limit", "limit_ratio")


def scale_of(name: str) -> Scale:
    """The Scale called `name` (S or M)."""
    try:
        return SCALES[name]
    except KeyError:
        raise ConfigError(f"bench --scale {name!r}: choose one of {sorted(SCALES)}") from None


def bench_row(stage: str, scale: str, *, rows: int, seconds: float, peak_rss_mb: float, output_mb: float,
              baseline: str, baseline_rate: float, limit: str, limit_rate: float,
              details: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result row; ratios are our rows/s over the baseline's and the limit's rows/s, same run."""
    rate = rows / seconds if seconds > 0 else 0.0
    row: dict[str, Any] = {
        "stage": stage, "scale": scale, "rows": int(rows), "seconds": round(seconds, 4),
        "rows_per_s": round(rate, 1), "peak_rss_mb": round(peak_rss_mb, 1), "output_mb": round(output_mb, 2),
        "baseline": baseline, "baseline_ratio": round(rate / baseline_rate, 3) if baseline_rate else None,
        "limit": limit, "limit_ratio": round(rate / limit_rate, 3) if limit_rate else None,
    }
    if details:
        row["details"] = details
    return row


def dir_mb(path: Path, pattern: str = "**/*") -> float:
    """Total size in MiB of the files under `path` matching `pattern`."""
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file()) / 2**20


def _timed(fn: Callable[..., Any], args: tuple[Any, ...],
           on_progress: Callable[..., None]) -> tuple[Any, float, float]:
    """Child side of `in_child` (which reports no progress): result, seconds inside, peak RSS in MiB."""
    del on_progress
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    return result, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def in_child(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Run `fn(*args)` in a fresh spawned process: (result, seconds inside it, its peak RSS in MiB)."""
    return run_in_child(_timed, {"fn": fn, "args": args})


def bench_settings(scale: str, workdir: Path, **overrides: Any) -> Settings:
    """Settings for the bank of `scale` under `workdir`, with the embedded server's URL resolved."""
    from riskmodel.db import database_url

    home = (Path(workdir) / f"bank-{scale}").resolve()
    url = database_url(Settings(database_url=None, home=home))
    return Settings(database_url=url, home=home, lake_url=str(home / "lake"), **overrides)


def seeded_bank(scale: str, workdir: Path) -> Settings:
    """Settings of a bank seeded at `scale` (synthetic bank, END_DATE, SEED), seeding it only once;
    `db init` runs every time, as after an upgrade, so a cached bank gets this version's tables."""
    from riskmodel.schema import init_database
    from riskmodel.settings import DEMO_SPEC
    from riskmodel.spec import load_spec
    from riskmodel.synthetic import seed_bank

    size = scale_of(scale)
    settings = bench_settings(scale, workdir)
    marker = settings.home / "seeded.json"
    want = {"accounts": size.accounts, "days": size.days, "end_date": END_DATE.isoformat(), "seed": SEED}
    spec = load_spec(DEMO_SPEC)
    init_database(settings, spec, demo_source=True)
    if marker.exists() and json.loads(marker.read_text()).get("bank") == want:
        return settings
    log.info("bench: seeding bank %s (%d accounts x %d days)", scale, size.accounts, size.days)
    report = seed_bank(settings, accounts=size.accounts, days=size.days, end_date=END_DATE, seed=SEED,
                       progress=True)
    marker.write_text(json.dumps({"bank": want, "rows": report.rows}))
    return settings
