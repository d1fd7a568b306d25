"""`riskflow config`: print the resolved settings (passwords redacted)."""

from __future__ import annotations

import argparse

from flows.output import emit, table
from riskmodel.db import embedded_pgdata, redact
from riskmodel.settings import config_file, load_settings
from riskmodel.storage import redact_lake


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `config`."""
    p = sub.add_parser("config", parents=[common], help="show the resolved settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every setting and where the TOML file is looked for."""
    settings = load_settings()
    values = settings.model_dump(mode="json")
    url = settings.database_url
    values["database_url"] = redact(url.get_secret_value()) if url else None
    values["embedded_postgres"] = None if url else str(embedded_pgdata(settings))
    values["lake_url"] = redact_lake(settings, settings.lake_url) if settings.lake_url else None
    values["lake"] = redact_lake(settings, settings.lake)
    values["models"] = str(settings.models)
    values["reports"] = str(settings.reports)
    values["config_file"] = str(config_file())
    rows = [{"setting": k, "value": v} for k, v in values.items()]
    emit(args.json, values, table(rows))
    return 0
