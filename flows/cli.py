"""The `riskflow` command: argument parsing, logging to stderr, one-line errors with exit 2.

Each command group lives in `flows/commands/<name>.py` and exposes `register(subparsers,
common)`; results go to stdout (a table, or JSON with `--json`), logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tomllib
from collections.abc import Sequence

import psycopg
from pydantic import ValidationError
from pydantic_settings import SettingsError

from riskmodel.db import redact
from riskmodel.errors import RiskflowError, first_line
from riskmodel.settings import config_file

COMMAND_MODULES = [
    "flows.commands.db",
    "flows.commands.spec",
    "flows.commands.config",
    "flows.commands.demo",
    "flows.commands.models",
    "flows.commands.seed",
    "flows.commands.flowruns",
    "flows.commands.serve",
    "flows.commands.extract",
    "flows.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per registered module."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--spec", metavar="PATH",
                        help="feature spec TOML (default: RISKFLOW_SPEC or the demo spec)")
    common.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser = argparse.ArgumentParser(
        prog="riskflow",
        description="Nightly account-risk scoring with an LSTM, run as Prefect flows over Postgres.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "prefect", "alembic", "aiosqlite", "urllib3", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


PREFECT_DEFAULTS = {
    # A busy 2-core machine can take longer than Prefect's 20 s to start the ephemeral API.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.spec:
        os.environ["RISKFLOW_SPEC"] = args.spec
    try:
        return int(args.func(args) or 0)
    except RiskflowError as exc:
        print(f"riskflow {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        print(f"riskflow {args.command}: invalid configuration: {problems}", file=sys.stderr)
        return 2
    except (SettingsError, tomllib.TOMLDecodeError) as exc:
        where = f"{config_file()}: " if isinstance(exc, tomllib.TOMLDecodeError) else ""
        print(f"riskflow {args.command}: invalid configuration: {where}{first_line(redact(str(exc)))}",
              file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        first = first_line(redact(str(exc))) or type(exc).__name__
        print(f"riskflow {args.command}: database error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"riskflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
