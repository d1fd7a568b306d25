"""Writer connections kept between score writes: reused when healthy, never after a failure, never
holding a lock, closed when idle too long, and never shared with a forked child."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import multiprocessing.connection
import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from writeback_helpers import score_frame

from riskmodel import writer_pool
from riskmodel.db import connect, lock_key
from riskmodel.settings import Settings
from riskmodel.writeback import InjectedFailure, date_lock_name, write_scores

DAY = dt.date(2026, 6, 30)


@pytest.fixture()
def tagged(initialised: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose connections carry this test's own application name, nights split at 100 rows."""
    monkeypatch.setenv("PGAPPNAME", f"pool-{uuid.uuid4().hex[:8]}")
    yield initialised.model_copy(update={"write_split_rows": 100})
    writer_pool.close_idle()


def _write(settings: Settings, day: dt.date = DAY, **kw: object) -> None:
    write_scores(settings, score_date=day, scores=score_frame(300, seed=day.day), model_version="v1",
                 model_sha256="f" * 64, run_id=uuid.uuid4(), watermark=None, **kw)


def _idle_backends(settings: Settings, expected: int | None = None) -> set[int]:
    """Backend pids of this test's idle sessions, once `expected` of them remain (closing is async)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True,
                         application_name="pool-observer") as conn:
        while True:
            pids = {r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'idle'",
                (os.environ["PGAPPNAME"],)).fetchall()}
            if expected is None or len(pids) == expected or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)


def test_a_second_write_reuses_the_first_writes_backends(tagged: Settings) -> None:
    _write(tagged)
    first = _idle_backends(tagged, expected=2)
    assert len(first) == 2
    _write(tagged, DAY + dt.timedelta(days=1))
    _write(tagged)
    assert _idle_backends(tagged, expected=2) == first


def test_keeping_off_closes_the_connections_after_each_write(tagged: Settings) -> None:
    _write(tagged.model_copy(update={"writer_idle_seconds": 0}))
    assert _idle_backends(tagged, expected=0) == set()


def test_a_failed_write_closes_its_connections_and_the_next_write_opens_new_ones(tagged: Settings) -> None:
    _write(tagged)
    kept = _idle_backends(tagged, expected=2)
    with pytest.raises(InjectedFailure):
        _write(tagged, fail_after="staging")
    assert _idle_backends(tagged, expected=0) == set()
    _write(tagged)
    after = _idle_backends(tagged, expected=2)
    assert len(after) == 2 and not after & kept


def test_kept_connections_hold_no_lock_on_the_date(tagged: Settings) -> None:
    _write(tagged)
    assert len(_idle_backends(tagged, expected=2)) == 2
    key = lock_key(date_lock_name(tagged.db_schema, "risk_scores", DAY))
    with connect(tagged) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        other.execute("SELECT pg_advisory_unlock(%s)", (key,))


def test_idle_connections_close_after_the_idle_time(tagged: Settings) -> None:
    _write(tagged.model_copy(update={"writer_idle_seconds": 0.3}))
    assert len(_idle_backends(tagged, expected=2)) == 2
    time.sleep(0.6)
    assert _idle_backends(tagged, expected=0) == set()


def test_a_dead_kept_connection_is_replaced(tagged: Settings) -> None:
    _write(tagged)
    kept = _idle_backends(tagged, expected=2)
    with psycopg.connect(tagged.database_url.get_secret_value(), autocommit=True) as admin:
        for pid in kept:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    _write(tagged, DAY + dt.timedelta(days=1))
    after = _idle_backends(tagged, expected=2)
    assert len(after) == 2 and not after & kept


def _child_backend(settings: Settings, answer: multiprocessing.connection.Connection) -> None:
    """In a forked child: the backend pid of the writer connection the child gets."""
    conn = writer_pool.take(settings)
    answer.send(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    writer_pool.give_back(settings, conn)


def test_a_forked_child_never_uses_its_parents_connections(tagged: Settings) -> None:
    _write(tagged)
    kept = _idle_backends(tagged, expected=2)
    context = multiprocessing.get_context("fork")
    theirs, ours = context.Pipe(duplex=False)
    child = context.Process(target=_child_backend, args=(tagged, ours))
    child.start()
    child_backend = theirs.recv() if theirs.poll(30) else None
    child.join(30)
    assert child.exitcode == 0 and child_backend is not None and child_backend not in kept
    _write(tagged, DAY + dt.timedelta(days=3))
    assert _idle_backends(tagged, expected=2) == kept
