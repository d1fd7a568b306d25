"""End to end on a real Prefect server: `prefect deploy` of deploy/prefect.yaml, a process worker
polling the pool, a nightly-scoring run triggered through the API with a custom score date (as the
UI's Custom run does), and its scores in `risk_scores`.

The server, the CLI calls and the worker are subprocesses with their own PREFECT_HOME and
PREFECT_API_URL; this process talks to the server only inside `temporary_settings`, so the session's
ephemeral test harness is left alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from riskmodel.db import connect
from riskmodel.settings import Settings
from tests.flow_helpers import champion_bank

REPO = Path(__file__).resolve().parent.parent
POOL = "riskflow-process"
SCORE_DATE = date(2026, 6, 29)
END = date(2026, 6, 30)
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = pytest.mark.slow


@dataclass
class PrefectServer:
    """A Prefect server subprocess and the environment its clients need."""

    url: str
    env: dict[str, str]
    logs: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_env(home: Path, api_url: str | None) -> dict[str, str]:
    """This process's environment with Prefect pointed at its own home (and server, if given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RISKFLOW_"))}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONPATH": str(REPO)})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A subprocess in its own process group (so teardown reaches its children), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a subprocess started by `_start` and everything in its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port with a SQLite database of its own."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    logs = home / "server.log"
    server = _start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port,
                     "--no-scheduler", "--no-ui", "--analytics-off"], _prefect_env(home, None), logs)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"prefect server exited:\n{_tail(logs)}"
            assert time.monotonic() < deadline, f"prefect server not healthy in 120 s:\n{_tail(logs)}"
            time.sleep(0.5)
        yield PrefectServer(url=url, env=_prefect_env(home, url), logs=home)
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def bank(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A small seeded bank with an (untrained) champion in its own database, lake extracted."""
    yield from champion_bank(pg_server_url, tmp_path_factory.mktemp("deploy-home"), "rf_deploy", accounts=300,
                             seed=11, n_shards=2)


def _run_cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, (f"prefect {' '.join(args)} failed:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The work pool and the three deployments of deploy/prefect.yaml, created by the Prefect CLI."""
    env = {**prefect_server.env, "RISKFLOW_CHECKOUT": str(REPO)}
    _run_cli(["work-pool", "create", POOL, "--type", "process"], env)
    out = _run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"], env)
    assert "nightly-scoring/nightly-scoring" in out, out[-3000:]
    return prefect_server


@pytest.fixture()
def worker(deployed: PrefectServer, bank: Settings) -> Iterator[Path]:
    """`prefect worker start` polling the pool, with the bank's RISKFLOW_* environment."""
    env = {**deployed.env, "RISKFLOW_DATABASE_URL": bank.database_url.get_secret_value(),
           "RISKFLOW_HOME": str(bank.home), "RISKFLOW_N_SHARDS": str(bank.n_shards),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    log = deployed.logs / "worker.log"
    proc = _start([*PREFECT, "worker", "start", "--pool", POOL, "--limit", "2"], env, log)
    try:
        yield log
    finally:
        _stop(proc)


def test_deployments_carry_schedules_limits_and_typed_forms(deployed: PrefectServer) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: deployed.url}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-scoring/nightly-scoring")
        retrain = client.read_deployment_by_name("retrain/weekly-retrain")
        backfill = client.read_deployment_by_name("backfill/backfill")
    assert nightly.work_pool_name == POOL
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", True)]
    assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
    assert [s.schedule.cron for s in retrain.schedules] == ["0 4 * * 0"]
    assert not backfill.schedules
    score = nightly.parameter_openapi_schema["definitions"]["ScoreParams"]["properties"]
    assert score["device"]["anyOf"][0]["enum"] == ["auto", "cpu", "cuda"]
    assert score["score_date"]["description"].startswith("Business date D")
    assert nightly.enforce_parameter_schema
    train = retrain.parameter_openapi_schema["definitions"]["RetrainParams"]["properties"]
    assert train["promote_policy"]["enum"] == ["if_better", "always", "never"]
    assert train["epochs"]["minimum"] == 1
    assert backfill.parameter_openapi_schema["required"] == ["params"]
    for deployment in (nightly, retrain, backfill):
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                          {"directory": str(REPO)}}]


def test_ui_style_run_of_nightly_scoring_scores_the_date(deployed: PrefectServer, bank: Settings,
                                                         worker: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    params = {"params": {"score_date": SCORE_DATE.isoformat(), "shadow": False, "device": "cpu"}}
    with temporary_settings({PREFECT_API_URL: deployed.url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly-scoring/nightly-scoring")
        run = client.create_flow_run_from_deployment(deployment.id, parameters=params)
        deadline = time.monotonic() + 150
        while True:
            run = client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                break
            assert time.monotonic() < deadline, f"flow run still {run.state}:\n{_tail(worker)}"
            time.sleep(1)
    assert run.state.is_completed(), f"{run.state}:\n{_tail(worker)}"
    assert run.parameters == params
    with connect(bank) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT account_id), min(run_id::text), "
                            "max(run_id::text) FROM riskflow.risk_scores WHERE score_date = %s",
                            (SCORE_DATE,)).fetchone()
        others = conn.execute("SELECT count(*) FROM riskflow.risk_scores WHERE score_date <> %s",
                              (SCORE_DATE,)).fetchone()[0]
        runs = conn.execute("SELECT status, row_count FROM riskflow.pipeline_runs WHERE run_id = %s",
                            (run.id,)).fetchall()
    assert rows[0] == rows[1] > 100
    assert rows[2] == rows[3] == str(run.id)
    assert others == 0
    assert runs == [("succeeded", rows[0])]
