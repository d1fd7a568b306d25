"""Names and secrets: schema and role names cannot break out of the SQL templates, a spec cannot
make `db init` grant the catalog or riskflow's own tables, a model version cannot name a folder
outside the models folder, and no connection error shows the password."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import ValidationError
from test_registry import _register

from riskmodel.db import connect, redact
from riskmodel.errors import ConfigError, DatabaseError, TransientDatabaseError
from riskmodel.registry import MANIFEST, champion_version, promotion_decision
from riskmodel.schema import init_database
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec


@pytest.mark.parametrize("name", ["a\nb", "x$roles$", 'q"uote', "sp ace", "-lead", "1lead", "", "x" * 64,
                                  "semi;colon", "--"])
@pytest.mark.parametrize("field", ["db_schema", "reader_role", "writer_role", "analyst_role"])
def test_schema_and_role_names_outside_the_safe_alphabet_are_refused(field: str, name: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: name})


def test_the_three_roles_must_differ() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Settings(analyst_role="riskflow_reader")


def test_a_hyphenated_schema_initialises_and_is_quoted_everywhere(settings: Settings,
                                                                   demo_spec: FeatureSpec) -> None:
    hyphenated = Settings(database_url=settings.database_url, home=settings.home, db_schema="risk-flow")
    report = init_database(hyphenated, demo_spec, demo_source=True)
    assert "050_views.sql" in report.files and report.schema == "risk-flow"
    with connect(hyphenated) as conn:
        views = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'risk-flow'")}
    assert {"latest_scores", "latest_night", "band_counts", "latest_movers"} <= views


@pytest.mark.parametrize("schema", ["pg_catalog", "information_schema", "riskflow"])
def test_db_init_refuses_a_spec_source_in_a_system_schema_or_its_own(settings: Settings,
                                                                      demo_spec: FeatureSpec,
                                                                      schema: str) -> None:
    bad = demo_spec.model_copy(update={"accounts": demo_spec.accounts.model_copy(
        update={"db_schema": schema, "table": "pg_authid"})})
    with pytest.raises(ConfigError, match=f"{schema}.pg_authid"):
        init_database(settings, bad, demo_source=True)
    with connect(settings, admin=True) as conn:
        granted = conn.execute("SELECT has_table_privilege(%s, 'pg_catalog.pg_authid', 'SELECT')",
                               (settings.reader_role,)).fetchone()[0] if conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.reader_role,)).fetchone() else False
        created = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'riskflow'").fetchone()
    assert not granted and created is None


@pytest.mark.parametrize(("text", "secret"), [
    ("postgresql://u:hunter2x@h:5432/db", "hunter2x"),
    ("postgresql://u:sec/ret?x#y@h/db", "sec/ret?x#y"),
    ("host=h password = 'a b c' port=5", "a b c"),
    ("host=h PASSWORD=plainpw port=5", "plainpw"),
    ("could not connect to postgres://me:pw%40x@db.example/prod: timeout", "pw%40x"),
])
def test_redact_removes_every_spelling_of_a_password(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out


def test_redact_keeps_urls_without_a_password() -> None:
    for url in ("postgresql://u@h/db", "postgresql://h:5432/db", "s3://bucket/lake"):
        assert redact(url) == url


def test_an_unparsable_url_fails_plainly_without_its_password(tmp_path) -> None:
    url = "postgresql://me:p%zzsecretword@127.0.0.1:1/db"
    with pytest.raises(DatabaseError) as caught:
        connect(Settings(database_url=url, home=tmp_path))
    assert not isinstance(caught.value, TransientDatabaseError)
    assert "cannot be parsed" in str(caught.value) and "zzsecretword" not in str(caught.value)


def test_the_cli_never_prints_a_password_from_a_driver_error(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", "postgresql://me:p%zzsecretword@127.0.0.1:1/db")
    monkeypatch.setenv("RISKFLOW_HOME", str(tmp_path))
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert "cannot be parsed" in err and "zzsecretword" not in err and "Traceback" not in err


def test_a_version_that_would_leave_the_models_folder_is_refused(initialised: Settings) -> None:
    from riskmodel.registry import register_model

    for version in ("../escape", "..", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="model version"):
            register_model(initialised, net=None, calibrator=None, bands=None,  # type: ignore[arg-type]
                           features={}, spec_hash="a", train_start=None, train_end=None,  # type: ignore[arg-type]
                           evaluation={}, version=version or "/")
    assert not (initialised.home / "escape").exists() and champion_version(initialised) is None


def test_a_champion_whose_manifest_cannot_be_read_is_not_replaced_by_comparison(
        initialised: Settings) -> None:
    first = _register(initialised, 31, ap=0.3)
    (first.path / MANIFEST).unlink()
    better = _register(initialised, 32, ap=0.9, champion_ap=0.3, champion="v31")
    assert better.status == "challenger" and "cannot be read" in better.reason
    assert champion_version(initialised) == "v31"
    forced = _register(initialised, 33, ap=0.1, champion_ap=0.3, champion="v31", policy="always")
    assert forced.status == "champion"


def test_promotion_decision_with_a_champion_problem_only_yields_to_an_explicit_policy() -> None:
    evaluation = {"model": {"average_precision": 0.9}, "champion": {"average_precision": 0.1}}
    assert promotion_decision(evaluation, "v1", "v1", 0.0)[0]
    assert not promotion_decision(evaluation, "v1", "v1", 0.0, champion_problem="gone")[0]
    assert promotion_decision(evaluation, "v1", "v1", 0.0, policy="always", champion_problem="gone")[0]


def test_psycopg_reports_a_bad_percent_encoding_with_the_token() -> None:
    """Why `connect` scrubs the password itself: the driver's own message quotes it."""
    with pytest.raises(psycopg.ProgrammingError, match="zzsecretword"):
        psycopg.connect("postgresql://me:p%zzsecretword@127.0.0.1:1/db")


def test_the_lake_key_stored_with_watermarks_holds_no_credentials(tmp_path) -> None:
    from riskmodel.storage import lake_key

    remote = Settings(home=tmp_path, lake_url="sftp://etl:lakepass99@files.example/lake")
    assert lake_key(remote) == "sftp://etl:***@files.example/lake"
    local = Settings(home=tmp_path)
    assert lake_key(local) == local.lake


def test_a_relative_and_an_absolute_home_name_one_lake(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from riskmodel.storage import lake_key

    monkeypatch.chdir(tmp_path)
    relative = Settings(home=".riskflow")
    absolute = Settings(home=tmp_path / ".riskflow")
    assert relative.lake != absolute.lake
    assert lake_key(relative) == lake_key(absolute) == str(tmp_path / ".riskflow" / "lake")
