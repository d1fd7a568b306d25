"""The Dask task runner: chosen by settings, runs tasks in worker processes, scores like threads."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from prefect import task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from psycopg import sql

from flows.runners import SettingsTaskRunner, scoring_placement, task_runner_for
from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from riskmodel.synthetic import seed_bank

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
    from bench.nightly import ensure_champion

    name = f"rf_dask_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(pg_server_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    home = tmp_path_factory.mktemp("dask-home")
    settings = Settings(database_url=url, home=home, n_shards=4)
    init_database(settings, load_spec(DEMO_SPEC), demo_source=True)
    seed_bank(settings, accounts=400, days=60, end_date=END, seed=5)
    ensure_champion(settings, Path(home) / "prep")
    yield settings
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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
