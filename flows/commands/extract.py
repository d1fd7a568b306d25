"""`riskflow extract --date D`: bring the Parquet lake up to local date D (incremental, atomic)."""

from __future__ import annotations

import argparse

from flows.commands.args import DATE_METAVAR, iso_date
from flows.output import emit, table
from riskmodel.storage import redact_lake
from tasks.context import settings_and_spec


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `extract`."""
    p = sub.add_parser("extract", parents=[common],
                       help="extract source transactions into the Parquet lake up to a date")
    p.add_argument("--date", required=True, type=iso_date, metavar=DATE_METAVAR,
                   help="run date D (local business date); reads ts < D+1")
    p.add_argument("--full", action="store_true", help="ignore the watermark and re-extract all history")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the extract and print what it wrote and quarantined."""
    from riskmodel.lake import extract

    settings, spec = settings_and_spec()
    report = extract(settings, spec, args.date, full=args.full)
    payload = report.as_dict()
    rows = [{"rule": r, "quarantined": n} for r, n in report.quarantined.items()]
    lake = redact_lake(settings, settings.lake)
    text = (f"extract {report.source} -> {lake}: {report.rows_read} rows read, "
            f"{report.rows_written} written to {len(report.dates_written)} dates "
            f"(from {report.read_from or 'the beginning'}), {len(report.dates_empty)} dates without rows, "
            f"{report.seconds:.2f}s\n"
            + (f"{len(report.dates_missing)} dates had lost their partition and were read again "
               f"(first {report.dates_missing[0]})\n" if report.dates_missing else "")
            + table(rows))
    emit(args.json, payload, text)
    return 0
