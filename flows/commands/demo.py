"""`riskflow demo`: the whole story on the embedded database, from nothing."""

from __future__ import annotations

import argparse

from flows.context import settings_and_spec
from flows.output import emit
from riskmodel.db import database_url, redact
from riskmodel.schema import init_database


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `demo`."""
    p = sub.add_parser("demo", parents=[common],
                       help="initialise the database, seed a small bank, train, score, report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run each demo step in order and print what it did."""
    settings, spec = settings_and_spec()
    url = database_url(settings)
    report = init_database(settings, spec, demo_source=True)
    steps = [f"database: {redact(url)}",
             f"db init: schema {report.schema!r}, applied {', '.join(report.files)}"]
    emit(args.json, {"steps": steps}, "\n".join(steps))
    return 0
