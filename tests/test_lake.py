"""The incremental extract: layout, types, idempotence, late days, crash safety, one run at a time."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from riskmodel import lake
from riskmodel.clock import today
from riskmodel.db import advisory_lock, connect
from riskmodel.errors import ConfigError, DatabaseError
from riskmodel.lake import check_writable, extract, lake_dates, lake_root, partition_path, scan_transactions
from riskmodel.seen_ids import SeenIds
from riskmodel.settings import Settings
from riskmodel.source_stream import prefetch
from riskmodel.spec import FeatureSpec
from riskmodel.spill import KeySpill
from riskmodel.storage import lake_key
from tests.datapath_helpers import END, TXN_COLUMNS, execute, insert, seed_tiny_bank


def lake_digest(settings: Settings) -> dict[str, str]:
    """sha256 of every file under the lake's transactions folder, hidden ones included."""
    base = lake_root(settings) / "transactions"
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture()
def bank(initialised: Settings) -> tuple[Settings, list[tuple]]:
    """A seeded tiny bank: 30 accounts x 40 days ending END."""
    return initialised, seed_tiny_bank(initialised)


def test_full_extract_layout_and_types(bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    settings, rows = bank
    report = extract(settings, demo_spec, END)
    assert report.rows_read == len(rows) == report.rows_written
    assert report.read_from is None
    days = lake_dates(settings)
    assert days[0] == END - timedelta(days=39) and days[-1] == END and len(days) == 40
    lake = scan_transactions(settings, days[0], END).collect()
    assert lake.height == len(rows)
    assert lake.schema["ts"] == pl.Datetime("us", "UTC")
    assert lake.schema["amount"] == pl.Float64
    assert (lake["ts"].dt.date() == lake["txn_date"]).all()
    one = pl.read_parquet(partition_path(settings, END))
    assert one.columns == TXN_COLUMNS
    assert one.sort(["account_id", "ts", "txn_id"]).equals(one)
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        mark = conn.execute("SELECT watermark, last_date FROM riskflow.extract_watermarks").fetchone()
    assert mark == (max(r[2] for r in rows), END)


def test_local_dates_follow_the_business_time_zone(bank: tuple[Settings, list[tuple]],
                                                   demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    tokyo = settings.model_copy(update={"timezone": "Asia/Tokyo"})
    insert(tokyo, "transactions", TXN_COLUMNS,
           [(900001, 1, datetime(2026, 6, 29, 20, 0, tzinfo=UTC), 10.0, "5411", "pos", "DE", "m1")])
    extract(tokyo, demo_spec, END + timedelta(days=1))
    lake = pl.read_parquet(partition_path(tokyo, END))
    assert 900001 in lake["txn_id"].to_list()
    assert lake["ts"].dtype == pl.Datetime("us", "UTC")


def test_rerun_over_unchanged_source_gives_identical_bytes(bank: tuple[Settings, list[tuple]],
                                                           demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    extract(settings, demo_spec, END)
    first = lake_digest(settings)
    second_report = extract(settings, demo_spec, END)
    assert second_report.read_from == END - timedelta(days=settings.late_days)
    assert lake_digest(settings) == first
    extract(settings, demo_spec, END, full=True)
    assert lake_digest(settings) == first


def test_late_postings_inside_the_window_are_picked_up(bank: tuple[Settings, list[tuple]],
                                                       demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    extract(settings, demo_spec, END)
    before = lake_digest(settings)
    late = datetime.combine(END - timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    too_late = late - timedelta(days=10)
    new_day = late + timedelta(days=2)
    insert(settings, "transactions", TXN_COLUMNS, [
        (800001, 3, late, 42.0, "5411", "pos", "DE", "m2"),
        (800002, 3, too_late, 43.0, "5411", "pos", "DE", "m2"),
        (800003, 4, new_day, 44.0, "5812", "online", "FR", "m3"),
    ])
    report = extract(settings, demo_spec, END + timedelta(days=1))
    assert report.read_from == END + timedelta(days=1 - settings.late_days)
    assert END + timedelta(days=1) in report.dates_written
    assert 800001 in pl.read_parquet(partition_path(settings, END - timedelta(days=1)))["txn_id"].to_list()
    assert 800003 in pl.read_parquet(partition_path(settings, END + timedelta(days=1)))["txn_id"].to_list()
    old_day = f"txn_date={(END - timedelta(days=11)).isoformat()}/part-0.parquet"
    assert lake_digest(settings)[old_day] == before[old_day]
    eleven = pl.read_parquet(partition_path(settings, END - timedelta(days=11)))
    assert 800002 not in eleven["txn_id"].to_list()


def test_deleted_source_day_is_removed_from_the_lake(bank: tuple[Settings, list[tuple]],
                                                     demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    extract(settings, demo_spec, END)
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("DELETE FROM bank.transactions WHERE ts >= %s", (datetime(2026, 6, 30, tzinfo=UTC),))
    report = extract(settings, demo_spec, END)
    assert report.dates_empty == [END] and END not in report.dates_written
    emptied = pl.read_parquet(partition_path(settings, END))
    day_before = pl.read_parquet(partition_path(settings, END - timedelta(days=1)))
    assert emptied.height == 0 and emptied.schema == day_before.schema
    assert scan_transactions(settings, END, END).collect().height == 0


def test_lost_partitions_are_found_and_read_again(bank: tuple[Settings, list[tuple]],
                                                  demo_spec: FeatureSpec) -> None:
    settings, rows = bank
    extract(settings, demo_spec, END)
    before = lake_digest(settings)
    lost = [END - timedelta(days=30), END - timedelta(days=12)]
    for day in lost:
        shutil.rmtree(partition_path(settings, day).parent)
    with pytest.raises(ConfigError, match=r"no partition for 2 dates .*2026-05-31, 2026-06-18"):
        scan_transactions(settings, END - timedelta(days=39), END)
    report = extract(settings, demo_spec, END - timedelta(days=5))
    assert report.dates_missing == lost and report.read_from == lost[0] and report.run_date == END
    assert lake_digest(settings) == before
    assert scan_transactions(settings, END - timedelta(days=39), END).collect().height == len(rows)
    assert extract(settings, demo_spec, END).dates_missing == []
    with pytest.raises(ConfigError, match=r"last partition is 2026-06-30, before 2026-07-03; run `riskflow "
                                          r"extract --date 2026-07-03`"):
        scan_transactions(settings, END - timedelta(days=3), END + timedelta(days=3))
    before = lake_digest(settings)
    with pytest.raises(ConfigError, match=r"run_date=\S+ is after today"):
        extract(settings, demo_spec, today(settings.tz) + timedelta(days=1))
    assert lake_digest(settings) == before


def _first_date(settings: Settings) -> date | None:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        return conn.execute("SELECT first_date FROM riskflow.extract_watermarks").fetchone()[0]


def test_lost_oldest_partitions_are_found_from_the_recorded_first_date(
        bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    settings, rows = bank
    first = END - timedelta(days=39)
    extract(settings, demo_spec, END)
    assert _first_date(settings) == first
    before = lake_digest(settings)
    lost = [first, first + timedelta(days=1), first + timedelta(days=2)]
    for day in lost:
        shutil.rmtree(partition_path(settings, day).parent)
    report = extract(settings, demo_spec, END)
    assert report.dates_missing == lost and report.read_from == first
    assert lake_digest(settings) == before and _first_date(settings) == first
    assert scan_transactions(settings, first, END).collect().height == len(rows)


def test_a_schema_from_before_first_date_still_extracts_and_db_init_adopts_the_lake(
        bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec, caplog: pytest.LogCaptureFixture) -> None:
    from riskmodel.schema import init_database

    settings, _ = bank
    extract(settings, demo_spec, END)
    execute(settings, "ALTER TABLE riskflow.extract_watermarks DROP COLUMN first_date")
    shutil.rmtree(partition_path(settings, END - timedelta(days=39)).parent)
    with caplog.at_level("WARNING", logger="riskflow.lake"):
        report = extract(settings, demo_spec, END + timedelta(days=1))
    assert "no first_date column" in caplog.text and "riskflow db init" in caplog.text
    assert report.dates_missing == [] and END + timedelta(days=1) in report.dates_empty
    init_database(settings, demo_spec, demo_source=True)
    assert _first_date(settings) is None
    report = extract(settings, demo_spec, END + timedelta(days=1))
    assert report.dates_missing == [] and _first_date(settings) == END - timedelta(days=38)
    shutil.rmtree(partition_path(settings, END - timedelta(days=38)).parent)
    report = extract(settings, demo_spec, END + timedelta(days=1))
    assert report.dates_missing == [END - timedelta(days=38)]
    assert partition_path(settings, END - timedelta(days=38)).exists()
    assert lake_dates(settings)[0] == END - timedelta(days=38), "a loss from before the upgrade is unknowable"


def test_days_without_rows_get_empty_partitions(bank: tuple[Settings, list[tuple]],
                                                demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    quiet = END - timedelta(days=20)
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("DELETE FROM bank.transactions WHERE ts >= %s AND ts < %s",
                     (datetime(2026, 6, 10, tzinfo=UTC), datetime(2026, 6, 11, tzinfo=UTC)))
    report = extract(settings, demo_spec, END)
    assert report.dates_empty == [quiet] and len(lake_dates(settings)) == 40
    again = extract(settings, demo_spec, END)
    assert again.dates_missing == [] and again.read_from == END - timedelta(days=settings.late_days)
    later = END + timedelta(days=2)
    quiet_run = extract(settings.model_copy(update={"late_days": 0}), demo_spec, later)
    assert quiet_run.rows_read == 0 and quiet_run.dates_empty == [END + timedelta(days=1), later]
    window = scan_transactions(settings, quiet, later).collect()
    assert window.height == scan_transactions(settings, quiet, END).collect().height
    assert pl.read_parquet(partition_path(settings, later)).schema == \
        pl.read_parquet(partition_path(settings, END)).schema


def test_an_emptied_lake_is_extracted_again_in_full(bank: tuple[Settings, list[tuple]],
                                                    demo_spec: FeatureSpec) -> None:
    settings, rows = bank
    extract(settings, demo_spec, END)
    before = lake_digest(settings)
    shutil.rmtree(lake_root(settings))
    report = extract(settings, demo_spec, END)
    assert report.rows_read == len(rows) and report.read_from is None
    assert lake_digest(settings) == before
    shutil.rmtree(lake_root(settings))
    older = extract(settings, demo_spec, END - timedelta(days=10))
    assert older.run_date == END and older.rows_read == len(rows) and not any(older.quarantined.values())
    assert lake_digest(settings) == before


def test_crash_between_write_and_rename_leaves_old_partitions_whole(
        bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    extract(settings, demo_spec, END)
    before = lake_digest(settings)
    insert(settings, "transactions", TXN_COLUMNS,
           [(700001, 5, datetime(2026, 6, 29, 12, tzinfo=UTC), 5.0, "5411", "pos", "DE", "m1")])

    def crash(day: date, tmp: Path) -> None:
        if day == END - timedelta(days=1):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(settings, demo_spec, END, before_rename=crash)
    after = lake_digest(settings)
    visible = {k: v for k, v in after.items() if k.endswith("/part-0.parquet")}
    assert visible == before
    assert any(k.endswith(".tmp") for k in after)
    lake = scan_transactions(settings, END - timedelta(days=39), END).collect()
    assert 700001 not in lake["txn_id"].to_list()
    extract(settings, demo_spec, END)
    healed = lake_digest(settings)
    assert not any(k.endswith(".tmp") for k in healed)
    assert 700001 in pl.read_parquet(partition_path(settings, END - timedelta(days=1)))["txn_id"].to_list()


def test_two_concurrent_extracts_do_not_interleave(bank: tuple[Settings, list[tuple]],
                                                   demo_spec: FeatureSpec) -> None:
    settings, _ = bank
    events: list[str] = []
    errors: list[BaseException] = []

    def slow(day: date, tmp: Path) -> None:
        events.append(threading.current_thread().name)
        time.sleep(0.002)

    def run() -> None:
        try:
            extract(settings, demo_spec, END, full=True, before_rename=slow)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, name=f"t{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(events) == 80
    switches = sum(1 for a, b in zip(events, events[1:], strict=False) if a != b)
    assert switches == 1


def test_unwritable_local_lake_fails_before_any_database_write(initialised: Settings,
                                                               demo_spec: FeatureSpec) -> None:
    seed_tiny_bank(initialised, accounts=5, days=5)
    insert(initialised, "transactions", TXN_COLUMNS,
           [(990001, None, datetime(2026, 6, 29, 12, tzinfo=UTC), 1.0, "5411", "pos", "DE", "m1")])
    blocker = initialised.home / "a-regular-file"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    values = initialised.model_dump()
    values["lake_url"] = str(blocker / "lake")
    unwritable = Settings(**values)
    with pytest.raises(ConfigError, match=rf"lake {blocker}/lake is not writable"):
        check_writable(unwritable)
    with pytest.raises(ConfigError, match="is not writable"):
        extract(unwritable, demo_spec, END)
    with psycopg.connect(initialised.database_url.get_secret_value()) as conn:
        assert conn.execute("SELECT count(*) FROM riskflow.extract_watermarks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM riskflow.quarantine").fetchone()[0] == 0


def test_spilling_and_small_groups_change_no_byte(bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = bank
    extract(settings, demo_spec, END)
    in_memory = lake_digest(settings)
    monkeypatch.setattr(lake, "SPILL_BUDGET_BYTES", 1)
    monkeypatch.setattr(lake, "GROUP_ROWS", 1)
    spills: list[int] = []
    real_spill = KeySpill.spill

    def counting(self: KeySpill) -> None:
        spills.append(len(self._held))
        real_spill(self)

    monkeypatch.setattr(KeySpill, "spill", counting)
    extract(settings, demo_spec, END, full=True)
    assert len(spills) >= 1 and max(spills) >= 2
    assert lake_digest(settings) == in_memory


def test_an_id_repeated_on_a_later_date_is_a_duplicate(bank: tuple[Settings, list[tuple]],
                                                       demo_spec: FeatureSpec,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = bank
    first = datetime(2026, 6, 20, 12, tzinfo=UTC)
    insert(settings, "transactions", TXN_COLUMNS, [
        (960001, 1, first, 10.0, "5411", "pos", "DE", "m1"),
        (960001, 2, first + timedelta(days=3), 11.0, "5411", "pos", "DE", "m1"),
        (960002, 3, first + timedelta(days=1), -1.0, "5411", "pos", "DE", "m1"),
        (960002, 3, first + timedelta(days=2), 12.0, "5411", "pos", "DE", "m1"),
    ])
    monkeypatch.setattr(lake, "GROUP_ROWS", 1)
    report = extract(settings, demo_spec, END)
    assert report.quarantined["duplicate_txn_id"] == 2 and report.quarantined["bad_amount"] == 1
    rows = scan_transactions(settings, END - timedelta(days=39), END).collect()
    kept = rows.filter(pl.col("txn_id") == 960001)
    assert kept["ts"].to_list() == [first]
    assert rows.filter(pl.col("txn_id") == 960002).is_empty()


@given(st.lists(st.lists(st.integers(-50, 50) | st.none(), max_size=30), max_size=12))
@hsettings(max_examples=60, deadline=None)
def test_seen_ids_is_a_set(chunks: list[list[int | None]]) -> None:
    seen, model = SeenIds(), set()
    for chunk in chunks:
        ids = pl.Series("id", chunk, dtype=pl.Int64)
        want = [v is not None and v in model for v in chunk]
        assert seen.contains(ids).to_list() == want
        assert seen.update(ids).to_list() == want
        model |= {v for v in chunk if v is not None}
    assert len(seen) == len(model)


@given(st.lists(st.tuples(st.sampled_from([None, 1, 2, 3]), st.integers(0, 99)), max_size=60),
       st.integers(1, 300))
@hsettings(max_examples=40, deadline=None)
def test_key_spill_gives_back_each_key_in_arrival_order(
        tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int | None, int]], budget: int) -> None:
    frame = pl.DataFrame(rows, schema={"k": pl.Int64, "v": pl.Int64}, orient="row")
    spill = KeySpill(tmp_path_factory.mktemp("spill"), "k", budget)
    for start in range(0, frame.height, 7):
        spill.add(frame.slice(start, 7))
    keys = spill.keys()
    assert keys == sorted({k for k, _ in rows if k is not None}) + ([None] if any(k is None for k, _ in rows)
                                                                     else [])
    for key in keys:
        want = [v for k, v in rows if k == key]
        assert spill.take(key)["v"].to_list() == want
    assert spill.rows == len(rows)


def test_ranges_over_an_indexed_timestamp_give_the_same_lake(bank: tuple[Settings, list[tuple]],
                                                              demo_spec: FeatureSpec,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = bank
    first = datetime(2026, 6, 2, 12, tzinfo=UTC)
    insert(settings, "transactions", TXN_COLUMNS, [
        (970001, 1, first, 10.0, "5411", "pos", "DE", "m1"),
        (970001, 2, first + timedelta(days=20), 11.0, "5411", "pos", "DE", "m1"),
        (970002, 3, None, 12.0, "5411", "pos", "DE", "m1"),
        (970003, 3, datetime(2099, 1, 1, tzinfo=UTC), 13.0, "5411", "pos", "DE", "m1"),
    ])
    single = extract(settings, demo_spec, END)
    whole = lake_digest(settings)
    execute(settings, "CREATE INDEX transactions_ts_test_idx ON bank.transactions (ts)")
    monkeypatch.setattr(lake, "RANGE_DAYS", 3)
    planned: list[int] = []
    real_plan = lake.plan_ranges

    def plan(*args: object, **kwargs: object) -> list:
        ranges = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        planned.append(len(ranges))
        return ranges

    monkeypatch.setattr(lake, "plan_ranges", plan)
    ranged = extract(settings, demo_spec, END, full=True)
    assert planned == [15], "14 ranges of 3 days in the window, then the future-stamped rows"
    assert ranged.quarantined == single.quarantined
    assert ranged.quarantined["duplicate_txn_id"] == 1 and ranged.quarantined["null_timestamp"] == 1
    assert ranged.quarantined["future_timestamp"] == 1
    assert (ranged.rows_read, ranged.rows_written) == (single.rows_read, single.rows_written)
    assert lake_digest(settings) == whole


def test_prefetch_hands_over_items_and_errors_and_closes_early() -> None:
    closed: list[str] = []

    def items(fail: bool) -> Iterator[int]:
        try:
            yield from range(5)
            if fail:
                raise ValueError("source broke")
        finally:
            closed.append("closed")

    with pytest.raises(ValueError, match="source broke"):
        assert list(prefetch(items(True), 2)) == [0, 1, 2, 3, 4]
    got = []
    for item in prefetch(items(False), 1):
        got.append(item)
        if item == 1:
            break
    assert got == [0, 1] and closed == ["closed", "closed"]


def _extract_state(settings: Settings) -> tuple[list, int]:
    """The lake's watermark rows and the number of quarantined rows."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        marks = conn.execute("SELECT lake, source, watermark, last_date, first_date, updated_at "
                             "FROM riskflow.extract_watermarks ORDER BY 1, 2").fetchall()
        return marks, conn.execute("SELECT count(*) FROM riskflow.quarantine").fetchone()[0]


def test_an_extract_that_cannot_get_the_lake_lock_gives_up_and_writes_nothing(
        bank: tuple[Settings, list[tuple]], demo_spec: FeatureSpec) -> None:
    """While another session holds the lake's lock, extract gives up after lock_timeout_s untouched."""
    settings, _ = bank
    extract(settings, demo_spec, END)
    before, state = lake_digest(settings), _extract_state(settings)
    noon = datetime(2026, 6, 30, 12, tzinfo=UTC)
    insert(settings, "transactions", TXN_COLUMNS, [(910001, 2, noon, 5.0, "5411", "pos", "DE", "m1"),
                                                   (910002, None, noon, 6.0, "5411", "pos", "DE", "m1")])
    with connect(settings) as holder, advisory_lock(holder, f"extract:{lake_key(settings)}"):
        gave_up = r"another run holds the lock 'extract:.*'; gave up after 0\.3s"
        with pytest.raises(DatabaseError, match=gave_up):
            extract(settings, demo_spec, END, lock_timeout_s=0.3)
        assert lake_digest(settings) == before and _extract_state(settings) == state
    report = extract(settings, demo_spec, END)
    assert report.quarantined["null_account"] == 1
    assert 910001 in pl.read_parquet(partition_path(settings, END))["txn_id"].to_list()
