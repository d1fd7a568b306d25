"""The fault matrix (issue #8): a dropped database connection in the extract, SIGKILL inside the
write-back, a corrupted model, GPU out-of-memory, an unwritable lake. Each must end in a correct
state with nothing committed lost, and the next normal run must succeed. The same functions make
the rows of `riskflow bench --stage faults`."""

from __future__ import annotations

import re
import sys
import uuid
from datetime import date
from pathlib import Path

import polars as pl
import psycopg
import pytest
from prefect.states import State

from bench import faults as fb
from riskmodel import faults, lake, registry
from riskmodel.db import connect
from riskmodel.errors import DatabaseError, RiskflowError, TransientDatabaseError
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec
from riskmodel.storage import lake_key
from riskmodel.writeback import scores_for_date, stored_checksum, write_scores
from tests.datapath_helpers import END, TXN_COLUMNS, execute, insert, seed_tiny_bank
from tests.flow_helpers import conninfo_with
from tests.writeback_helpers import score_frame

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def ctx(initialised: Settings, demo_spec: FeatureSpec, tmp_path: Path) -> fb.Ctx:
    """A tiny seeded bank with its own faults lake and reference lake."""
    seed_tiny_bank(initialised)
    settings = initialised.model_copy(update={"lake_url": str(tmp_path / "lake")})
    return fb.Ctx(settings, demo_spec, END, tmp_path, "test")


def _watermark(settings: Settings) -> tuple:
    with connect(settings) as conn:
        return conn.execute("SELECT watermark, last_date FROM riskflow.extract_watermarks WHERE lake = %s",
                            (lake_key(settings),)).fetchone()


@pytest.mark.parametrize("point", ["read", "commit"])
def test_extract_task_retries_when_its_connection_is_terminated(
        ctx: fb.Ctx, point: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in fb.child_env(ctx.settings).items():
        monkeypatch.setenv(key, value)
    fb.prepare_lake(ctx)
    result = fb.extract_with_drop(ctx, point)
    assert result["terminated"] == 1, "the fault did not fire"
    assert result["completed"], result
    assert result["task_runs"] == [2], "the extract task should have failed once and been retried once"
    assert result["temporaries"] == []
    lake.extract(ctx.reference, ctx.spec, END)
    assert fb.lake_files(ctx.settings) == fb.lake_files(ctx.reference)
    assert _watermark(ctx.settings) == _watermark(ctx.reference)
    assert _watermark(ctx.settings)[1] == END


def _extract_once(ctx: fb.Ctx, monkeypatch: pytest.MonkeyPatch, **env: str) -> State:
    """The extract task run in a flow of its own with ctx's settings (`env` over them): its final state."""
    from prefect import flow

    from tasks.data import extract_task

    @flow(name="extract-task")
    def extract_flow(run_date: date) -> dict[str, object]:
        return extract_task(run_date)

    for key, value in {**fb.child_env(ctx.settings), **env}.items():
        monkeypatch.setenv(key, value)
    return extract_flow(END, return_state=True)


def _failed_on_first_run(state: State, match: str) -> None:
    """The flow failed with a DatabaseError matching `match` that is not transient, after one task run."""
    assert state.is_failed()
    assert fb.task_run_counts(state.state_details.flow_run_id) == [1]
    with pytest.raises(DatabaseError, match=match) as failure:
        state.result()
    assert not isinstance(failure.value, TransientDatabaseError)


def test_extract_task_fails_at_once_when_its_query_is_wrong(
        ctx: fb.Ctx, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing source column is no connection problem: one task run, no retries, the column named."""
    fb.prepare_lake(ctx)
    execute(ctx.settings, "ALTER TABLE bank.transactions RENAME COLUMN mcc TO mcc_gone")
    try:
        state = _extract_once(ctx, monkeypatch)
    finally:
        execute(ctx.settings, "ALTER TABLE bank.transactions RENAME COLUMN mcc_gone TO mcc")
    _failed_on_first_run(state, "mcc")


def _connect_error(url: str, driver: str) -> DatabaseError:
    from riskmodel.pgread import adbc_connection

    settings = Settings(database_url=url, run_as_writer=False)
    opener = connect if driver == "psycopg" else adbc_connection
    with pytest.raises(DatabaseError) as failure, opener(settings):
        pass
    return failure.value


@pytest.mark.parametrize("driver", ["psycopg", "adbc"])
@pytest.mark.parametrize("change", [{"user": "nobody_here"}, {"dbname": "no_such_db"}])
def test_a_refused_login_is_not_transient_and_an_unreachable_server_is(
        pg_server_url: str, driver: str, change: dict[str, str]) -> None:
    """The server's answer to a bad role or database will not change on a retry; a refused port may."""
    refused = _connect_error(conninfo_with(pg_server_url, password="s3cret-pw", **change), driver)
    assert not isinstance(refused, TransientDatabaseError), refused
    assert next(iter(change.values())) in str(refused)
    assert "s3cret-pw" not in str(refused)
    unreachable = _connect_error(conninfo_with(pg_server_url, host="127.0.0.1", port="1"), driver)
    assert isinstance(unreachable, TransientDatabaseError), unreachable


def test_extract_task_is_not_retried_when_the_login_is_refused(
        ctx: fb.Ctx, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong database name fails the task on its first run, naming the database."""
    url = conninfo_with(ctx.settings.database_url.get_secret_value(), dbname="no_such_db")
    _failed_on_first_run(_extract_once(ctx, monkeypatch, RISKFLOW_DATABASE_URL=url), "no_such_db")


def _stage_tables(settings: Settings) -> list[str]:
    with connect(settings) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'riskflow' AND tablename ~ '_stage[0-9]*$'")]


@pytest.mark.parametrize("point", faults.PAUSE_POINTS)
def test_sigkill_inside_the_write_back_keeps_the_night_and_the_next_run_completes(
        initialised: Settings, tmp_path: Path, point: str) -> None:
    good = write_scores(initialised, score_date=END, scores=score_frame(300, seed=2), model_version="v1",
                        model_sha256="a" * 64, run_id=uuid.uuid4(), watermark=None)
    before = scores_for_date(initialised, END)
    replacement = score_frame(400, seed=3)
    parquet = tmp_path / "replacement.parquet"
    replacement.write_parquet(parquet)
    killed = faults.kill_at_pause_point(
        [sys.executable, "-m", "bench.faults", "write", END.isoformat(), str(parquet), "v2"], point,
        tmp_path / "mark", env=fb.child_env(initialised), cwd=REPO)
    assert killed.returncode == -9
    faults.wait_for_idle_database(initialised)
    assert scores_for_date(initialised, END).equals(before)
    assert stored_checksum(initialised, END) == good.checksum
    staged = ["risk_scores_p20260630_stage", "risk_scores_p20260630_stage0"]
    assert sorted(_stage_tables(initialised)) == staged, "the kill was not after staging"
    with connect(initialised) as conn:
        runs = dict(conn.execute("SELECT model_version, status FROM riskflow.pipeline_runs").fetchall())
        assert conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit").fetchone()[0] == 0
    assert runs == {"v1": "succeeded", "v2": "running"}, "the killed run cannot have recorded an outcome"

    again = write_scores(initialised, score_date=END, scores=replacement, model_version="v2",
                         model_sha256="b" * 64, run_id=uuid.uuid4(), watermark=None)
    assert again.rows == 400 and again.replaced_rows == 300
    assert stored_checksum(initialised, END) == again.checksum
    assert _stage_tables(initialised) == []
    with connect(initialised) as conn:
        statuses = conn.execute("SELECT status, details->>'error' FROM riskflow.pipeline_runs"
                                " WHERE run_id <> %s ORDER BY started_at", (again.run_id,)).fetchall()
    assert [s for s, _ in statuses] == ["succeeded", "failed"], "the next run marks the killed one"
    assert f"found by run {again.run_id}" in statuses[1][1]


def test_killed_child_that_never_reaches_the_point_is_reported(initialised: Settings, tmp_path: Path) -> None:
    with pytest.raises(faults.FaultSetupError, match="before reaching writeback.in_swap"):
        faults.kill_at_pause_point([sys.executable, "-c", "raise SystemExit(3)"], "writeback.in_swap",
                                   tmp_path / "mark")


def test_settings_copy_points_at_the_new_lake(ctx: fb.Ctx) -> None:
    assert ctx.settings.lake.endswith("/lake")
    assert ctx.reference.lake.endswith("/reference-lake")
    assert ctx.settings.model_copy(update={"timezone": "Asia/Tokyo"}).tz.key == "Asia/Tokyo"


def test_unwritable_lake_is_really_unwritable(tmp_path: Path) -> None:
    target = faults.unwritable_lake(tmp_path)
    with pytest.raises(OSError):
        (target / "transactions").mkdir(parents=True)


def test_unwritable_lake_is_refused_before_any_database_write(ctx: fb.Ctx, tmp_path: Path) -> None:
    insert(ctx.settings, "transactions", TXN_COLUMNS,
           [(990001, 1, END, float("nan"), "5411", "pos", "DE", "m1")])
    bad = ctx.settings.model_copy(update={"lake_url": str(faults.unwritable_lake(tmp_path / "ro"))})
    writes = fb._db_writes(ctx)
    with pytest.raises(RiskflowError, match=re.escape(bad.lake)):
        lake.extract(bad, ctx.spec, END)
    assert fb._db_writes(ctx) == writes, "a database write happened before the lake was found unwritable"
    report = lake.extract(ctx.settings, ctx.spec, END)
    assert report.quarantined["bad_amount"] == 1 and report.rows_written > 0


@pytest.fixture()
def scored(ctx: fb.Ctx) -> fb.Ctx:
    """The tiny bank extracted, an (untrained) champion registered, and the night scored and committed."""
    from bench.nightly import ensure_champion

    lake.extract(ctx.settings, ctx.spec, END)
    lake.extract(ctx.reference, ctx.spec, END)
    ensure_champion(ctx.settings, ctx.workdir)
    fb.score_night(ctx)
    return ctx


def test_matrix_rows_for_model_oom_and_writeback_errors_survive(scored: fb.Ctx) -> None:
    rows = [fb.corrupt_model(scored, registry.WEIGHTS), fb.corrupt_model(scored, registry.MANIFEST),
            fb.gpu_oom(scored, above=2), fb.error_during_writeback(scored, "swap")]
    for row in rows:
        assert row["stage"] == "faults" and isinstance(row["survived"], bool)
        assert row["survived"] and row["rows_lost"] == 0, row
        assert row["rows"] > 0
    assert "sha256" in rows[0]["detail"] and "sha256" in rows[1]["detail"]
    assert "OOM back-off" in rows[2]["detail"] and not rows[2]["detail"].startswith("0 ")


def test_rows_lost_counts_scores_lake_and_registry_losses(scored: fb.Ctx) -> None:
    before = fb.snapshot(scored)
    assert before.scores.height > 5 and before.lake_rows and before.registry
    victim = sorted(before.lake_rows)[0]
    with connect(scored.settings, admin=True) as conn:
        conn.execute("DELETE FROM riskflow.risk_scores WHERE score_date = %s AND account_id IN "
                     "(SELECT account_id FROM riskflow.risk_scores WHERE score_date = %s "
                     "ORDER BY account_id LIMIT 5)", (END, END))
        conn.execute("UPDATE riskflow.model_versions SET status = 'retired'")
    part = Path(scored.settings.lake) / victim
    pl.read_parquet(part).head(1).write_parquet(part)
    after = fb.snapshot(scored)
    assert fb.rows_lost(before, after) == 5 + before.lake_rows[victim] + len(before.registry)
    assert fb.rows_lost(before, before) == 0


def test_extract_drop_fault_setup_fails_loudly_when_the_lock_cannot_be_held(ctx: fb.Ctx) -> None:
    missing = psycopg.sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        psycopg.sql.Identifier("bank", "no_such_table"))
    with pytest.raises(faults.FaultSetupError, match="no_such_table"):
        with faults.terminate_waiting_backend(ctx.settings, missing, "%"):
            pass
