"""The Dask task runner: chosen by settings, runs tasks in worker processes, builds and scores like threads.

Sequence shards fan out per shard on Dask (each worker reads only its shard's accounts) and stay one
task on threads; shard subsets built apart equal one whole build, array for array."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from prefect import task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.runners import SettingsTaskRunner, scoring_placement, task_runner_for
from riskmodel import registry
from riskmodel.batch import SequenceBatch
from riskmodel.db import connect
from riskmodel.errors import ConfigError
from riskmodel.features import FeatureState
from riskmodel.sequences import build_scoring_shards, load_prepared
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from tests.flow_helpers import champion_bank

END = date(2026, 6, 30)


@task
def where_am_i(i: int) -> tuple[int, int]:
    """The process this task ran in, with its input (to tell Dask worker processes apart)."""
    return i, os.getpid()


def test_settings_pick_the_runner() -> None:
    assert isinstance(task_runner_for(Settings()), ThreadPoolTaskRunner)
    remote = task_runner_for(Settings(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = task_runner_for(Settings(task_runner="dask", dask_workers=3))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["processes"] is True


def test_gpu_placement_annotates_only_dask_with_gpus() -> None:
    import dask

    with scoring_placement(Settings(task_runner="dask", dask_gpus_per_task=1)):
        assert dask.get_annotations() == {"resources": {"GPU": 1.0}}
    with scoring_placement(Settings(task_runner="thread", dask_gpus_per_task=1)):
        assert dask.get_annotations() == {}


def test_runner_refuses_use_before_start() -> None:
    runner = SettingsTaskRunner()
    with pytest.raises(RuntimeError, match="before its flow run started"):
        runner.submit(where_am_i, {"i": 1})
    assert runner.duplicate() == runner and runner.duplicate() is not runner


def test_dask_setting_runs_tasks_in_two_worker_processes(monkeypatch: pytest.MonkeyPatch,
                                                         prefect_harness: None) -> None:
    monkeypatch.setenv("RISKFLOW_TASK_RUNNER", "dask")
    monkeypatch.setenv("RISKFLOW_DASK_WORKERS", "2")
    with SettingsTaskRunner() as runner:
        assert isinstance(runner.inner, DaskTaskRunner)
        results = [f.result() for f in runner.map(where_am_i, {"i": list(range(8))})]
        workers = runner.client.scheduler_info()["workers"]
    assert [i for i, _ in results] == list(range(8))
    assert os.getpid() not in {pid for _, pid in results}
    assert len(workers) == 2


@pytest.fixture(scope="module")
def bank(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A small seeded bank with an (untrained) champion, in its own database."""
    yield from champion_bank(pg_server_url, tmp_path_factory.mktemp("dask-home"), "rf_dask", accounts=400,
                             seed=5, n_shards=4)


ARRAYS = ("account_id", "num", "cat", "time", "lengths", "static_num", "static_cat", "agg", "cutoff")


def _assert_same_batches(expected: list[Path], actual: list[Path]) -> None:
    """Same shard file names, and every array (and the column names) equal bit for bit."""
    assert [p.name for p in actual] == [p.name for p in expected]
    for want_path, got_path in zip(expected, actual, strict=True):
        want, got = SequenceBatch.load(want_path), SequenceBatch.load(got_path)
        for name in ARRAYS:
            a, b = getattr(want, name), getattr(got, name)
            assert a.dtype == b.dtype and a.shape == b.shape, (got_path.name, name)
            assert a.tobytes() == b.tobytes(), (got_path.name, name)
        assert want.label is None and got.label is None and got.names == want.names


def test_shards_built_one_by_one_equal_one_whole_build(bank: Settings, tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    state = FeatureState.from_dict(registry.load_champion(bank).manifest["features"])
    whole = build_scoring_shards(bank, spec, state, END, tmp_path / "whole")
    assert len(whole) == bank.n_shards == 4
    apart_dir = tmp_path / "apart"
    apart = [p for k in (2, 0, 3, 1) for p in build_scoring_shards(bank, spec, state, END, apart_dir, [k])]
    _assert_same_batches(whole, sorted(apart))
    assert sorted(apart_dir.iterdir()) == sorted(apart)

    again = build_scoring_shards(bank, spec, state, END, apart_dir, shards=[3, 1, 3])
    _assert_same_batches([whole[1], whole[3]], again)
    assert sorted(apart_dir.iterdir()) == sorted(apart)

    full = load_prepared(bank, spec, state, END, END)
    one = load_prepared(bank, spec, state, END, END, [1])
    assert one.frame.height == int(full.bounds[2] - full.bounds[1]) < full.frame.height // 2
    assert np.array_equal(np.diff(one.bounds), np.diff(full.bounds) * (np.arange(4) == 1))
    assert set(one.static["_acc"].to_list()) < set(full.static["_acc"].to_list())
    assert set(one.frame["_acc"].unique().to_list()) <= set(one.static["_acc"].to_list())

    with pytest.raises(ConfigError, match=r"shards: \[4\] outside 0..3"):
        build_scoring_shards(bank, spec, state, END, tmp_path / "bad", shards=[0, 4])


def test_a_worker_with_another_shard_count_refuses_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.data import scoring_shards_task

    monkeypatch.setenv("RISKFLOW_N_SHARDS", "4")
    with pytest.raises(ConfigError, match="n_shards: the flow splits accounts into 8 shards"):
        scoring_shards_task.fn("v", "0" * 64, END, "/nonexistent", shards=[5], n_shards=8)


def _scores(settings: Settings) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(
            "SELECT account_id, risk_score, risk_band, reason_codes, model_version "
            "FROM riskflow.risk_scores WHERE score_date = %s ORDER BY account_id", (END,)).fetchall()


def test_dask_runner_scores_exactly_like_threads(bank: Settings, monkeypatch: pytest.MonkeyPatch,
                                                 prefect_harness: None) -> None:
    from flows.nightly_scoring import nightly_scoring
    from flows.params import ScoreParams

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", bank.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(bank.home))
    monkeypatch.setenv("RISKFLOW_N_SHARDS", "4")
    params = ScoreParams(score_date=END, shadow=False, device="cpu")
    threads = nightly_scoring(params)
    by_threads = _scores(bank)
    monkeypatch.setenv("RISKFLOW_TASK_RUNNER", "dask")
    monkeypatch.setenv("RISKFLOW_DASK_WORKERS", "2")
    dask = nightly_scoring(params.model_copy(update={"extract": False}))
    by_dask = _scores(bank)
    assert threads["accounts_scored"] == len(by_threads) > 100
    assert by_dask == by_threads
    assert dask["checksum"] == threads["checksum"]
    assert dask["replaced_rows"] == len(by_threads)
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert threads["sequence_builds"] == [{"shards": None, "worker": here}]
    assert [b["shards"] for b in dask["sequence_builds"]] == [[0], [1], [2], [3]]
    workers = {b["worker"] for b in dask["sequence_builds"]}
    assert here not in workers and len(workers) == 2
