"""db init: idempotent, the designed tables and partitioning, least-privilege roles."""

from __future__ import annotations

import psycopg
import pytest

from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

CATALOG = """
SELECT n.nspname, c.relname, c.relkind, c.relowner::regrole::text,
       coalesce(c.relacl::text, ''),
       (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod), ','
                          ORDER BY a.attnum)
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('riskflow', 'bank')
 ORDER BY 1, 2
"""


def _catalog(settings: Settings) -> list[tuple]:
    with connect(settings, admin=True) as conn:
        rows = conn.execute(CATALOG).fetchall()
        rows += conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname LIKE 'riskflow%' "
            "ORDER BY 1").fetchall()
    return rows


def test_init_twice_leaves_the_same_catalog(settings: Settings, demo_spec: FeatureSpec) -> None:
    init_database(settings, demo_spec, demo_source=True)
    first = _catalog(settings)
    init_database(settings, demo_spec, demo_source=True)
    assert _catalog(settings) == first
    names = {row[1] for row in first}
    for table in ("risk_scores", "risk_scores_shadow", "risk_scores_audit", "model_versions",
                  "extract_watermarks", "quarantine", "pipeline_runs", "transactions",
                  "accounts", "risk_events", "ground_truth"):
        assert table in names


def test_risk_scores_is_range_partitioned_with_designed_key(initialised: Settings) -> None:
    with connect(initialised, admin=True) as conn:
        strategy, key = conn.execute(
            "SELECT p.partstrat, pg_get_partkeydef(p.partrelid) FROM pg_partitioned_table p "
            "WHERE p.partrelid = 'riskflow.risk_scores'::regclass").fetchone()
        pk = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'riskflow.risk_scores'::regclass AND contype = 'p'").fetchone()[0]
        owner = conn.execute("SELECT relowner::regrole::text FROM pg_class "
                             "WHERE oid = 'riskflow.risk_scores'::regclass").fetchone()[0]
    assert strategy == "r" and key == "RANGE (score_date)"
    assert pk == "PRIMARY KEY (account_id, score_date)"
    assert owner == "riskflow_writer"


def test_one_champion_at_most(initialised: Settings) -> None:
    with connect(initialised) as conn:
        insert = ("INSERT INTO riskflow.model_versions (version, status, spec_hash, artifact_path, "
                  "sha256) VALUES (%s, 'champion', 'h', '/x', repeat('a', 64))")
        conn.execute(insert, ("v1",))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("v2",))


def test_reader_cannot_write_and_writer_cannot_modify_sources(initialised: Settings) -> None:
    with connect(initialised, admin=True, autocommit=True) as conn:
        conn.execute("SET ROLE riskflow_reader")
        assert conn.execute("SELECT count(*) FROM bank.transactions").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO bank.transactions (txn_id) VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM riskflow.risk_scores")
    with connect(initialised, autocommit=True) as conn:  # the pipeline's default: the writer
        assert conn.execute("SELECT current_user").fetchone()[0] == "riskflow_writer"
        assert conn.execute("SELECT count(*) FROM bank.accounts").fetchone()[0] == 0
        for statement in ("INSERT INTO bank.transactions (txn_id) VALUES (1)",
                          "UPDATE bank.accounts SET segment = 'x'",
                          "DELETE FROM bank.risk_events",
                          "DROP TABLE bank.transactions",
                          "TRUNCATE bank.accounts"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("INSERT INTO riskflow.quarantine (run_id, source, rule, reason, row_data) "
                     "VALUES (gen_random_uuid(), 's', 'r', 'why', '{}')")
