"""`riskflow check-spec`: validate the feature spec against the live database."""

from __future__ import annotations

import argparse

from flows.output import emit
from riskmodel.db import connect
from riskmodel.spec_check import check_spec
from tasks.context import settings_and_spec


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `check-spec`."""
    p = sub.add_parser("check-spec", parents=[common],
                       help="check the feature spec against the database; list every problem")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the spec matches the database, 2 with every problem listed otherwise."""
    settings, spec = settings_and_spec()
    with connect(settings) as conn:
        problems = check_spec(conn, spec)
    payload = {"spec": str(settings.spec), "ok": not problems,
               "problems": [p.to_dict() for p in problems]}
    if problems:
        text = f"spec {settings.spec}: {len(problems)} problem(s)\n" + "\n".join(
            f"  - {p}" for p in problems)
    else:
        text = f"spec {settings.spec}: ok"
    emit(args.json, payload, text)
    return 2 if problems else 0
