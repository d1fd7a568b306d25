"""Fault injection for the reliability tests and the `faults` bench: named pause points, backend kills.

Production code calls `pause_point(name)` at a few named places (the write-back after staging and
inside the swap). It does nothing unless the environment variable RISKFLOW_FAULT_PAUSE names that
point; then it writes the file named by RISKFLOW_FAULT_MARK (so a supervisor knows the process is
there) and sleeps, so that a SIGKILL lands at exactly that point. The other helpers act from the
outside: they terminate a database backend while it waits on a lock held on purpose, or give a
lake path that nobody, root included, can write to.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from riskmodel.db import connect
from riskmodel.errors import RiskflowError
from riskmodel.settings import Settings

log = logging.getLogger("riskflow.faults")

PAUSE_ENV = "RISKFLOW_FAULT_PAUSE"
MARK_ENV = "RISKFLOW_FAULT_MARK"
PAUSE_SECONDS_ENV = "RISKFLOW_FAULT_PAUSE_SECONDS"
PAUSE_POINTS = ("writeback.after_staging", "writeback.in_swap")


class FaultSetupError(RiskflowError):
    """A fault could not be staged as asked (the target never reached the point, or the path is writable)."""


def pause_point(name: str) -> None:
    """Sleep at point `name` when RISKFLOW_FAULT_PAUSE names it (a supervisor kills us there); else no-op."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    if name not in PAUSE_POINTS:
        raise FaultSetupError(f"{PAUSE_ENV}={name!r} is not one of {PAUSE_POINTS}")
    seconds = float(os.environ.get(PAUSE_SECONDS_ENV, "120"))
    log.warning("fault injection: pausing %.0fs at %s (pid %d)", seconds, name, os.getpid())
    mark = os.environ.get(MARK_ENV)
    if mark:
        Path(mark).write_text(f"{name} {os.getpid()}\n")
    time.sleep(seconds)


@dataclass(frozen=True)
class KilledRun:
    """A child process stopped by SIGKILL at a pause point: its exit code and the seconds it ran."""

    point: str
    returncode: int
    seconds: float


def kill_at_pause_point(argv: Sequence[str], point: str, mark: Path, *, env: Mapping[str, str] | None = None,
                        cwd: Path | None = None, timeout_s: float = 120.0) -> KilledRun:
    """Run `argv` paused at `point`, SIGKILL it as soon as it is there, and reap it."""
    mark.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {}), PAUSE_ENV: point, MARK_ENV: str(mark)}
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), env=child_env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while not mark.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-1500:] if proc.stderr else ""
                raise FaultSetupError(f"child exited with {proc.returncode} before reaching {point}: {err}")
            if time.monotonic() - started > timeout_s:
                raise FaultSetupError(f"child did not reach pause point {point} within {timeout_s}s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return KilledRun(point, proc.returncode, time.monotonic() - started)


@dataclass
class BackendKill:
    """What `terminate_waiting_backend` did: the pids it terminated and the query each was running."""

    terminated: list[int] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    error: BaseException | None = None


def _watch(settings: Settings, hold: sql.Composable, hold_params: Sequence[object], query_like: str,
           held: threading.Event, stop: threading.Event, report: BackendKill, timeout_s: float) -> None:
    """Thread body: hold the lock, terminate the first backend that waits on a lock in a matching query."""
    try:
        with (connect(settings, admin=True) as holder,
              connect(settings, admin=True, autocommit=True) as watcher):
            holder.execute(hold, hold_params)
            holder_pid = holder.info.backend_pid
            held.set()
            deadline = time.monotonic() + timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                row = watcher.execute(
                    "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid NOT IN (pg_backend_pid(), %s) AND wait_event_type = 'Lock'"
                    " AND query ILIKE %s ORDER BY backend_start LIMIT 1",
                    (holder_pid, query_like)).fetchone()
                if row is not None:
                    watcher.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    report.terminated.append(int(row[0]))
                    report.queries.append(str(row[1])[:200])
                    log.warning("fault injection: terminated backend %s running %.80s", row[0], row[1])
                    break
                time.sleep(0.01)
            holder.rollback()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the report
        report.error = exc
        held.set()


@contextmanager
def terminate_waiting_backend(settings: Settings, hold: sql.Composable, query_like: str, *,
                              hold_params: Sequence[object] = (), timeout_s: float = 120.0
                              ) -> Iterator[BackendKill]:
    """While the block runs, hold a lock (`hold`, an admin statement left uncommitted) and terminate
    the first other backend that queues behind it running a query ILIKE `query_like`; then release."""
    report = BackendKill()
    held, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_watch, name="fault-backend-killer", daemon=True,
                              args=(settings, hold, hold_params, query_like, held, stop, report, timeout_s))
    thread.start()
    held.wait(30)
    if report.error is not None:
        raise FaultSetupError(f"could not hold the lock for the fault: {report.error}") from report.error
    try:
        yield report
    finally:
        stop.set()
        thread.join(60)


def unwritable_lake(base: Path) -> Path:
    """A lake path under `base` that cannot be created or written, even by root; verified before returning.

    As root, permission bits do not stop writes, so the path goes under a regular file (no folder can
    exist there); otherwise it is a folder with mode 0o500."""
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        blocker = base / "lake-is-a-file"
        blocker.write_text("a regular file: nothing can be created beneath it\n")
        lake = blocker / "lake"
    else:
        lake = base / "read-only-lake"
        lake.mkdir(exist_ok=True)
        lake.chmod(0o500)
    probe = lake / "transactions" / ".probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("x")
    except OSError:
        return lake
    probe.unlink()
    raise FaultSetupError(f"{lake} is writable after all; cannot stage an unwritable lake here")


def corrupt_file(path: Path, *, n_bytes: int = 8) -> bytes:
    """Overwrite the last `n_bytes` of `path` with their bitwise complement; returns the original bytes."""
    original = path.read_bytes()
    if len(original) < n_bytes:
        raise FaultSetupError(f"{path} has fewer than {n_bytes} bytes to corrupt")
    tail = bytes(b ^ 0xFF for b in original[-n_bytes:])
    path.write_bytes(original[:-n_bytes] + tail)
    return original


def wait_for_idle_database(settings: Settings, timeout_s: float = 30.0) -> None:
    """Wait until no other backend of this database is inside a transaction (a killed client's is undone)."""
    deadline = time.monotonic() + timeout_s
    with connect(settings, admin=True, autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL").fetchone()[0]
            if not busy:
                return
            time.sleep(0.05)
    raise FaultSetupError(f"other backends still inside a transaction after {timeout_s}s")
