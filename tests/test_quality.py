"""Quality rules: each quarantines its rows with the right reason; over the threshold the run fails."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import polars as pl
import psycopg
import pytest

from riskmodel.errors import DataQualityError
from riskmodel.lake import extract, lake_dates, lake_root, scan_transactions
from riskmodel.quality import RULES, check_batch, future_cutoff
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec
from tests.datapath_helpers import END, TXN_COLUMNS, insert, seed_tiny_bank

NOON = datetime(2026, 6, 20, 12, tzinfo=UTC)
BAD = [
    (900001, None, NOON, 10.0, "5411", "pos", "DE", "m1"),
    (900002, 1, None, 10.0, "5411", "pos", "DE", "m1"),
    (900003, 1, NOON, float("nan"), "5411", "pos", "DE", "m1"),
    (900004, 1, NOON, 5e6, "5411", "pos", "DE", "m1"),
    (900005, 1, NOON, -3.0, "5411", "pos", "DE", "m1"),
    (900006, 1, datetime(2099, 1, 1, 0, 0, tzinfo=UTC), 10.0, "5411", "pos", "DE", "m1"),
    (900007, 2, NOON, 11.0, "5411", "pos", "DE", "m1"),
    (900007, 2, NOON, 11.0, "5411", "pos", "DE", "m1"),
]
NEXT_DAY = (900008, 3, datetime(2026, 7, 1, 0, 30, tzinfo=UTC), 12.0, "5411", "pos", "DE", "m1")
WANT = {900001: "null_account", 900002: "null_timestamp", 900003: "bad_amount", 900004: "bad_amount",
        900005: "bad_amount", 900006: "future_timestamp", 900007: "duplicate_txn_id"}


def quarantined(settings: Settings) -> pl.DataFrame:
    """The quarantine table as a frame."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        rows = conn.execute("SELECT txn_id, rule, reason, txn_date, row_data FROM riskflow.quarantine "
                            "ORDER BY txn_id, rule").fetchall()
    return pl.DataFrame(rows, schema=["txn_id", "rule", "reason", "txn_date", "row_data"], orient="row")


def test_each_rule_quarantines_its_rows(initialised: Settings, demo_spec: FeatureSpec) -> None:
    rows = seed_tiny_bank(initialised, accounts=30, days=40)
    insert(initialised, "transactions", TXN_COLUMNS, BAD + [NEXT_DAY])
    report = extract(initialised, demo_spec, END)
    assert report.quarantined == {"null_account": 1, "null_timestamp": 1, "bad_amount": 3,
                                  "future_timestamp": 1, "duplicate_txn_id": 1}
    assert report.rows_written == len(rows) + 1
    table = quarantined(initialised)
    assert dict(zip(table["txn_id"].cast(pl.Int64).to_list(), table["rule"].to_list(), strict=True)) == WANT
    reasons = dict(zip(table["txn_id"].to_list(), table["reason"].to_list(), strict=True))
    assert "is not finite" in reasons["900003"] and "max_amount" in reasons["900004"]
    assert "allow_negative" in reasons["900005"] and "in the future" in reasons["900006"]
    assert "account_id is null" in reasons["900001"]
    lake = scan_transactions(initialised, lake_dates(initialised)[0], END).collect()
    assert lake.filter(pl.col("txn_id") == 900007).height == 1
    assert lake.filter(pl.col("txn_id").is_in([900001, 900002, 900003, 900004, 900005, 900006])).is_empty()
    assert lake.filter(pl.col("txn_id") == NEXT_DAY[0]).is_empty(), "the next day's row waits for its run"
    loose = initialised.model_copy(update={"max_bad_fraction": 0.5})
    rerun = extract(loose, demo_spec, END)
    assert rerun.quarantined["null_timestamp"] == 1 and rerun.quarantined["future_timestamp"] == 1
    assert quarantined(initialised).height == len(WANT)
    after = extract(loose, demo_spec, END + timedelta(days=1))
    assert after.quarantined["future_timestamp"] == 1 and quarantined(initialised).height == len(WANT)
    later = scan_transactions(initialised, END + timedelta(days=1), END + timedelta(days=1)).collect()
    assert later["txn_id"].to_list() == [NEXT_DAY[0]]


def test_over_the_threshold_the_run_fails_naming_the_rule(initialised: Settings,
                                                          demo_spec: FeatureSpec) -> None:
    seed_tiny_bank(initialised, accounts=5, days=10)
    insert(initialised, "transactions", TXN_COLUMNS,
           [(950000 + i, 1, NOON - timedelta(days=i % 5), 9e9, "5411", "pos", "DE", "m1") for i in range(20)])
    strict = initialised.model_copy(update={"max_bad_fraction": 0.05})
    with pytest.raises(DataQualityError, match=r"rule bad_amount: 20 rows"):
        extract(strict, demo_spec, END)
    assert lake_dates(strict) == []
    assert quarantined(strict).height == 20
    loose = initialised.model_copy(update={"max_bad_fraction": 0.5})
    assert extract(loose, demo_spec, END).quarantined["bad_amount"] == 20


def test_negative_amounts_pass_when_allowed(demo_spec: FeatureSpec) -> None:
    frame = pl.DataFrame([BAD[4], (1, 1, NOON, 2.0, "a", "pos", "DE", "m")], schema=TXN_COLUMNS, orient="row",
                         schema_overrides={"ts": pl.Datetime("us", "UTC")})
    strict = check_batch(frame, demo_spec.transactions, future_cutoff())
    assert strict.counts["bad_amount"] == 1 and strict.good.height == 1
    refunds = demo_spec.transactions.model_copy(update={"allow_negative": True})
    relaxed = check_batch(frame, refunds, future_cutoff())
    assert relaxed.good.height == 2 and sum(relaxed.counts.values()) == 0
    assert set(relaxed.counts) == set(RULES)


def test_undated_rows_already_quarantined_do_not_fail_later_small_batches(
        initialised: Settings, demo_spec: FeatureSpec) -> None:
    seed_tiny_bank(initialised, accounts=30, days=40)
    insert(initialised, "transactions", TXN_COLUMNS, [BAD[1]])
    strict = initialised.model_copy(update={"max_bad_fraction": 0.004})
    assert extract(strict, demo_spec, END).quarantined["null_timestamp"] == 1
    again = extract(strict, demo_spec, END)
    assert again.rows_read < 300 and again.quarantined["null_timestamp"] == 1
    insert(initialised, "transactions", TXN_COLUMNS, [(990001, 1, None, 1.0, "5411", "pos", "DE", "m1")])
    with pytest.raises(DataQualityError, match="null_timestamp"):
        extract(strict, demo_spec, END)


def _lake_files(settings: Settings) -> dict[str, str]:
    """sha256 of every file in the lake, hidden and staged ones included."""
    base = lake_root(settings)
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


def test_an_incremental_run_over_the_threshold_changes_no_partition_nor_the_watermark(
        initialised: Settings, demo_spec: FeatureSpec) -> None:
    """After a good first extract, a bad batch fails; the lake's bytes and the watermark stay as they were."""
    seed_tiny_bank(initialised, accounts=30, days=40)
    strict = initialised.model_copy(update={"max_bad_fraction": 0.05})
    extract(strict, demo_spec, END)
    before, dates = _lake_files(strict), lake_dates(strict)
    query = "SELECT watermark, last_date, first_date, updated_at FROM riskflow.extract_watermarks"
    with psycopg.connect(strict.database_url.get_secret_value()) as conn:
        mark = conn.execute(query).fetchall()
    late = datetime(2026, 6, 29, 9, tzinfo=UTC)
    insert(strict, "transactions", TXN_COLUMNS,
           [(940000 + i, 2, late, 9e9, "5411", "pos", "DE", "m1") for i in range(40)]
           + [(949999, 3, late + timedelta(days=2), 7.0, "5411", "pos", "DE", "m1")])
    with pytest.raises(DataQualityError, match=r"rule bad_amount: 40 rows"):
        extract(strict, demo_spec, END + timedelta(days=1))
    assert _lake_files(strict) == before and lake_dates(strict) == dates
    with psycopg.connect(strict.database_url.get_secret_value()) as conn:
        assert conn.execute(query).fetchall() == mark
    assert quarantined(strict).height == 40
