"""Least privilege: the retrain and nightly flows run under a password LOGIN that is only a member of
the writer role (not a superuser); that login cannot change the bank's source tables; an analyst
login reads the analyst views (sql/090_grants.sql) but neither riskflow's tables nor the bank's
source tables, and cannot write scores; the password never
reaches logs, stderr, Prefect artifacts, stored run details or error messages."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from flows.cli import main as cli_main
from flows.nightly_scoring import nightly_scoring
from flows.params import ScoreParams
from riskmodel.db import connect
from riskmodel.errors import DatabaseError
from riskmodel.pgread import read_frame
from riskmodel.settings import Settings
from tests.flow_helpers import (
    END,
    active_accounts,
    create_database,
    drop_database,
    flow_env,
    seeded_bank,
    train_champion,
)

pytestmark = pytest.mark.slow

SOURCE_WRITES = [
    "INSERT INTO bank.transactions (txn_id, account_id, ts, amount) VALUES (-1, -1, now(), 1)",
    "UPDATE bank.accounts SET credit_limit = 0",
    "DELETE FROM bank.risk_events",
    "TRUNCATE bank.ground_truth",
    "DROP TABLE bank.transactions",
    "ALTER TABLE bank.accounts ADD COLUMN pwned integer",
    "CREATE TABLE bank.pwned (x integer)",
]

SOURCE_STATE = ("SELECT (SELECT count(*) FROM bank.transactions), (SELECT count(*) FROM bank.risk_events), "
                "(SELECT count(*) FROM bank.ground_truth), (SELECT sum(credit_limit) FROM bank.accounts)")


@dataclass
class Logins:
    """The admin-initialised bank and the two password logins the tests connect as."""

    admin: Settings
    writer_url: str
    analyst_url: str
    writer_user: str
    analyst_user: str
    password: str
    enforced: bool


def _login_url(server_url: str, dbname: str, user: str, password: str) -> str:
    """A postgresql:// URL for `user` on the test server (unix socket or TCP)."""
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    host, port = str(info.get("host") or ""), info.get("port")
    if host.startswith("/") or not host:
        query = f"?host={quote(host, safe='/')}" + (f"&port={port}" if port else "") if host else ""
        return f"postgresql://{user}:{password}@/{dbname}{query}"
    return f"postgresql://{user}:{password}@{host}{f':{port}' if port else ''}/{dbname}"


def _require_passwords(admin_url: str, users: list[str]) -> tuple[Path | None, str]:
    """Make the server check these users' passwords (scram) by prepending pg_hba lines; reload."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        if not os.access(hba, os.W_OK):
            return None, ""
        original = hba.read_text()
        lines = [f"{kind} all {u} {'all ' if kind == 'host' else ''}scram-sha-256"
                 for u in users for kind in ("local", "host")]
        hba.write_text("\n".join(lines) + "\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    return hba, original


def _wait_enforced(url: str, password: str) -> bool:
    """True once a wrong password is refused (the reload is asynchronous)."""
    wrong = url.replace(f":{password}@", ":not-the-password@")
    for _ in range(50):
        try:
            psycopg.connect(wrong, connect_timeout=5).close()
        except psycopg.OperationalError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def logins(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory,
           prefect_harness: None) -> Iterator[Logins]:
    """Schema and bank created as the admin; a writer login and an analyst login with a password."""
    url = create_database(pg_server_url, "rf_roles")
    admin = seeded_bank(url, tmp_path_factory.mktemp("roles-home"), accounts=400, days=130, seed=9)
    suffix = uuid.uuid4().hex[:8]
    writer_user, analyst_user = f"rf_etl_{suffix}", f"rf_analyst_{suffix}"
    password = f"pw{secrets.token_hex(12)}"
    with connect(admin, admin=True, autocommit=True) as conn:
        for user, role in ((writer_user, admin.writer_role), (analyst_user, admin.analyst_role)):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE")
                         .format(sql.Identifier(user), sql.Literal(password)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(user)))
    hba, original = _require_passwords(pg_server_url, [writer_user, analyst_user])
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    writer_url = _login_url(pg_server_url, dbname, writer_user, password)
    analyst_url = _login_url(pg_server_url, dbname, analyst_user, password)
    try:
        enforced = hba is not None and _wait_enforced(writer_url, password)
        yield Logins(admin, writer_url, analyst_url, writer_user, analyst_user, password, enforced)
    finally:
        if hba is not None:
            hba.write_text(original)
            with psycopg.connect(pg_server_url, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
        drop_database(pg_server_url, url)
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for user in (writer_user, analyst_user):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Ran:
    """What running the flows as the writer login produced."""

    writer: Settings
    trained: dict
    nightly: dict
    logs: str


@pytest.fixture(scope="module")
def ran(logins: Logins) -> Iterator[Ran]:
    """Retrain then nightly scoring with RISKFLOW_DATABASE_URL set to the writer login's URL."""
    writer = logins.admin.model_copy(update={"database_url": SecretStr(logins.writer_url)})
    patch = pytest.MonkeyPatch()
    for key, value in flow_env(writer, logins.writer_url).items():
        patch.setenv(key, value)
    collect = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("riskflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(collect)
    logging.getLogger("riskflow").setLevel(logging.DEBUG)
    logging.getLogger("prefect").setLevel(logging.INFO)  # `riskflow` CLI calls in this process lower it
    try:
        trained = train_champion()
        nightly = nightly_scoring(ScoreParams(score_date=END))
        yield Ran(writer, trained, nightly, "\n".join(collect.lines))
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(collect)
            lg.setLevel(level)
        patch.undo()


def test_flows_complete_under_a_writer_login_that_is_no_superuser(logins: Logins, ran: Ran) -> None:
    assert ran.trained["status"] == "champion"
    assert ran.nightly["accounts_scored"] == active_accounts(logins.admin, END) > 0
    with connect(ran.writer) as conn:
        who = conn.execute("SELECT session_user, current_user, r.rolsuper, r.rolcreaterole FROM pg_roles r "
                           "WHERE r.rolname = session_user").fetchone()
        runs = conn.execute("SELECT status, row_count FROM riskflow.pipeline_runs WHERE score_date = %s",
                            (END,)).fetchall()
    assert who == (logins.writer_user, ran.writer.writer_role, False, False)
    assert runs == [("succeeded", ran.nightly["accounts_scored"])]
    with connect(logins.admin, admin=True) as conn:
        owners = conn.execute("SELECT DISTINCT c.relowner::regrole::text FROM pg_inherits i "
                              "JOIN pg_class c ON c.oid = i.inhrelid "
                              "WHERE i.inhparent = 'riskflow.risk_scores'::regclass").fetchall()
    assert owners == [(ran.writer.writer_role,)], "the night's partition belongs to the writer role"


@pytest.mark.parametrize("set_role", [True, False], ids=["as-writer-role", "as-login"])
def test_writer_login_cannot_modify_source_tables(logins: Logins, ran: Ran, set_role: bool) -> None:
    with connect(logins.admin, admin=True) as conn:
        before = conn.execute(SOURCE_STATE).fetchone()
    with connect(ran.writer, admin=not set_role) as conn:
        assert conn.execute("SELECT count(*) FROM bank.transactions").fetchone()[0] == before[0]
        conn.commit()
        for statement in SOURCE_WRITES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    with connect(logins.admin, admin=True) as conn:
        after = conn.execute(SOURCE_STATE).fetchone()
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bank'"
                              ).fetchone()[0]
    assert after == before and tables == 4


def test_analyst_login_reads_views_but_neither_tables_nor_sources_and_writes_nothing(
        logins: Logins, ran: Ran) -> None:
    analyst = logins.admin.model_copy(update={"database_url": SecretStr(logins.analyst_url),
                                                 "run_as_writer": False})
    with pytest.raises(DatabaseError, match="cannot SET ROLE"):
        connect(analyst.model_copy(update={"run_as_writer": True}))
    with connect(analyst) as conn:
        latest = conn.execute("SELECT count(*) FROM riskflow.latest_scores").fetchone()[0]
        night = conn.execute("SELECT count(*) FROM riskflow.latest_night").fetchone()[0]
        bands = conn.execute("SELECT sum(accounts) FROM riskflow.band_counts WHERE score_date = %s",
                             (END,)).fetchone()[0]
        movers = conn.execute("SELECT account_id, change FROM riskflow.latest_movers").fetchall()
        chosen = conn.execute("SELECT account_id FROM riskflow.latest_night ORDER BY risk_score DESC"
                              " LIMIT 1").fetchone()[0]
        history = conn.execute("SELECT score_date, risk_score FROM riskflow.account_history(%s)",
                               (chosen,)).fetchall()
        conn.commit()
        for statement in ["INSERT INTO riskflow.risk_scores VALUES "
                          "(current_date, 'x', 0.5, 'low', 'v', '{}', now(), gen_random_uuid())",
                          "UPDATE riskflow.risk_scores SET risk_score = 0",
                          "DELETE FROM riskflow.risk_scores",
                          "TRUNCATE riskflow.risk_scores",
                          "UPDATE riskflow.model_versions SET status = 'retired'",
                          "DELETE FROM riskflow.pipeline_runs",
                          "DROP VIEW riskflow.latest_scores",
                          "UPDATE bank.accounts SET credit_limit = 0",
                          "SELECT count(*) FROM riskflow.risk_scores",
                          "SELECT count(*) FROM riskflow.model_versions",
                          "SELECT count(*) FROM bank.transactions",
                          "SELECT count(*) FROM bank.accounts"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    assert latest == night == bands == ran.nightly["accounts_scored"]
    with connect(ran.writer) as conn:
        assert conn.execute("SELECT count(*) FROM riskflow.risk_scores WHERE score_date = %s",
                            (END,)).fetchone()[0] == ran.nightly["accounts_scored"]
        assert movers == conn.execute("SELECT account_id, change FROM riskflow.latest_movers").fetchall()
        assert history == conn.execute("SELECT score_date, risk_score FROM riskflow.risk_scores"
                                       " WHERE account_id = %s ORDER BY score_date", (chosen,)).fetchall()
        public = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,"
            " aclexplode(p.proacl) a WHERE n.nspname = 'riskflow' AND a.grantee = 0"
            " AND a.privilege_type = 'EXECUTE' AND p.proname IN ('score_movers', 'account_history')"
        ).fetchall()
    assert history and history[-1][0] == END and public == []


def _artifacts_text() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return json.dumps([a.model_dump(mode="json") for a in client.read_artifacts()])


def test_password_never_reaches_logs_artifacts_or_stored_details(logins: Logins, ran: Ran) -> None:
    assert "scored" in ran.logs and logins.writer_user in ran.writer.database_url.get_secret_value()
    assert logins.password not in ran.logs
    artifacts = _artifacts_text()
    assert f"nightly-summary-{END}" in artifacts
    assert logins.password not in artifacts
    with connect(logins.admin, admin=True) as conn:
        stored = conn.execute(
            "SELECT (SELECT json_agg(p)::text FROM riskflow.pipeline_runs p), "
            "(SELECT json_agg(m)::text FROM riskflow.model_versions m)").fetchone()
    assert all(logins.password not in text for text in stored)
    manifests = [p.read_text() for p in ran.writer.models.rglob("*.json")]
    assert manifests and all(logins.password not in text for text in manifests)


def test_wrong_password_errors_never_show_a_password(logins: Logins, ran: Ran,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    if not logins.enforced:
        pytest.skip("the test server's pg_hba.conf cannot be changed to check passwords")
    wrong_password = f"wrong{secrets.token_hex(8)}"
    wrong_url = logins.writer_url.replace(logins.password, wrong_password)
    wrong = ran.writer.model_copy(update={"database_url": SecretStr(wrong_url)})
    with pytest.raises(DatabaseError) as psycopg_error:
        connect(wrong)
    with pytest.raises(DatabaseError) as adbc_error:
        read_frame(wrong, sql.SQL("SELECT 1"))
    for message in (str(psycopg_error.value), str(adbc_error.value)):
        assert "password authentication failed" in message or "authentication" in message, message
        assert wrong_password not in message and logins.password not in message
        assert "***" in message
    for key, value in flow_env(ran.writer, wrong_url).items():
        monkeypatch.setenv(key, value)
    assert cli_main(["check-spec"]) == 2
    assert cli_main(["score", "--date", (END - timedelta(days=1)).isoformat(), "--no-extract"]) == 2
    monkeypatch.setenv("RISKFLOW_DATABASE_URL", logins.writer_url)
    assert cli_main(["config", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "authentication failed" in err
    assert logins.writer_user in out
    assert wrong_password not in out + err and logins.password not in out + err
