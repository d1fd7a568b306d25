"""`riskflow db init`: create roles, riskflow's schema and views (idempotent)."""

from __future__ import annotations

import argparse

from flows.output import emit
from riskmodel.schema import init_database
from tasks.context import settings_and_spec


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `db` command group."""
    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    init = db_sub.add_parser("init", parents=[common], help="create roles, schema, tables, views")
    init.add_argument("--demo-source", action="store_true",
                      help="also create the synthetic bank's source tables (schema bank)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Apply sql/ in one transaction and report what was applied."""
    settings, spec = settings_and_spec()
    report = init_database(settings, spec, demo_source=args.demo_source)
    payload = {"schema": report.schema, "applied": report.files,
               "reader_can_select": report.source_tables, "reader_members": report.reader_members}
    text = (f"db init: schema {report.schema!r} ready; applied {', '.join(report.files)}; "
            f"reader role may SELECT {', '.join(report.source_tables)}"
            + (f"\nreader role held by {', '.join(report.reader_members)}: analysts should hold "
               f"{settings.analyst_role} instead (the reader role reads the source tables)"
               if report.reader_members else ""))
    emit(args.json, payload, text)
    return 0
