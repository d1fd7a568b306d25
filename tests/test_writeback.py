"""Write-back: atomic day replacement, audit, crash safety, cross-process exclusion, readers, retention."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import psycopg
import pytest
from psycopg import sql
from writeback_helpers import score_frame

from riskmodel import faults
from riskmodel.db import advisory_lock, connect
from riskmodel.errors import ConfigError, DatabaseError
from riskmodel.faults import MARK_ENV, PAUSE_ENV, PAUSE_SECONDS_ENV
from riskmodel.schema import init_database
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec
from riskmodel.writeback import (
    InjectedFailure,
    byte_ordered,
    date_lock_name,
    drop_expired_partitions,
    scores_for_date,
    stored_checksum,
    write_scores,
)

DAY = dt.date(2026, 6, 30)
CONTENT = ["account_id", "risk_score", "risk_band", "model_version", "reason_codes"]


def _write(settings: Settings, frame: pl.DataFrame, *, day: dt.date = DAY, version: str = "v1",
           run_id: uuid.UUID | None = None, **kw: object):
    return write_scores(settings, score_date=day, scores=frame, model_version=version,
                        model_sha256="f" * 64, run_id=run_id or uuid.uuid4(),
                        watermark=dt.datetime(2026, 7, 1, 2, 0, tzinfo=dt.UTC), **kw)


def _runs(settings: Settings) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(
            sql.SQL("SELECT run_id, status, row_count, checksum, model_sha256, watermark, started_at,"
                    " finished_at FROM {} ORDER BY started_at").format(
                sql.Identifier(settings.db_schema, "pipeline_runs"))).fetchall()


def _relnames(settings: Settings) -> set[str]:
    with connect(settings) as conn:
        return {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s", (settings.db_schema,)).fetchall()}


def _staging(settings: Settings) -> set[str]:
    return {name for name in _relnames(settings) if re.search(r"_stage\d*$", name)}


def _split(settings: Settings, split_rows: int) -> Settings:
    """The settings with nights of `split_rows` rows or more written as two account-range leaves."""
    return settings.model_copy(update={"write_split_rows": split_rows})


@pytest.mark.parametrize("split_rows", [0, 100])
def test_rerun_gives_identical_rows_and_audits_the_replaced(initialised: Settings, split_rows: int) -> None:
    initialised = _split(initialised, split_rows)
    frame = score_frame(500, seed=1)
    first = _write(initialised, frame)
    stored = scores_for_date(initialised, DAY)
    assert stored.height == 500 and stored["account_id"].n_unique() == 500
    expected = frame.sort("account_id").with_columns(pl.lit("v1").alias("model_version"))
    assert stored.select(CONTENT).equals(expected.select(CONTENT))
    second = _write(initialised, frame)
    again = scores_for_date(initialised, DAY)
    assert again.select(CONTENT).equals(stored.select(CONTENT))
    assert set(again["run_id"]) == {str(second.run_id)}
    assert first.checksum == second.checksum == stored_checksum(initialised, DAY)
    assert (first.replaced_rows, second.replaced_rows) == (0, 500)
    with connect(initialised) as conn:
        audit = conn.execute("SELECT run_id, replaced_by_run, count(*) FROM riskflow.risk_scores_audit"
                             " GROUP BY 1, 2").fetchall()
        owner = conn.execute("SELECT relowner::regrole::text FROM pg_class WHERE relname = %s",
                             ("risk_scores_p20260630",)).fetchone()[0]
    assert audit == [(first.run_id, second.run_id, 500)]
    assert owner == initialised.writer_role
    runs = _runs(initialised)
    assert [(r[0], r[1], r[2], r[3]) for r in runs] == [
        (first.run_id, "succeeded", 500, first.checksum), (second.run_id, "succeeded", 500, first.checksum)]
    assert runs[0][4] == "f" * 64 and runs[0][5] == dt.datetime(2026, 7, 1, 2, 0, tzinfo=dt.UTC)
    changed = _write(initialised, frame.with_columns(pl.col("risk_score") * 0.5))
    assert changed.checksum != first.checksum


@pytest.mark.parametrize(("stage", "split_rows"),
                         [("staging", 0), ("swap", 0), ("staging", 100), ("swap", 100)])
def test_injected_failure_keeps_previous_scores(initialised: Settings, stage: str, split_rows: int) -> None:
    initialised = _split(initialised, split_rows)
    good = _write(initialised, score_frame(300, seed=2))
    before = scores_for_date(initialised, DAY)
    failing = uuid.uuid4()
    with pytest.raises(InjectedFailure):
        _write(initialised, score_frame(400, seed=3), version="v2", run_id=failing, fail_after=stage)
    after = scores_for_date(initialised, DAY)
    assert after.equals(before)
    assert stored_checksum(initialised, DAY) == good.checksum
    assert not _staging(initialised)
    statuses = {r[0]: r[1] for r in _runs(initialised)}
    assert statuses == {good.run_id: "succeeded", failing: "failed"}
    with connect(initialised) as conn:
        assert conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit").fetchone()[0] == 0
    retried = _write(initialised, score_frame(400, seed=3), version="v2", run_id=failing)
    with connect(initialised) as conn:
        status, details = conn.execute("SELECT status, details FROM riskflow.pipeline_runs WHERE run_id = %s",
                                       (failing,)).fetchone()
    assert retried.rows == 400 and status == "succeeded" and "error" not in details
    assert details["previous_error"].startswith("InjectedFailure")


def test_a_lost_connection_fails_with_its_own_error_and_is_recorded(
        initialised: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _write(initialised, score_frame(300, seed=2))
    mark = tmp_path / "paused"
    monkeypatch.setenv(faults.PAUSE_ENV, "writeback.after_staging")
    monkeypatch.setenv(faults.PAUSE_SECONDS_ENV, "8")
    monkeypatch.setenv(faults.MARK_ENV, str(mark))

    def cut_off() -> None:
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(initialised, admin=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")

    killer = threading.Thread(target=cut_off)
    killer.start()
    lost = uuid.uuid4()
    with pytest.raises(psycopg.OperationalError) as caught:
        _write(initialised, score_frame(400, seed=3), version="v2", run_id=lost)
    killer.join()
    assert "the connection is closed" not in str(caught.value), caught.value
    monkeypatch.delenv(faults.PAUSE_ENV)
    statuses = {r[0]: r[1] for r in _runs(initialised)}
    assert statuses == {good.run_id: "succeeded", lost: "failed"}
    assert stored_checksum(initialised, DAY) == good.checksum
    assert _write(initialised, score_frame(400, seed=3), version="v2").rows == 400
    assert not _staging(initialised)


def test_bad_frames_are_rejected_with_the_row_named(initialised: Settings) -> None:
    frame = score_frame(10, seed=4)
    with pytest.raises(ConfigError, match="appears more than once"):
        _write(initialised, pl.concat([frame, frame.head(1)]))
    with pytest.raises(ConfigError, match=r"risk_score must be in \[0, 1\]; row 3"):
        bad = pl.when(pl.int_range(pl.len()) == 3).then(1.5).otherwise(pl.col("risk_score"))
        _write(initialised, frame.with_columns(bad.alias("risk_score")))
    with pytest.raises(ConfigError, match=r"null code at row 5 \(account "):
        codes = pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(["Amount pattern", None]))
        _write(initialised, frame.with_columns(codes.otherwise(pl.col("reason_codes")).alias("reason_codes")))
    with pytest.raises(ConfigError, match="no rows"):
        _write(initialised, frame.head(0))
    with pytest.raises(ConfigError, match="missing column"):
        _write(initialised, frame.drop("risk_band"))
    assert scores_for_date(initialised, DAY).height == 0


def test_same_date_from_two_processes_never_interleaves(initialised: Settings, tmp_path: Path) -> None:
    """The first writer pauses after staging, holding the date's lock; the second is seen polling for
    that lock (so the two do compete) and writes only after the first has finished."""
    url = initialised.database_url.get_secret_value()
    helper = Path(__file__).with_name("writeback_helpers.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    mark = tmp_path / "paused"
    paused = {**env, PAUSE_ENV: "writeback.after_staging", MARK_ENV: str(mark), PAUSE_SECONDS_ENV: "8"}

    def writer(seed: int, environment: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(helper), url, str(tmp_path / "h"), DAY.isoformat(),
                                 str(seed)], env=environment, stderr=subprocess.PIPE)

    procs = [writer(5, paused)]
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert procs[0].poll() is None and time.monotonic() < deadline, "the first writer never paused"
        time.sleep(0.05)
    procs.append(writer(6, {**env, "PGAPPNAME": "second-writer"}))
    with connect(initialised, admin=True) as watcher:  # other sessions' queries need the admin's sight
        # the second writer's session, between two tries of the lock (a failed try is rolled back)
        polling = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                   " AND application_name = 'second-writer'"
                   " AND (query LIKE 'SELECT pg_try_advisory_lock%%' OR query = 'ROLLBACK')")
        while not watcher.execute(polling).fetchone()[0]:
            assert procs[0].poll() is None, "the first writer finished before the second was seen waiting"
            assert time.monotonic() < deadline, "the second writer never waited for the date's lock"
            time.sleep(0.02)
            watcher.rollback()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    stored = scores_for_date(initialised, DAY)
    assert stored.height == 2000 and stored["account_id"].n_unique() == 2000
    assert stored["model_version"].n_unique() == 1 and stored["run_id"].n_unique() == 1
    runs = _runs(initialised)
    assert [r[1] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0][7] <= runs[1][6], "the two runs' write windows overlapped"
    assert stored["run_id"][0] == str(runs[1][0])
    with connect(initialised) as conn:
        audit = conn.execute("SELECT count(*), min(replaced_by_run::text) FROM riskflow.risk_scores_audit"
                             ).fetchone()
    assert audit == (2000, str(runs[1][0]))


def _hold_reader(settings: Settings, seconds: float, seen: list[int], errors: list[BaseException],
                 started: threading.Event) -> None:
    try:
        with connect(settings) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            seen.append(conn.execute("SELECT count(*) FROM riskflow.risk_scores WHERE score_date = %s",
                                     (DAY,)).fetchone()[0])
            started.set()
            time.sleep(seconds)
            seen.append(conn.execute("SELECT count(*) FROM riskflow.risk_scores WHERE score_date = %s",
                                     (DAY,)).fetchone()[0])
            conn.commit()
    except BaseException as exc:  # noqa: BLE001 - reported to the test thread
        errors.append(exc)
        started.set()


def test_long_reader_is_not_broken_and_writer_waits_within_bounds(initialised: Settings) -> None:
    _write(initialised, score_frame(200, seed=7))
    fast = initialised.model_copy(update={"lock_timeout_ms": 150})
    seen: list[int] = []
    errors: list[BaseException] = []
    started = threading.Event()
    reader = threading.Thread(target=_hold_reader, args=(initialised, 1.5, seen, errors, started))
    reader.start()
    assert started.wait(10), "the reader never started"
    t0 = time.monotonic()
    report = _write(fast, score_frame(300, seed=8), version="v2")
    waited = time.monotonic() - t0
    reader.join(10)
    assert not errors, errors
    assert seen == [200, 200]
    assert report.attempts > 1 and 0.5 < waited < 8
    assert scores_for_date(initialised, DAY).height == 300


def test_writer_gives_up_cleanly_when_readers_hold_on(initialised: Settings) -> None:
    good = _write(initialised, score_frame(200, seed=9))
    fast = initialised.model_copy(update={"lock_timeout_ms": 100})
    seen: list[int] = []
    errors: list[BaseException] = []
    started = threading.Event()
    reader = threading.Thread(target=_hold_reader, args=(initialised, 2.5, seen, errors, started))
    reader.start()
    assert started.wait(10), "the reader never started"
    t0 = time.monotonic()
    with pytest.raises(DatabaseError, match="lock_timeout_ms=100"):
        _write(fast, score_frame(300, seed=10), version="v2", lock_attempts=3)
    assert time.monotonic() - t0 < 2.0
    with connect(initialised) as conn:
        t1 = time.monotonic()
        assert conn.execute("SELECT count(*) FROM riskflow.risk_scores").fetchone()[0] == 200
        assert time.monotonic() - t1 < 1.0, "a new reader queued behind the writer"
    reader.join(10)
    assert not errors and seen == [200, 200]
    assert stored_checksum(initialised, DAY) == good.checksum


def test_staging_never_hangs_behind_an_exclusive_lock(initialised: Settings) -> None:
    good = _write(initialised, score_frame(30, seed=40))
    quick = initialised.model_copy(update={"lock_timeout_ms": 20})
    with connect(initialised) as holder:
        holder.execute("LOCK TABLE riskflow.risk_scores IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(DatabaseError, match=r"staging riskflow\.risk_scores_p20260630: .* 40 ms"):
            _write(quick, score_frame(40, seed=41), lock_attempts=2)
        assert time.monotonic() - started < 10
        holder.rollback()
    assert stored_checksum(initialised, DAY) == good.checksum
    assert not _staging(initialised)


def test_retention_drops_only_expired_partitions(initialised: Settings) -> None:
    for offset in (10, 8, 7, 0):
        _write(initialised, score_frame(20, seed=offset), day=DAY - dt.timedelta(days=offset))
    _write(initialised, score_frame(20, seed=1), day=DAY - dt.timedelta(days=10))
    _write(initialised, score_frame(20, seed=2), day=DAY - dt.timedelta(days=8))
    _write(initialised, score_frame(20, seed=11), day=DAY - dt.timedelta(days=9), table="risk_scores_shadow")
    with connect(initialised) as conn:
        conn.execute("CREATE TABLE riskflow.risk_scores_p20260618_stage (LIKE riskflow.risk_scores)")
        conn.execute("CREATE TABLE riskflow.risk_scores_p20260618_stage1 (LIKE riskflow.risk_scores)")
        conn.commit()
    with connect(initialised) as holder, advisory_lock(
            holder, date_lock_name("riskflow", "risk_scores", DAY - dt.timedelta(days=8))):
        report = drop_expired_partitions(initialised, DAY, retention_days=7)
    assert report.cutoff == DAY - dt.timedelta(days=7)
    assert report.dropped == ["risk_scores_p20260618_stage", "risk_scores_p20260618_stage1",
                              "risk_scores_p20260620", "risk_scores_shadow_p20260621"]
    assert report.skipped == ["risk_scores_p20260622"] and report.audit_rows == 20
    assert report.skipped_days == [DAY - dt.timedelta(days=8)]
    with connect(initialised) as conn:
        dates = [r[0] for r in conn.execute(
            "SELECT DISTINCT score_date FROM riskflow.risk_scores ORDER BY 1").fetchall()]
        audit = conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit").fetchone()[0]
    assert dates == [DAY - dt.timedelta(days=8), DAY - dt.timedelta(days=7), DAY]
    assert audit == 20, "the skipped date keeps its audit rows with its partition"
    again = drop_expired_partitions(initialised, DAY, retention_days=7)
    assert again.dropped == ["risk_scores_p20260622"] and again.skipped == [] and again.audit_rows == 20
    assert drop_expired_partitions(initialised, DAY, retention_days=7).dropped == []


@pytest.mark.parametrize("split_rows", [0, 20])
def test_shadow_rewrite_keeps_other_challengers(initialised: Settings, split_rows: int) -> None:
    initialised = _split(initialised, split_rows)
    _write(initialised, score_frame(50, seed=12), version="c1", table="risk_scores_shadow")
    _write(initialised, score_frame(60, seed=13), version="c2", table="risk_scores_shadow")
    report = _write(initialised, score_frame(70, seed=14), version="c1", table="risk_scores_shadow")
    shadow = scores_for_date(initialised, DAY, table="risk_scores_shadow")
    counts = dict(shadow.group_by("model_version").len().iter_rows())
    assert counts == {"c1": 70, "c2": 60} and report.replaced_rows == 50
    assert stored_checksum(initialised, DAY, "risk_scores_shadow", "c1") == report.checksum
    assert stored_checksum(initialised, DAY, "risk_scores_shadow") != report.checksum
    assert scores_for_date(initialised, DAY).height == 0


def test_different_dates_write_in_parallel(initialised: Settings) -> None:
    days = [DAY - dt.timedelta(days=k) for k in range(3)]
    _write(initialised, score_frame(100, seed=20), day=days[0])
    errors: list[BaseException] = []

    def one(day: dt.date, seed: int) -> None:
        try:
            _write(initialised, score_frame(1500, seed=seed), day=day)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(day, 21 + k)) for k, day in enumerate(days)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for k, day in enumerate(days):
        assert scores_for_date(initialised, day).select(CONTENT[:3]).equals(
            score_frame(1500, seed=21 + k).sort("account_id").select(CONTENT[:3]))
    assert [r[1] for r in _runs(initialised)] == ["succeeded"] * 4
    with connect(initialised) as holder, advisory_lock(
            holder, date_lock_name(initialised.db_schema, "risk_scores", days[0])):
        started = time.monotonic()
        _write(initialised, score_frame(50, seed=30), day=days[1], lock_attempts=1)
        assert time.monotonic() - started < 30, "another date's lock held this write"
    assert scores_for_date(initialised, days[1]).height == 50


def _leaves(settings: Settings, partition: str) -> list[tuple[str, str]]:
    """(leaf, bound) of a night's partition, by leaf name."""
    with connect(settings) as conn:
        return conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
            (f"riskflow.{partition}",)).fetchall()


@pytest.mark.parametrize("split_rows", [0, 100])
def test_day_partition_is_presorted_with_its_key_and_no_staging_defaults(
        initialised: Settings, split_rows: int) -> None:
    frame = score_frame(300, seed=30).with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("Zed")).otherwise(pl.col("account_id"))
        .alias("account_id"))
    report = _write(_split(initialised, split_rows), frame, version="v9")
    leaves = _leaves(initialised, report.partition)
    expected = sorted(frame["account_id"].to_list(), key=str.encode)
    physical: list[str] = []
    with connect(initialised) as conn:
        indexes = conn.execute("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'riskflow'"
                               " AND tablename LIKE %s", (f"{report.partition}%",)).fetchall()
        for leaf, _ in leaves:
            physical += [r[0] for r in conn.execute(sql.SQL("SELECT account_id FROM {} ORDER BY ctid").format(
                sql.Identifier("riskflow", leaf))).fetchall()]
        defaults = conn.execute("SELECT count(*) FROM pg_attrdef WHERE adrelid = ANY(%s::regclass[])",
                                ([f"riskflow.{n}" for n, _ in leaves] + [f"riskflow.{report.partition}"],)
                                ).fetchone()[0]
        collation = conn.execute(
            "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
            " WHERE a.attrelid = %s::regclass AND a.attname = 'account_id'",
            (f"riskflow.{report.partition}",)).fetchone()[0]
        constants = conn.execute(sql.SQL(
            "SELECT DISTINCT score_date, model_version, run_id, scored_at IS NOT NULL, scored_at FROM {}")
            .format(sql.Identifier("riskflow", report.partition))).fetchall()
    assert report.leaves == len(leaves) == (2 if split_rows else 1)
    if split_rows:
        assert leaves == [(f"{report.partition}_0", f"FOR VALUES FROM (MINVALUE) TO ('{expected[150]}')"),
                          (f"{report.partition}_1", f"FOR VALUES FROM ('{expected[150]}') TO (MAXVALUE)")]
    else:
        assert leaves == [(f"{report.partition}_0", "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")]
    assert sorted(table for table, _ in indexes) == sorted([report.partition] + [n for n, _ in leaves])
    assert all("UNIQUE INDEX" in d and d.endswith("USING btree (account_id, score_date)") for _, d in indexes)
    assert defaults == 0 and collation == "C"
    assert physical == expected and physical[0] == "Zed"
    assert [c[:4] for c in constants] == [(DAY, "v9", report.run_id, True)], "one set of constants per night"


@pytest.mark.parametrize(("split_rows", "repeated"), [(0, 5), (2, 5), (2, 19)])
def test_duplicate_account_fails_the_run_and_leaves_no_stage(
        initialised: Settings, split_rows: int, repeated: int) -> None:
    """With two leaves, a repeated account inside one leaf breaks its key, one on the split its range."""
    frame = score_frame(40, seed=31).sort("account_id")
    failing = uuid.uuid4()
    account = frame["account_id"][repeated]
    with pytest.raises(ConfigError, match=rf"account_id '{account}' appears more than once"):
        _write(_split(initialised, split_rows), pl.concat([frame, frame.slice(repeated, 1)]), run_id=failing)
    assert not _staging(initialised)
    assert [(r[0], r[1]) for r in _runs(initialised)] == [(failing, "failed")]


def test_retention_skips_a_partition_a_reader_holds_and_drops_it_later(initialised: Settings) -> None:
    """A reader's lock outlasting lock_timeout keeps the expired date (and its audit) until a later run."""
    old = DAY - dt.timedelta(days=10)
    part = "risk_scores_p20260620"
    _write(initialised, score_frame(20, seed=1), day=old)
    _write(initialised, score_frame(20, seed=2), day=old)
    quick = initialised.model_copy(update={"lock_timeout_ms": 20})
    with connect(initialised) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("riskflow", part))).fetchone()[0] == 20
        report = drop_expired_partitions(quick, DAY, retention_days=7)
        assert (report.dropped, report.skipped, report.skipped_days) == ([], [part], [old])
        assert report.audit_rows == 0 and part in _relnames(initialised)
        with connect(initialised) as conn:
            assert conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit").fetchone()[0] == 20
        reader.rollback()
    later = drop_expired_partitions(quick, DAY, retention_days=7)
    assert (later.dropped, later.skipped, later.audit_rows) == ([part], [], 20)
    assert part not in _relnames(initialised)
    assert scores_for_date(initialised, old).height == 0


def _nights(settings: Settings) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute("SELECT score_table, score_date, model_version, run_id, row_count"
                            " FROM riskflow.scored_nights ORDER BY 1, 2, 3").fetchall()


def test_scored_nights_follow_writes_reruns_failures_retention_and_upgrades(
        initialised: Settings, demo_spec: FeatureSpec) -> None:
    old = DAY - dt.timedelta(days=10)
    _write(initialised, score_frame(20, seed=1), day=old, version="v1")
    rerun = _write(initialised, score_frame(25, seed=2), day=old, version="v2")
    night = _write(initialised, score_frame(30, seed=3), version="v1")
    c1 = _write(initialised, score_frame(40, seed=4), version="c1", table="risk_scores_shadow")
    c2 = _write(initialised, score_frame(50, seed=5), version="c2", table="risk_scores_shadow")
    shadow = "risk_scores_shadow"
    listed = [("risk_scores", old, "v2", rerun.run_id, 25), ("risk_scores", DAY, "v1", night.run_id, 30),
              (shadow, DAY, "c1", c1.run_id, 40), (shadow, DAY, "c2", c2.run_id, 50)]
    assert _nights(initialised) == listed
    with pytest.raises(InjectedFailure):
        _write(initialised, score_frame(35, seed=6), version="v3", fail_after="swap")
    assert _nights(initialised) == listed
    assert drop_expired_partitions(initialised, DAY, retention_days=7).dropped == ["risk_scores_p20260620"]
    assert _nights(initialised) == listed[1:]
    with connect(initialised) as conn:
        conn.execute("DELETE FROM riskflow.scored_nights")
        conn.commit()
    init_database(initialised, demo_spec, demo_source=True)
    assert _nights(initialised) == listed[1:], "db init lists the nights of databases older than the table"


def test_a_night_splits_only_where_account_ids_sort_by_their_bytes(initialised: Settings) -> None:
    """A table from before account ids were COLLATE "C", in a database of another collation, keeps
    one leaf: the halves' bounds are byte-ordered and would not hold their rows there. This box's
    Postgres has no collation of another order (no ICU, no other locale), so the rule is tested on
    its own and the lookup on a COLLATE "C" table."""
    assert byte_ordered("C", "c") and byte_ordered("POSIX", "c") and byte_ordered("C.UTF-8", "c")
    assert byte_ordered(None, "b")
    assert not byte_ordered("en_US.UTF-8", "c") and not byte_ordered(None, "i")
    report = _write(_split(initialised, 100), score_frame(300, seed=50))
    assert report.leaves == 2, "this database's account ids are COLLATE \"C\""


def test_rewrites_of_different_nights_at_once_never_deadlock(initialised: Settings) -> None:
    """Backfill rewrites several scored nights in parallel: each swap detaches its old night, and no
    swap may hold a lock on the parent while it waits for that (Postgres would cancel one of them as
    a deadlock and the write would retry)."""
    settings = _split(initialised, 500)
    days = [DAY - dt.timedelta(days=k) for k in range(4)]
    for k, day in enumerate(days):
        _write(settings, score_frame(3000, seed=60 + k), day=day)
    reports: list = []
    errors: list[BaseException] = []

    def rewrite(k: int, day: dt.date) -> None:
        try:
            reports.append(_write(settings, score_frame(3000, seed=70 + k), day=day))
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    for _ in range(3):
        reports.clear()
        threads = [threading.Thread(target=rewrite, args=(k, day)) for k, day in enumerate(days)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert sorted(r.attempts for r in reports) == [1, 1, 1, 1], "a swap waited out a deadlock"
