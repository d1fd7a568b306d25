"""`riskflow seed`: create the demo source tables and fill them with the synthetic bank."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from flows.output import emit, table
from riskmodel.clock import yesterday
from riskmodel.errors import ConfigError
from riskmodel.schema import InitReport, init_database
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import FeatureSpec, load_spec
from tasks.context import settings_and_spec

if TYPE_CHECKING:
    from riskmodel.synthetic import SeedReport


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `seed`."""
    p = sub.add_parser("seed", parents=[common],
                       help="(re)create bank.* with a synthetic bank that has planted risk patterns")
    p.add_argument("--accounts", type=int, default=5000, help="number of accounts (default 5000)")
    p.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    p.add_argument("--end-date", metavar="YYYY-MM-DD",
                   help="last day of history (default: yesterday in the business time zone)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--no-order-patterns", dest="order_patterns", action="store_false",
                   help="control bank: look-alikes differ in aggregates only, never in order")
    p.set_defaults(func=run)


def _end_date(text: str | None, tz: ZoneInfo) -> dt.date:
    if text is None:
        return yesterday(tz)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--end-date {text!r} is not a date like 2026-06-30") from None


def reseed(settings: Settings, spec: FeatureSpec, *, accounts: int, days: int, end_date: dt.date, seed: int,
           order_patterns: bool = True) -> tuple[InitReport, SeedReport, str]:
    """Initialise the database with the demo source tables and seed them. When the spec reads the
    seeded tables, the lake built from the bank they replace is forgotten first, so the next extract
    reads the new bank whole; a lake built from another source is left alone. Returns what db init
    applied, the seed's report, and a line saying what became of the lake. `seed` and `demo` both
    start this way."""
    from riskmodel import lake
    from riskmodel.synthetic import seed_bank

    initialised = init_database(settings, spec, demo_source=True)
    seeded_source = load_spec(DEMO_SPEC).transactions.qualified
    resets = spec.transactions.qualified == seeded_source
    if resets:
        lake.reset_lake(settings)
    report = seed_bank(settings, accounts=accounts, days=days, end_date=end_date, seed=seed,
                       order_patterns=order_patterns, progress=True)
    lake_line = ("lake reset for a full extract" if resets else
                 f"lake kept: the spec reads {spec.transactions.qualified}, not {seeded_source}")
    return initialised, report, lake_line


def run(args: argparse.Namespace) -> int:
    """Seed the synthetic bank (`reseed`) and report volumes."""
    settings, spec = settings_and_spec()
    end_date = _end_date(args.end_date, settings.tz)
    _, report, lake_line = reseed(settings, spec, accounts=args.accounts, days=args.days, end_date=end_date,
                                  seed=args.seed, order_patterns=args.order_patterns)
    rows = [{"pattern": name, **counts} for name, counts in report.patterns.items()]
    text = (f"seed: {report.accounts} accounts x {report.days} days to {end_date} (seed {report.seed}, "
            f"{'ordered' if report.order_patterns else 'control'} bank) in {report.seconds:.1f} s; "
            f"{lake_line}\n"
            + table([{"table": k, "rows": v} for k, v in report.rows.items()]) + "\n\n" + table(rows))
    emit(args.json, report.to_dict(), text)
    return 0
