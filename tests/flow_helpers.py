"""A small seeded bank in its own database, a champion trained by the retrain flow, and the
environment a `riskflow` subprocess needs to run against them (shared by the flow-level tests)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from riskmodel.synthetic import seed_bank

END = date(2026, 6, 30)
REPO = Path(__file__).resolve().parent.parent


def conninfo_with(url: str, **change: str) -> str:
    """The same connection string with some of its keys (dbname, user, host, ...) changed."""
    return psycopg.conninfo.make_conninfo(**{**psycopg.conninfo.conninfo_to_dict(url), **change})


def create_database(pg_server_url: str, prefix: str) -> str:
    """A fresh empty database on the test server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo_with(pg_server_url, dbname=name)


def drop_database(pg_server_url: str, url: str) -> None:
    """Drop the database `url` points at (closing its sessions)."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def seeded_bank(url: str, home: Path, *, accounts: int, days: int, seed: int, n_shards: int = 2) -> Settings:
    """riskflow's schema and the demo source tables in `url`, filled with a seeded synthetic bank."""
    settings = Settings(database_url=url, home=home, n_shards=n_shards)
    init_database(settings, load_spec(DEMO_SPEC), demo_source=True)
    seed_bank(settings, accounts=accounts, days=days, end_date=END, seed=seed)
    return settings


def champion_bank(pg_server_url: str, home: Path, prefix: str, *, accounts: int, seed: int,
                  n_shards: int) -> Iterator[Settings]:
    """A module fixture's body: a 60-day seeded bank with an untrained champion, dropped afterwards."""
    from bench.nightly import ensure_champion

    url = create_database(pg_server_url, prefix)
    settings = seeded_bank(url, home, accounts=accounts, days=60, seed=seed, n_shards=n_shards)
    ensure_champion(settings, home / "prep")
    yield settings
    drop_database(pg_server_url, url)


def flow_env(settings: Settings, url: str | None = None) -> dict[str, str]:
    """RISKFLOW_* variables pointing a flow (in this process or a child) at `settings`' bank."""
    return {
        "RISKFLOW_DATABASE_URL": url or settings.database_url.get_secret_value(),
        "RISKFLOW_HOME": str(settings.home),
        "RISKFLOW_N_SHARDS": str(settings.n_shards),
    }


def child_env(settings: Settings, url: str | None = None) -> dict[str, str]:
    """The environment for a `riskflow` subprocess: this bank, and the session's Prefect test API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **flow_env(settings, url), "PYTHONPATH": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_TO_API_ENABLED": "false"}
    api = PREFECT_API_URL.value()
    if api:
        env["PREFECT_API_URL"] = api
    return env


def riskflow_command(*args: str) -> list[str]:
    """argv running the `riskflow` CLI with this interpreter."""
    return [sys.executable, "-m", "flows.cli", *args]


def train_champion(**overrides: object) -> dict:
    """Run the retrain flow small and fast (env must point at the bank); the first model is champion."""
    from flows.params import RetrainParams
    from flows.retrain import retrain

    params = {"as_of": END, "train_days": 90, "epochs": 1, "max_train_minutes": 1.0, "seed": 1,
              "run_ablation": False, **overrides}
    return retrain(RetrainParams(**params))


def active_accounts(settings: Settings, day: date, lookback_days: int = 90) -> int:
    """Accounts with a transaction in the lookback window ending with `day` (who must be scored)."""
    with connect(settings, admin=True) as conn:
        return conn.execute(
            "SELECT count(DISTINCT account_id) FROM bank.transactions WHERE ts < %s AND ts >= %s",
            (day + timedelta(days=1), day + timedelta(days=1 - lookback_days))).fetchone()[0]
