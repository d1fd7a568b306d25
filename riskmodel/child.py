"""Run a function in a fresh spawned process, passing its progress reports and its error back.

The retrain trains the challenger and the order ablation at the same time, one process (and
one core) each: threads would share torch's global random generator, so neither run would be
reproducible from its seed. When one of them fails, the other is stopped through a stop file
rather than left to spend its whole training budget on a retrain that has already failed.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ProgressSink = Callable[..., None]
STOP_POLL_S = 0.5


class ChildStopped(RuntimeError):
    """The parent stopped the child before it finished, because its stop file appeared."""


def _main(fn: Callable[..., Any], kwargs: dict[str, Any], conn: Connection) -> None:
    """Child side: call `fn(**kwargs, on_progress=...)` and send ("progress", args) messages, then
    ("done", result) or ("error", exception)."""
    try:
        result = fn(**kwargs, on_progress=lambda *args: conn.send(("progress", args)))
        conn.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        where = traceback.format_exc()
        try:
            exc.add_note(f"raised in the child process:\n{where}")
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception that does not round-trip goes back as text
            exc = RuntimeError(where)
        conn.send(("error", exc))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., Any], kwargs: dict[str, Any],
                 on_progress: ProgressSink | None = None, stop_file: Path | None = None) -> Any:
    """`fn(**kwargs, on_progress=...)` in a spawned process: its result, or its exception raised here.

    `fn` must be importable by module path and take an `on_progress` keyword; each call of it in
    the child calls `on_progress` here with the same arguments. A child that dies without a word
    (killed, out of memory) raises RuntimeError with its exit code. When `stop_file` appears, the
    child is killed and `ChildStopped` raised with the file's text (the reason) in its message.
    """
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_main, args=(fn, kwargs, send), daemon=True, name=f"riskflow-{fn.__name__}")
    proc.start()
    send.close()
    try:
        while True:
            if stop_file is not None and not receive.poll(STOP_POLL_S):
                if stop_file.exists():
                    proc.kill()
                    raise ChildStopped(f"{fn.__name__}: stopped before it finished: "
                                       f"{stop_file.read_text().strip() or stop_file}")
                continue
            try:
                kind, payload = receive.recv()
            except EOFError:
                proc.join()
                raise RuntimeError(f"{fn.__name__}: its process exited with code {proc.exitcode} "
                                   "before it finished") from None
            if kind == "progress":
                if on_progress is not None:
                    on_progress(*payload)
            elif kind == "done":
                return payload
            else:
                raise payload
    finally:
        receive.close()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
