"""Feature spec: validation messages, and check-spec against a live database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from riskmodel.db import connect
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import SpecError, load_spec
from riskmodel.spec_check import check_spec


def test_demo_spec_matches_demo_tables(initialised: Settings) -> None:
    with connect(initialised) as conn:
        assert check_spec(conn, load_spec(DEMO_SPEC)) == []


def test_check_spec_reports_every_problem_at_once(initialised: Settings, tmp_path: Path) -> None:
    text = DEMO_SPEC.read_text()
    text = text.replace('table = "risk_events"', 'table = "no_such_events"')
    text = text.replace('numeric = []', 'numeric = ["amount_typo"]', 1)
    text = text.replace('numeric = ["credit_limit", "tenure_months"]',
                        'numeric = ["credit_limit", "open_date"]')
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with connect(initialised) as conn:
        problems = check_spec(conn, load_spec(path))
    found = {(p.table, p.column) for p in problems}
    assert ("bank.no_such_events", None) in found
    assert ("bank.transactions", "amount_typo") in found
    messages = {str(p) for p in problems}
    assert "bank.accounts.open_date: has type date, expected numeric" in messages
    assert "bank.transactions.amount_typo: column not found" in messages


def test_invalid_spec_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(re.sub(r"(?m)^horizon_days = \d+", "horizon_days = -4", DEMO_SPEC.read_text()))
    with pytest.raises(SpecError, match="horizon_days"):
        load_spec(path)
    path.write_text(DEMO_SPEC.read_text().replace('merchant = "merchant_id"', 'merchant = "shop"'))
    with pytest.raises(SpecError, match="transactions.*merchant"):
        load_spec(path)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.toml")


def test_fingerprint_changes_with_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(DEMO_SPEC.read_text().replace("max_seq_len = 128", "max_seq_len = 64"))
    assert load_spec(path).fingerprint() != load_spec(DEMO_SPEC).fingerprint()
    assert load_spec(DEMO_SPEC).fingerprint() == load_spec(DEMO_SPEC).fingerprint()
