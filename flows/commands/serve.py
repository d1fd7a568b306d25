"""`riskflow serve`: run the three deployments with their schedules from this one process."""

from __future__ import annotations

import argparse

from flows.output import emit


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `serve`."""
    p = sub.add_parser("serve", parents=[common],
                       help="serve nightly-scoring, weekly-retrain and backfill (needs PREFECT_API_URL "
                            "pointing at a Prefect server for the UI)")
    p.add_argument("--dry-run", action="store_true", help="print the deployments and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the deployments from settings and serve them until interrupted."""
    from prefect import serve

    from flows.serve import deployments
    from riskmodel.settings import load_settings

    settings = load_settings()
    deps = deployments(settings)
    described = [{"name": d.name, "flow": d.flow_name, "schedules": [s.schedule.cron for s in d.schedules],
                  "triggers": len(d.triggers)} for d in deps]
    if args.dry_run:
        emit(args.json, described, "\n".join(
            f"{d['flow']}/{d['name']}: schedules {d['schedules'] or 'none'}, triggers {d['triggers']}"
            for d in described))
        return 0
    serve(*deps)
    return 0
