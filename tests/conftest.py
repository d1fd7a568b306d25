"""Shared fixtures: a real Postgres (embedded, or RISKFLOW_TEST_DATABASE_URL), a fresh
database per test that asks for one, and one Prefect test harness per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import FeatureSpec, load_spec
from tests.flow_helpers import conninfo_with

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the test server's maintenance database."""
    external = os.environ.get("RISKFLOW_TEST_DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture()
def database_url(pg_server_url: str) -> Iterator[str]:
    """A brand-new empty database for one test, dropped afterwards."""
    name = f"rf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield conninfo_with(pg_server_url, dbname=name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture()
def demo_spec() -> FeatureSpec:
    """The bundled demo feature spec."""
    return load_spec(DEMO_SPEC)


@pytest.fixture()
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database, home, lake and model folders."""
    return Settings(database_url=database_url, home=tmp_path / "home")


@pytest.fixture()
def initialised(settings: Settings, demo_spec: FeatureSpec) -> Settings:
    """A database with riskflow's schema, roles and the demo source tables."""
    from riskmodel.schema import init_database

    init_database(settings, demo_spec, demo_source=True)
    return settings


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect API for the whole session (slow to start; request it lazily)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
