"""Concurrency and load: nightly runs for three dates and a forced backfill that overlaps one of
them, all at once in separate `riskflow` processes, end with exactly one score per active account
and date; a retrain holding its registry lock mid-promotion does not block nightly scoring."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import date, timedelta

import pytest

from flows.nightly_scoring import nightly_scoring
from flows.params import ScoreParams
from riskmodel import registry
from riskmodel.db import connect, lock_key
from riskmodel.settings import Settings
from tests.flow_helpers import (
    END,
    active_accounts,
    child_env,
    create_database,
    drop_database,
    flow_env,
    riskflow_command,
    seeded_bank,
    train_champion,
)

pytestmark = pytest.mark.slow

NIGHTLY = [END, END - timedelta(days=1), END - timedelta(days=2)]
BACKFILL = [END - timedelta(days=4), END - timedelta(days=3), NIGHTLY[2]]
TWICE = NIGHTLY[2]


@pytest.fixture(scope="module")
def bank(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory,
         prefect_harness: None) -> Iterator[tuple[Settings, dict]]:
    """A small seeded bank with a champion from the retrain flow; the environment points at it."""
    url = create_database(pg_server_url, "rf_conc")
    settings = seeded_bank(url, tmp_path_factory.mktemp("conc-home"), accounts=400, days=130, seed=9)
    patch = pytest.MonkeyPatch()
    for key, value in flow_env(settings).items():
        patch.setenv(key, value)
    try:
        yield settings, train_champion()
    finally:
        patch.undo()
        drop_database(pg_server_url, url)


def _date_rows(settings: Settings, day: date) -> tuple[int, int, list[str]]:
    with connect(settings) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT account_id) FROM riskflow.risk_scores WHERE score_date = %s",
            (day,)).fetchone()
        runs = conn.execute("SELECT DISTINCT run_id::text FROM riskflow.risk_scores WHERE score_date = %s",
                            (day,)).fetchall()
    return count, distinct, [r[0] for r in runs]


def _runs(settings: Settings, day: date) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(
            "SELECT run_id::text, status, row_count, model_version, finished_at FROM riskflow.pipeline_runs "
            "WHERE flow = 'nightly_scoring' AND score_date = %s ORDER BY finished_at", (day,)).fetchall()


def test_nightly_runs_backfill_and_a_duplicate_date_at_once(bank: tuple[Settings, dict]) -> None:
    settings, champion = bank
    env = child_env(settings)
    commands = [riskflow_command("score", "--date", d.isoformat(), "--no-shadow") for d in NIGHTLY]
    commands.append(riskflow_command("backfill", "--force", "--max-parallel", "3",
                                     "--start", BACKFILL[0].isoformat(),
                                     "--end", BACKFILL[-1].isoformat()))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cmd in commands]
    for cmd, proc in zip(commands, procs, strict=True):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (cmd, err.decode()[-3000:])

    for day in sorted({*NIGHTLY, *BACKFILL}):
        count, distinct, run_ids = _date_rows(settings, day)
        assert count == distinct == active_accounts(settings, day), day
        assert len(run_ids) == 1, (day, run_ids)
        runs = _runs(settings, day)
        assert all(r[1] == "succeeded" and r[2] == count and r[3] == champion["version"] for r in runs), runs
        assert runs[-1][0] == run_ids[0], "the scores on disk come from the last run to finish"
        assert len(runs) == (2 if day == TWICE else 1), (day, runs)
    with connect(settings) as conn:
        left = conn.execute("SELECT count(*) FROM riskflow.pipeline_runs WHERE status <> 'succeeded'"
                            ).fetchone()[0]
        audited = conn.execute("SELECT count(*), count(DISTINCT replaced_by_run) "
                               "FROM riskflow.risk_scores_audit WHERE score_date = %s", (TWICE,)).fetchone()
    assert left == 0
    assert audited == (_date_rows(settings, TWICE)[0], 1), "the duplicate run replaced the first once"


def test_retrain_holding_the_registry_does_not_block_nightly(bank: tuple[Settings, dict]) -> None:
    settings, champion = bank
    day = END - timedelta(days=8)
    with connect(settings) as held:
        held.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(f"registry:{settings.db_schema}"),))
        held.execute("UPDATE riskflow.model_versions SET status = 'retired', retired_at = now() "
                     "WHERE status = 'champion'")
        done: dict[str, dict] = {}
        night = threading.Thread(
            target=lambda: done.update(summary=nightly_scoring(ScoreParams(score_date=day, shadow=False))))
        night.start()
        night.join(timeout=300)
        blocked = night.is_alive()
        held.rollback()
        night.join()
    assert not blocked, "the nightly waited for the registry lock the retrain held"
    summary = done["summary"]
    assert summary["model_version"] == champion["version"]
    assert summary["accounts_scored"] == active_accounts(settings, day)
    assert registry.champion_version(settings) == champion["version"]
