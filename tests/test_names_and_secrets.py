"""Names and secrets: schema and role names cannot break out of the SQL templates, a spec cannot
make `db init` grant the catalog or riskflow's own tables, a model version cannot name a folder
outside the models folder, and no connection error shows the password."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from test_registry import _register

from riskmodel.db import connect, redact
from riskmodel.errors import ConfigError, DatabaseError, TransientDatabaseError
from riskmodel.registry import MANIFEST, champion_version, promotion_decision
from riskmodel.schema import init_database
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec


@pytest.mark.parametrize("name", ["a\nb", "x$roles$", "a*/b", "back\\slash", "tab\there", "", "x" * 64,
                                  "é" * 32])
@pytest.mark.parametrize("field", ["db_schema", "reader_role", "writer_role", "analyst_role"])
def test_schema_and_role_names_outside_the_safe_alphabet_are_refused(field: str, name: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: name})


def test_real_world_role_and_schema_names_are_accepted() -> None:
    names = Settings(reader_role="etl-reader@corp.example", analyst_role="Analysts.EU", db_schema="scoring_é")
    assert (names.reader_role, names.analyst_role, names.db_schema) == (
        "etl-reader@corp.example", "Analysts.EU", "scoring_é")


def test_the_three_roles_must_differ() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Settings(analyst_role="riskflow_reader")


def test_an_awkward_schema_name_initialises_and_is_quoted_everywhere(settings: Settings,
                                                                      demo_spec: FeatureSpec) -> None:
    awkward = 'Risk-Flow.é "q" --x'
    named = Settings(database_url=settings.database_url, home=settings.home, db_schema=awkward)
    report = init_database(named, demo_spec, demo_source=True)
    assert "050_views.sql" in report.files and report.schema == awkward
    with connect(named) as conn:
        views = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = %s", (awkward,))}
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


def test_a_bracket_in_a_url_password_still_fails_in_one_plain_error(tmp_path) -> None:
    """urllib reads "[" after "@"-less text as a malformed IPv6 host; the error must still be ours."""
    with pytest.raises(DatabaseError) as caught:
        connect(Settings(database_url="postgresql://me:pa[ss]word9@127.0.0.1:1/db", home=tmp_path))
    assert "pa[ss]word9" not in str(caught.value) and "127.0.0.1" in str(caught.value)


def test_the_lake_key_stored_with_watermarks_holds_no_credentials(tmp_path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from riskmodel.storage import lake_key

    monkeypatch.delenv("RISKFLOW_LAKE_URL", raising=False)
    remote = Settings(home=tmp_path, lake_url="sftp://etl:lakepass99@files.example/lake")
    assert lake_key(remote) == "sftp://etl:***@files.example/lake"
    assert lake_key(Settings(home=tmp_path, lake_url="sftp://h:22/a@v1")) == "sftp://h:22/a@v1"
    local = Settings(home=tmp_path)
    assert lake_key(local) == local.lake


def test_a_relative_and_an_absolute_home_name_one_lake(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from riskmodel.storage import lake_key

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RISKFLOW_LAKE_URL", raising=False)
    relative = Settings(home=".riskflow")
    absolute = Settings(home=tmp_path / ".riskflow")
    assert relative.lake != absolute.lake
    assert lake_key(relative) == lake_key(absolute) == str(tmp_path / ".riskflow" / "lake")


def test_db_init_names_logins_that_still_hold_the_reader_role(initialised: Settings, demo_spec: FeatureSpec,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Analysts told (before the analyst role) to take the reader role keep reading the source tables;
    db init names them so they can be moved to the analyst role."""
    import uuid

    from psycopg import sql

    old = f"rf_old_analyst_{uuid.uuid4().hex[:6]}"
    with connect(initialised, admin=True, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(old)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(initialised.reader_role),
                                                     sql.Identifier(old)))
    try:
        with caplog.at_level("WARNING", logger="riskflow.schema"):
            report = init_database(initialised, demo_spec, demo_source=True)
        assert old in report.reader_members and initialised.writer_role not in report.reader_members
        assert old in caplog.text and initialised.analyst_role in caplog.text
    finally:
        with connect(initialised, admin=True, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(old)))


def test_a_champion_whose_manifest_was_altered_is_not_replaced_by_comparison(
        initialised: Settings) -> None:
    """A champion manifest edited after registration (its horizon rewritten, say) is not trusted:
    the challenger stays challenger and the reason names the hash mismatch."""
    first = _register(initialised, 41, ap=0.3)
    manifest = first.path / MANIFEST
    manifest.write_text(manifest.read_text().replace('"horizon_days": 30', '"horizon_days": 31'))
    better = _register(initialised, 42, ap=0.9, champion_ap=0.3, champion="v41")
    assert better.status == "challenger" and "was registered" in better.reason
    assert champion_version(initialised) == "v41"
