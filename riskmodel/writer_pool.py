"""Writer connections kept open between score writes in one process, so a backfill, or a nightly run
that also writes a shadow challenger, reuses warm server backends instead of starting two a night.

A connection is kept only after a write that ended cleanly, idle, with its advisory locks released;
it is checked alive before reuse and closed after `writer_idle_seconds` unused. Connections are
never shared across processes: a forked child starts with none of its parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from riskmodel.db import connect, database_url
from riskmodel.settings import Settings

MAX_IDLE = 2  # per process, URL and role: a write uses at most two connections


@dataclass(frozen=True)
class _Idle:
    """A kept connection and the monotonic time after which it is closed instead of reused."""

    conn: psycopg.Connection
    until: float


_lock = threading.Lock()
_idle: dict[tuple[int, str, str], list[_Idle]] = {}
_reapers: dict[int, tuple[threading.Timer, float]] = {}


def _key(settings: Settings) -> tuple[int, str, str]:
    role = settings.writer_role if settings.run_as_writer else ""
    return os.getpid(), database_url(settings), role


def _close(conn: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


def _alive(conn: psycopg.Connection) -> bool:
    """Whether a kept connection still answers (the server may have restarted since)."""
    try:
        conn.execute("SELECT 1")
        conn.commit()
    except psycopg.Error:
        _close(conn)
        return False
    return True


def take(settings: Settings) -> psycopg.Connection:
    """A live kept writer connection of this process, or a new one (`riskmodel.db.connect`)."""
    key = _key(settings)
    while True:
        with _lock:
            entries = _idle.get(key)
            entry = entries.pop() if entries else None
        if entry is None:
            return connect(settings)
        if entry.until > time.monotonic() and _alive(entry.conn):
            return entry.conn
        _close(entry.conn)


def give_back(settings: Settings, conn: psycopg.Connection) -> None:
    """Keep `conn` for the next write when it is healthy and idle (its advisory locks released);
    close it otherwise, or when keeping is off or `MAX_IDLE` are kept already."""
    keep = (settings.writer_idle_seconds > 0 and not conn.closed and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
    if keep:
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
            conn.commit()
        except psycopg.Error:
            keep = False
    if keep:
        with _lock:
            entries = _idle.setdefault(_key(settings), [])
            if len(entries) < MAX_IDLE:
                entries.append(_Idle(conn, time.monotonic() + settings.writer_idle_seconds))
                _schedule_reaper(settings.writer_idle_seconds)
                return
    _close(conn)


def release(settings: Settings, conn: psycopg.Connection, *, clean: bool) -> None:
    """After a write: `give_back` a connection whose write ended cleanly, close one whose write failed."""
    if clean:
        give_back(settings, conn)
    else:
        _close(conn)


@contextmanager
def writer_connection(settings: Settings) -> Iterator[psycopg.Connection]:
    """`take` a connection for the body, then `release` it, clean when the body did not raise."""
    conn = take(settings)
    try:
        yield conn
    except BaseException:
        release(settings, conn, clean=False)
        raise
    release(settings, conn, clean=True)


def close_idle() -> int:
    """Close every kept connection of this process now; how many were closed."""
    pid = os.getpid()
    with _lock:
        closing = [e for key, entries in _idle.items() if key[0] == pid for e in entries]
        for key in [k for k in _idle if k[0] == pid]:
            del _idle[key]
    for entry in closing:
        _close(entry.conn)
    return len(closing)


def _schedule_reaper(delay: float) -> None:
    """Have this process's timer close expired connections in `delay` seconds, or sooner if it is
    due sooner already (call with the lock held)."""
    pid, due = os.getpid(), time.monotonic() + delay
    pending = _reapers.get(pid)
    if pending is not None:
        if pending[1] <= due:
            return
        pending[0].cancel()
    timer = threading.Timer(delay, _reap)
    timer.daemon = True
    _reapers[pid] = (timer, due)
    timer.start()


def _reap() -> None:
    """Close this process's expired connections; run again when the next one expires."""
    pid, now = os.getpid(), time.monotonic()
    with _lock:
        _reapers.pop(pid, None)
        expired: list[_Idle] = []
        for key, entries in _idle.items():
            if key[0] == pid:
                expired += [e for e in entries if e.until <= now]
                entries[:] = [e for e in entries if e.until > now]
        left = [e.until for key, entries in _idle.items() if key[0] == pid for e in entries]
        if left:
            _schedule_reaper(max(min(left) - now, 0.01))
    for entry in expired:
        _close(entry.conn)


def _after_fork_in_child() -> None:
    """A fresh lock for a forked child: another thread of the parent may have held the old one."""
    global _lock
    _lock = threading.Lock()


atexit.register(close_idle)
os.register_at_fork(after_in_child=_after_fork_in_child)
