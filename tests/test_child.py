"""run_in_child: results, progress and errors come back from a spawned process; two run at once; a stop
file ends a child early, and the retrain's `await_fits` uses it to stop a fit whose sibling failed."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from riskmodel.child import ChildStopped, run_in_child
from riskmodel.errors import ConfigError


def count_up(n: int, on_progress) -> dict:
    for k in range(n):
        on_progress(k, {"pid": os.getpid()})
    return {"pid": os.getpid(), "n": n}


def refuse(on_progress) -> None:
    on_progress("about to fail")
    raise ConfigError("training shard x.npz: has no label array")


class TwoPartError(Exception):
    def __init__(self, row: int, column: str) -> None:
        super().__init__(f"row {row}, column {column}")


def refuse_oddly(on_progress) -> None:
    raise TwoPartError(7, "amount")


def die(on_progress) -> None:
    os._exit(3)


def meet(mine: str, other: str, on_progress) -> str:
    """Leave `mine`, then wait (up to 60 s) for `other`: only two processes running at once both return."""
    Path(mine).write_text("here")
    deadline = time.monotonic() + 60
    while not Path(other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never appeared: the two calls did not run at the same time")
        time.sleep(0.05)
    return mine


def sit(pid_file: str, seconds: float, on_progress) -> str:
    """Write this process's pid, then wait `seconds` (far longer than any test should take) and finish."""
    Path(pid_file).write_text(str(os.getpid()))
    on_progress("started")
    time.sleep(seconds)
    return "finished"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_result_and_every_progress_report_come_back_in_order() -> None:
    seen = []
    result = run_in_child(count_up, {"n": 5}, lambda *args: seen.append(args))
    assert result["n"] == 5 and result["pid"] != os.getpid()
    assert [k for k, _ in seen] == [0, 1, 2, 3, 4]
    assert {info["pid"] for _, info in seen} == {result["pid"]}


def test_the_childs_error_is_raised_here_with_its_type_and_message() -> None:
    seen = []
    with pytest.raises(ConfigError, match="has no label array") as raised:
        run_in_child(refuse, {}, lambda *args: seen.append(args))
    assert seen == [("about to fail",)]
    assert "in refuse" in "".join(raised.value.__notes__)


def test_an_error_that_cannot_travel_comes_back_as_its_traceback() -> None:
    with pytest.raises(RuntimeError, match=r"TwoPartError: row 7, column amount"):
        run_in_child(refuse_oddly, {})


def test_a_child_that_dies_without_a_word_is_an_error_naming_its_exit_code() -> None:
    with pytest.raises(RuntimeError, match="die: its process exited with code 3"):
        run_in_child(die, {})


def test_two_children_run_at_the_same_time(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run_in_child, meet, {"mine": a, "other": b})
        second = pool.submit(run_in_child, meet, {"mine": b, "other": a})
        assert (first.result(), second.result()) == (a, b)


def test_a_stop_file_kills_the_child_and_names_the_reason(tmp_path: Path) -> None:
    stop, pid_file = tmp_path / "STOP", tmp_path / "pid"

    def write_stop(*_: object) -> None:
        stop.write_text("the shuffled_order fit of this retrain failed")

    with pytest.raises(ChildStopped, match="sit: stopped before it finished: the shuffled_order fit"):
        run_in_child(sit, {"pid_file": str(pid_file), "seconds": 60}, write_stop, stop_file=stop)
    assert not _alive(int(pid_file.read_text()))


def fail_now() -> None:
    raise ConfigError("shuffled_order: training shard x.npz has no label array")


def test_await_fits_stops_the_sibling_of_a_failed_fit_and_raises_the_first_error(
        tmp_path: Path, prefect_harness: None) -> None:
    from prefect import flow, task

    from flows.retrain import await_fits

    stop, pid_file = tmp_path / "models" / "STOP", tmp_path / "pid"

    @task
    def long_fit() -> str:
        return run_in_child(sit, {"pid_file": str(pid_file), "seconds": 120}, stop_file=stop)

    @task
    def failing_fit() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pid_file} never appeared: the long fit's child did not start")
            time.sleep(0.05)
        fail_now()

    @flow
    def two_fits() -> dict[str, str]:
        fits = {"challenger": long_fit.submit(), "shuffled_order": failing_fit.submit()}
        try:
            await_fits(fits, stop, poll_s=0.2)
            raised = "nothing"
        except ConfigError as exc:
            raised = str(exc)
        ends = {name: type(future.result(raise_on_failure=False)).__name__ for name, future in fits.items()}
        return {"raised": raised, **ends}

    assert two_fits() == {"raised": "shuffled_order: training shard x.npz has no label array",
                          "challenger": "ChildStopped", "shuffled_order": "ConfigError"}
    assert stop.read_text() == "the shuffled_order fit of this retrain failed"
    assert not _alive(int(pid_file.read_text()))
