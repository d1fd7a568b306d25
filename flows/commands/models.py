"""`riskflow models list|show VERSION|promote VERSION|rollback`: the model registry from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from flows.output import emit, table, to_json
from riskmodel.settings import load_settings


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `models` command group."""
    models = sub.add_parser("models", help="list, inspect, promote and roll back model versions")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = actions.add_parser("list", parents=[common], help="every registered version")
    p.set_defaults(func=run_list)
    p = actions.add_parser("show", parents=[common], help="one version (--json prints its manifest)")
    p.add_argument("version")
    p.set_defaults(func=run_show)
    p = actions.add_parser("promote", parents=[common], help="make VERSION the champion")
    p.add_argument("version")
    p.set_defaults(func=run_promote)
    p = actions.add_parser("rollback", parents=[common], help="bring back the previous champion")
    p.set_defaults(func=run_rollback)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    model = ((row.get("metrics") or {}).get("evaluation") or {}).get("model") or {}
    return {"version": row["version"], "status": row["status"], "created_at": row["created_at"],
            "promoted_at": row["promoted_at"], "train_start": row["train_start"],
            "train_end": row["train_end"], "average_precision": model.get("average_precision"),
            "roc_auc": model.get("roc_auc"), "sha256": row["sha256"], "artifact_path": row["artifact_path"]}


def run_list(args: argparse.Namespace) -> int:
    """Print the registry, oldest first."""
    from riskmodel import registry

    rows = [_summary(r) for r in registry.list_models(load_settings())]
    columns = ["version", "status", "created_at", "train_start", "train_end", "average_precision", "roc_auc"]
    emit(args.json, rows, table(rows, columns))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one version: the registry row for people, the verified manifest with --json."""
    from riskmodel import registry

    settings = load_settings()
    row = registry.get_model(settings, args.version)
    manifest = registry.read_manifest(settings, args.version)
    evaluation = manifest.get("evaluation", {})
    lines = [table([{"field": k, "value": v} for k, v in _summary(row).items()]), "", "evaluation:"]
    lines.append(table([{"model": name, **metrics} for name, metrics in evaluation.items()]))
    lines += ["", "bands: " + to_json(manifest.get("bands", {})).replace("\n", " ")]
    emit(args.json, manifest, "\n".join(lines))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """Promote a version by hand (its artifact is verified first)."""
    from riskmodel import registry

    result = registry.promote(load_settings(), args.version)
    emit(args.json, result, f"models promote: {result['champion']} is champion"
         + (f"; {result['retired']} retired" if result["retired"] else ""))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """Restore the previous champion and retire the current one."""
    from riskmodel import registry

    result = registry.rollback(load_settings())
    emit(args.json, result, f"models rollback: {result['champion']} is champion again"
         + (f"; {result['retired']} retired" if result["retired"] else ""))
    return 0
