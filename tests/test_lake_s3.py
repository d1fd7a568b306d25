"""The lake on object storage, against a real S3-compatible server (moto) on a loopback port."""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from pydantic import SecretStr

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.features import fit_state
from riskmodel.lake import extract, lake_dates, partition_path, partition_url, scan_transactions
from riskmodel.sequences import build_scoring_shards
from riskmodel.settings import Settings, load_settings
from riskmodel.sources import read_accounts
from riskmodel.spec import FeatureSpec
from riskmodel.storage import lake_store, redact_lake, storage_options
from tests.datapath_helpers import END, TXN_COLUMNS, insert, seed_tiny_bank

BUCKET = "riskflow-lake"
KEY = "riskflow-test-key"
SECRET = "s3cr3t-Do-Not-Print-9731"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def with_lake(settings: Settings, url: str, **options: str) -> Settings:
    """A fresh copy of `settings` with another lake (fresh, so no cached `lake` value carries over)."""
    values = settings.model_dump()
    values.update(lake_url=url, lake_storage_options={k: SecretStr(v) for k, v in options.items()})
    return Settings(**values)


@pytest.fixture()
def lakes(initialised: Settings, s3_endpoint: str) -> tuple[Settings, Settings, list[tuple]]:
    """(S3 lake settings, local lake settings, source rows) over one seeded tiny bank."""
    rows = seed_tiny_bank(initialised, accounts=30, days=40)
    s3 = with_lake(initialised, f"s3://{BUCKET}/lake-{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint,
                   key=KEY, secret=SECRET, region="us-east-1")
    local = with_lake(initialised, str(initialised.home / "local-lake"))
    return s3, local, rows


def objects(settings: Settings) -> dict[str, str]:
    """sha256 of every object under the lake's transactions prefix, by key relative to it."""
    store = lake_store(settings)
    base = store.path("transactions")
    store.fs.invalidate_cache()
    return {p.removeprefix(base + "/"): hashlib.sha256(store.fs.cat_file(p)).hexdigest()
            for p in sorted(store.fs.find(base))}


def test_extract_to_s3_writes_the_same_partitions_as_a_local_lake(
        lakes: tuple[Settings, Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    s3, local, rows = lakes
    report = extract(s3, demo_spec, END)
    extract(local, demo_spec, END)
    assert report.rows_written == len(rows)
    days = lake_dates(s3)
    assert days == lake_dates(local) and len(days) == 40 and days[-1] == END
    stored = objects(s3)
    assert set(stored) == {f"txn_date={d.isoformat()}/part-0.parquet" for d in days}
    for d in (days[0], END):
        assert stored[f"txn_date={d.isoformat()}/part-0.parquet"] == \
            hashlib.sha256(partition_path(local, d).read_bytes()).hexdigest()
    assert partition_url(s3, END).startswith(f"s3://{BUCKET}/")
    from_s3 = scan_transactions(s3, days[0], END).collect()
    assert from_s3.height == len(rows)
    assert from_s3.equals(scan_transactions(local, days[0], END).collect())
    assert from_s3.schema["ts"] == pl.Datetime("us", "UTC") and from_s3.schema["txn_date"] == pl.Date


def test_rerun_on_s3_gives_identical_objects(lakes: tuple[Settings, Settings, list[tuple]],
                                             demo_spec: FeatureSpec) -> None:
    s3, _, _ = lakes
    extract(s3, demo_spec, END)
    first = objects(s3)
    assert extract(s3, demo_spec, END).read_from == END - timedelta(days=s3.late_days)
    assert objects(s3) == first
    extract(s3, demo_spec, END, full=True)
    assert objects(s3) == first


def test_late_postings_replace_a_partition_and_deleted_days_go(
        lakes: tuple[Settings, Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    s3, _, _ = lakes
    extract(s3, demo_spec, END)
    before = objects(s3)
    late = datetime(2026, 6, 29, 9, tzinfo=UTC)
    insert(s3, "transactions", TXN_COLUMNS, [(800001, 3, late, 42.0, "5411", "pos", "DE", "m2")])
    with psycopg.connect(s3.database_url.get_secret_value()) as conn:
        conn.execute("DELETE FROM bank.transactions WHERE ts >= %s", (datetime(2026, 6, 30, tzinfo=UTC),))
    report = extract(s3, demo_spec, END)
    assert report.dates_empty == [END] and END in lake_dates(s3)
    assert scan_transactions(s3, END, END).collect().height == 0
    after = objects(s3)
    changed = ("txn_date=2026-06-29/part-0.parquet", "txn_date=2026-06-30/part-0.parquet")
    assert all(after[k] != before[k] for k in changed)
    assert {k: v for k, v in after.items() if k not in changed} == \
        {k: v for k, v in before.items() if k not in changed}
    day = scan_transactions(s3, END - timedelta(days=1), END - timedelta(days=1)).collect()
    assert 800001 in day["txn_id"].to_list()
    quiet = extract(s3.model_copy(update={"late_days": 0}), demo_spec, END + timedelta(days=1))
    assert quiet.rows_read == 0 and quiet.dates_empty == [END + timedelta(days=1)]
    assert scan_transactions(s3, END - timedelta(days=1), END + timedelta(days=1)).collect().equals(day)


def test_crash_before_commit_leaves_the_old_partition_readable(
        lakes: tuple[Settings, Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    s3, _, _ = lakes
    extract(s3, demo_spec, END)
    before = objects(s3)
    insert(s3, "transactions", TXN_COLUMNS,
           [(700001, 5, datetime(2026, 6, 29, 12, tzinfo=UTC), 5.0, "5411", "pos", "DE", "m1")])

    def crash(day: date, staged: Path) -> None:
        assert staged.is_file()
        if day == END - timedelta(days=1):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(s3, demo_spec, END, before_rename=crash)
    assert objects(s3) == before
    assert 700001 not in scan_transactions(s3, END - timedelta(days=39), END).collect()["txn_id"].to_list()
    extract(s3, demo_spec, END)
    assert set(objects(s3)) == set(before)
    assert 700001 in scan_transactions(s3, END - timedelta(days=1), END).collect()["txn_id"].to_list()


def test_sequences_from_s3_equal_those_from_a_local_lake(
        lakes: tuple[Settings, Settings, list[tuple]], demo_spec: FeatureSpec, tmp_path: Path) -> None:
    s3, local, rows = lakes
    spec = demo_spec.model_copy(update={"horizon_days": 5, "reporting_lag_days": 2, "max_seq_len": 16})
    extract(s3, spec, END)
    extract(local, spec, END)
    state = fit_state(spec, pl.DataFrame(rows, schema=TXN_COLUMNS, orient="row"), read_accounts(s3, spec))
    cutoff = END - timedelta(days=2)
    built = {}
    for name, settings in (("s3", s3), ("local", local)):
        paths = build_scoring_shards(settings, spec, state, cutoff, tmp_path / name)
        built[name] = SequenceBatch.concat([SequenceBatch.load(p) for p in paths])
    a, b = built["s3"], built["local"]
    assert len(a) == len(b) >= 25
    for array in ("account_id", "num", "cat", "time", "lengths", "static_num", "static_cat", "agg", "cutoff"):
        np.testing.assert_array_equal(getattr(a, array), getattr(b, array), err_msg=array)


def test_unwritable_lake_fails_before_any_database_write(initialised: Settings, s3_endpoint: str,
                                                         demo_spec: FeatureSpec) -> None:
    seed_tiny_bank(initialised, accounts=5, days=5)
    insert(initialised, "transactions", TXN_COLUMNS,
           [(990001, None, datetime(2026, 6, 29, 12, tzinfo=UTC), 1.0, "5411", "pos", "DE", "m1")])
    missing = with_lake(initialised, "s3://no-such-bucket/lake", endpoint_url=s3_endpoint, key=KEY,
                        secret=SECRET, region="us-east-1")
    with pytest.raises(ConfigError, match=r"lake s3://no-such-bucket/lake is not writable") as caught:
        extract(missing, demo_spec, END)
    assert SECRET not in str(caught.value)
    with psycopg.connect(initialised.database_url.get_secret_value()) as conn:
        assert conn.execute("SELECT count(*) FROM riskflow.extract_watermarks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM riskflow.quarantine").fetchone()[0] == 0


def test_storage_options_come_from_the_environment_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKFLOW_LAKE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("RISKFLOW_LAKE_STORAGE_OPTIONS",
                       f'{{"endpoint_url": "http://127.0.0.1:9", "key": "{KEY}", "secret": "{SECRET}", '
                       f'"region": "eu-west-1"}}')
    settings = load_settings()
    assert storage_options(settings) == {"endpoint_url": "http://127.0.0.1:9", "key": KEY, "secret": SECRET,
                                         "client_kwargs": {"region_name": "eu-west-1"}}
    shown = f"{settings!r} {settings.model_dump(mode='json')}"
    assert SECRET not in shown and KEY not in shown
    assert redact_lake(settings, f"denied for {KEY}:{SECRET} at s3://u:pw@bucket") == \
        "denied for ***:*** at s3://u:***@bucket"
