"""Identifiers from the spec are quoted, never pasted: a hostile column name gets a clean error
and drops nothing; passwords never reach error messages."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from riskmodel.db import connect
from riskmodel.errors import RiskflowError
from riskmodel.lake import extract
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from riskmodel.spec_check import check_spec

HOSTILE = 'amount"; DROP TABLE bank.accounts; --'


def _hostile_spec(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(DEMO_SPEC.read_text().replace('amount = "amount"', f"amount = '{HOSTILE}'", 1))
    return path


def test_hostile_column_name_is_reported_and_drops_nothing(initialised: Settings, tmp_path: Path) -> None:
    spec = load_spec(_hostile_spec(tmp_path))
    assert spec.transactions.amount == HOSTILE
    with connect(initialised) as conn:
        problems = check_spec(conn, spec)
    assert any(p.column == HOSTILE and "not found" in p.message for p in problems)
    with pytest.raises(RiskflowError, match="does not exist"):
        extract(initialised, spec, date(2026, 6, 30))
    with connect(initialised, admin=True) as conn:
        assert conn.execute("SELECT to_regclass('bank.accounts') IS NOT NULL").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_schema = 'bank'").fetchone()[0] == 4


def test_connection_errors_never_show_the_password(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://alice:hunter2-secret@127.0.0.1:1/db", home=tmp_path)
    with pytest.raises(RiskflowError) as info:
        connect(settings)
    assert "hunter2-secret" not in str(info.value)
    assert "***" in str(info.value)
