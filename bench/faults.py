"""Bench stage `faults`: the fault matrix of issue #8, one row per fault, each checked rather than assumed.

Every fault runs against committed state: the lake extracted up to the day before, the night's
scores written by a normal run, the registry with its champion. A row "survived" when the fault
ended in a correct state (completed correctly after retries, or refused with the expected clear
error) AND the committed scores, lake and registry compare equal to before AND a following normal
run succeeds. `rows_lost` counts committed score rows, lake rows and registry rows that are gone or
changed after the fault. Database drops during the extract run the real Prefect extract task (its
retry policy) in a small flow, in a child process with its own ephemeral Prefect server; kills
during the write-back SIGKILL a child process paused at a named point (`riskmodel.faults`).

`python -m bench.faults write DATE PARQUET VERSION` is that child: it writes the scores in PARQUET
for DATE with the settings from the environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from psycopg import sql

from riskmodel import faults, registry, writeback
from riskmodel.db import connect
from riskmodel.errors import ModelIntegrityError, RiskflowError
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import FeatureSpec, load_spec
from riskmodel.storage import lake_key

REPO = Path(__file__).resolve().parent.parent
TABLE_COLUMNS = ["fault", "survived", "rows_lost", "rows", "seconds", "detail"]
OOM_ABOVE = 96
SCORE_KEYS = ["account_id", "risk_score", "risk_band", "model_version", "reasons"]


@dataclass
class Ctx:
    """Where the matrix runs: settings (with the faults lake), spec, the night, a scratch folder."""

    settings: Settings
    spec: FeatureSpec
    score_date: date
    workdir: Path
    scale: str = "S"

    @property
    def reference(self) -> Settings:
        """The same database with a second lake that only undisturbed extracts touch."""
        reference = self.settings.model_copy(update={"lake_url": str(self.workdir / "reference-lake")})
        if reference.lake == self.settings.lake:
            raise faults.FaultSetupError(f"reference lake {reference.lake} is the lake under test")
        return reference


@dataclass(frozen=True)
class Snapshot:
    """Committed state a fault must not lose: the night's scores, every lake file, the registry rows."""

    scores: pl.DataFrame
    lake: dict[str, str]
    lake_rows: dict[str, int]
    registry: frozenset[tuple[str, str, str]]


def lake_files(settings: Settings) -> dict[str, str]:
    """sha256 of every file under the lake (hidden temporaries included), by relative path."""
    base = Path(settings.lake)
    if not base.is_dir():
        return {}
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


def snapshot(ctx: Ctx) -> Snapshot:
    """Read the committed state now."""
    scores = writeback.scores_for_date(ctx.settings, ctx.score_date).select(
        "account_id", "risk_score", "risk_band", "model_version",
        pl.col("reason_codes").list.join("\x1f").alias("reasons"))
    files = lake_files(ctx.settings)
    rows = {name: pl.scan_parquet(Path(ctx.settings.lake) / name).select(pl.len()).collect().item()
            for name in files if name.endswith(".parquet") and "/." not in f"/{name}"}
    models = frozenset((m["version"], m["status"], m["sha256"]) for m in registry.list_models(ctx.settings))
    return Snapshot(scores, files, rows, models)


def rows_lost(before: Snapshot, after: Snapshot, expected_lake: dict[str, str] | None = None) -> int:
    """Committed score and registry rows of `before` missing or changed in `after`, plus every row of a
    lake partition that is missing or whose bytes changed (a conservative count: the whole partition).

    Where the run under test rewrote the lake on purpose, pass `expected_lake` (the files of an
    undisturbed run): a partition is then intact when it equals that."""
    lost = before.scores.join(after.scores, on=SCORE_KEYS, how="anti", nulls_equal=True).height
    lost += len(before.registry - after.registry)
    want = {**before.lake, **(expected_lake or {})}
    for name, rows in before.lake_rows.items():
        if after.lake.get(name) != want[name]:
            lost += rows
    return lost


def score_night(ctx: Ctx, *, oom_hook: Callable[[int], None] | None = None, write: bool = True
                ) -> tuple[writeback.WriteReport | None, np.ndarray, int]:
    """A normal scoring run without Prefect: champion, scoring shards, probabilities, bands, write-back.

    Returns the write report (None when `write` is false), the probabilities, and OOM back-offs."""
    from riskmodel.batch import SequenceBatch
    from riskmodel.features import FeatureState
    from riskmodel.score import ScoreReport, score_batch
    from riskmodel.sequences import build_scoring_shards

    model = registry.load_champion(ctx.settings)
    state = FeatureState.from_dict(model.manifest["features"])
    out = ctx.workdir / f"shards-{uuid.uuid4().hex[:8]}"
    try:
        paths = build_scoring_shards(ctx.settings, ctx.spec, state, ctx.score_date, out)
        frames, probs_all, retries = [], [], 0
        for path in paths:
            batch = SequenceBatch.load(path)
            report = ScoreReport(device="cpu", precision="fp32", batch_size=512)
            probs = score_batch(model, batch, device="cpu", batch_size=512, oom_hook=oom_hook, report=report)
            retries += report.oom_retries
            probs_all.append(probs)
            frames.append(pl.DataFrame({
                "account_id": batch.account_id.astype(str), "risk_score": probs.astype(np.float64),
                "risk_band": model.band(probs).astype(str), "reason_codes": [[] for _ in range(len(batch))],
            }, schema_overrides={"reason_codes": pl.List(pl.String)}))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    probs = np.concatenate(probs_all) if probs_all else np.empty(0)
    if not write:
        return None, probs, retries
    written = writeback.write_scores(ctx.settings, score_date=ctx.score_date, scores=pl.concat(frames),
                                     model_version=model.version, model_sha256=model.sha256,
                                     run_id=uuid.uuid4(), watermark=None)
    return written, probs, retries


def _row(ctx: Ctx, fault: str, *, survived: bool, lost: int, rows: int, seconds: float, detail: str
         ) -> dict[str, Any]:
    return {"stage": "faults", "scale": ctx.scale, "fault": fault, "survived": bool(survived and lost == 0),
            "rows_lost": int(lost), "rows": int(rows), "seconds": round(seconds, 2), "detail": detail,
            "rows_per_s": None, "peak_rss_mb": None, "output_mb": None, "baseline": None,
            "baseline_ratio": None, "limit": None, "limit_ratio": None}


def as_written(scores: pl.DataFrame) -> pl.DataFrame:
    """A snapshot's scores with `reason_codes` as a list again (as `write_scores` takes them)."""
    codes = pl.col("reasons").str.split("\x1f").list.eval(pl.element().filter(pl.element() != ""))
    return scores.with_columns(codes.alias("reason_codes")).drop("reasons")


def _stage_tables(ctx: Ctx) -> list[str]:
    """Staging tables of the score tables left in riskflow's schema."""
    with connect(ctx.settings) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (ctx.settings.db_schema, "%\\_stage")).fetchall()]


def _db_writes(ctx: Ctx) -> tuple[int, ...]:
    """Row counts of the bookkeeping tables an extract or a run writes to (to prove nothing was written)."""
    names = ("extract_watermarks", "quarantine", "pipeline_runs", "model_versions")
    with connect(ctx.settings) as conn:
        return tuple(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(ctx.settings.db_schema, n))).fetchone()[0] for n in names)


@contextmanager
def _timed() -> Iterator[list[float]]:
    """Seconds the block took, in the yielded one-element list once it ends."""
    box = [time.perf_counter()]
    yield box
    box[0] = time.perf_counter() - box[0]


# ---- write-back ----------------------------------------------------------------------------------

def child_write(score_date: date, parquet: Path, version: str) -> None:
    """The write-back child: write `parquet`'s scores for `score_date`, settings from the environment."""
    from riskmodel.settings import load_settings

    writeback.write_scores(load_settings(), score_date=score_date, scores=pl.read_parquet(parquet),
                           model_version=version, model_sha256="0" * 64, run_id=uuid.uuid4(), watermark=None)


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a child riskflow process that uses `settings`' database, home and lake."""
    return {"RISKFLOW_DATABASE_URL": settings.database_url.get_secret_value(),
            "RISKFLOW_HOME": str(settings.home), "RISKFLOW_LAKE_URL": settings.lake,
            "PYTHONPATH": str(REPO)}


def kill_during_writeback(ctx: Ctx, point: str) -> dict[str, Any]:
    """SIGKILL a child while it is inside the write-back at `point`; the night's scores must be intact,
    and the same write must then succeed normally (stray staging tables do not get in the way)."""
    before = snapshot(ctx)
    new = as_written(before.scores).select("account_id", pl.col("risk_score") * 0.5, "risk_band",
                                           "reason_codes")
    parquet = ctx.workdir / "killed-write.parquet"
    new.write_parquet(parquet)
    with _timed() as took:
        argv = [sys.executable, "-m", "bench.faults", "write", ctx.score_date.isoformat(), str(parquet),
                "v-killed"]
        killed = faults.kill_at_pause_point(
            argv, point, ctx.workdir / "pause.mark", env=child_env(ctx.settings), cwd=REPO)
        faults.wait_for_idle_database(ctx.settings)
        after = snapshot(ctx)
        stale = _stage_tables(ctx)
        again = writeback.write_scores(ctx.settings, score_date=ctx.score_date, scores=new,
                                       model_version="v-next", model_sha256="0" * 64, run_id=uuid.uuid4(),
                                       watermark=None)
        next_ok = (writeback.stored_checksum(ctx.settings, ctx.score_date) == again.checksum
                   and again.replaced_rows == before.scores.height and not _stage_tables(ctx))
        restored = score_night(ctx)[0]
    lost = rows_lost(before, after)
    survived = killed.returncode == -9 and next_ok and restored is not None
    return _row(ctx, f"kill-writeback-{point.split('.')[-1]}", survived=survived, lost=lost,
                rows=before.scores.height, seconds=took[0],
                detail=f"SIGKILL at {point}: scores intact={lost == 0}, stray staging tables "
                       f"{stale or 'none'}, next write ok={next_ok}")


def error_during_writeback(ctx: Ctx, where: str) -> dict[str, Any]:
    """An exception raised inside the write-back (`fail_after`): same guarantees as a kill."""
    before = snapshot(ctx)
    new = before.scores.head(max(before.scores.height // 2, 1)).select(
        "account_id", "risk_score", "risk_band", pl.lit([], pl.List(pl.String)).alias("reason_codes"))
    with _timed() as took:
        try:
            writeback.write_scores(ctx.settings, score_date=ctx.score_date, scores=new,
                                   model_version="v-fail", model_sha256="0" * 64, run_id=uuid.uuid4(),
                                   watermark=None, fail_after=where)  # type: ignore[arg-type]
            refused = False
        except writeback.InjectedFailure:
            refused = True
        after = snapshot(ctx)
        clean = not _stage_tables(ctx)
        next_run = score_night(ctx)[0]
    lost = rows_lost(before, after)
    return _row(ctx, f"writeback-error-{where}", survived=refused and clean and next_run is not None,
                lost=lost, rows=before.scores.height, seconds=took[0],
                detail=f"InjectedFailure after {where}: raised={refused}, staging dropped={clean}, "
                       f"next run wrote {next_run.rows if next_run else 0}")


# ---- model artifact -------------------------------------------------------------------------------

def corrupt_model(ctx: Ctx, file_name: str) -> dict[str, Any]:
    """Corrupt one file of the champion's artifact: loading must refuse it (sha256), nothing changes,
    and once the file is restored the next run scores exactly as before."""
    before = snapshot(ctx)
    champion = registry.champion_version(ctx.settings)
    path = Path(registry.get_model(ctx.settings, champion)["artifact_path"]) / file_name
    with _timed() as took:
        original = faults.corrupt_file(path)
        error = ""
        try:
            score_night(ctx)
            refused = False
        except ModelIntegrityError as exc:
            refused = "sha256" in str(exc) and "refusing" in str(exc)
            error = f"{type(exc).__name__}: sha256 mismatch" if refused else str(exc)[:90]
        finally:
            path.write_bytes(original)
        after = snapshot(ctx)
        same_champion = registry.champion_version(ctx.settings) == champion
        written = score_night(ctx)[0]
        repeat = written is not None and written.checksum == writeback.scores_checksum(
            ctx.score_date, as_written(before.scores))
    lost = rows_lost(before, after)
    part = "weights" if file_name == registry.WEIGHTS else "manifest"
    return _row(ctx, f"model-{part}-corrupt",
                survived=refused and same_champion and repeat, lost=lost, rows=before.scores.height,
                seconds=took[0],
                detail=f"refused={refused} ({error}); champion kept={same_champion}; rerun same={repeat}")


def gpu_oom(ctx: Ctx, above: int = OOM_ABOVE) -> dict[str, Any]:
    """Inject CUDA out-of-memory above `above` rows a batch: scoring backs off to smaller batches and
    gives the same probabilities (to 1e-6: other batch shapes round differently); then a normal run."""
    import torch

    before = snapshot(ctx)

    def oom_above(size: int) -> None:
        if size > above:
            raise torch.cuda.OutOfMemoryError(f"injected: batch of {size} > {above}")

    with _timed() as took:
        _, plain, _ = score_night(ctx, write=False)
        _, backed_off, retries = score_night(ctx, oom_hook=oom_above, write=False)
        diff = float(np.max(np.abs(plain - backed_off))) if plain.size else 0.0
        after = snapshot(ctx)
        written = score_night(ctx)[0]
        repeat = written is not None and written.checksum == writeback.scores_checksum(
            ctx.score_date, as_written(before.scores))
    same = plain.shape == backed_off.shape and diff <= 1e-6
    lost = rows_lost(before, after)
    return _row(ctx, "gpu-oom", survived=retries > 0 and same and repeat, lost=lost,
                rows=int(plain.size), seconds=took[0],
                detail=f"{retries} OOM back-off(s) to <= {above} rows; max |diff| {diff:.1e}; "
                       f"next run same={repeat}")


# ---- lake ---------------------------------------------------------------------------------------

def unwritable_lake(ctx: Ctx) -> dict[str, Any]:
    """Extract into a lake nobody can write: a clear error naming the lake, before any database write."""
    from riskmodel.lake import extract

    before = snapshot(ctx)
    target = faults.unwritable_lake(ctx.workdir / "unwritable")
    bad = ctx.settings.model_copy(update={"lake_url": str(target)})
    if bad.lake != str(target):
        raise faults.FaultSetupError(f"settings copy points at {bad.lake}, not the unwritable {target}")
    writes = _db_writes(ctx)
    with _timed() as took:
        try:
            extract(bad, ctx.spec, ctx.score_date)
            outcome, clear = "no error", False
        except RiskflowError as exc:
            outcome, clear = f"{type(exc).__name__}: {str(exc)[:140]}", bad.lake in str(exc)
        except OSError as exc:
            outcome, clear = f"unexpected {type(exc).__name__} (not a RiskflowError)", False
        untouched = _db_writes(ctx) == writes
        after = snapshot(ctx)
        extract(ctx.settings, ctx.spec, ctx.score_date)
        next_ok = lake_files(ctx.settings) == lake_files(ctx.reference)
    lost = rows_lost(before, after)
    return _row(ctx, "lake-unwritable", survived=clear and untouched and next_ok, lost=lost,
                rows=sum(before.lake_rows.values()), seconds=took[0],
                detail=f"{outcome}; database untouched={untouched}; next extract ok={next_ok}")


# ---- database drop during extract (Prefect task with retries, in a child process) ----------------

def drop_holds(ctx: Ctx) -> dict[str, tuple[sql.Composable, str, tuple[object, ...]]]:
    """Kill points: (statement holding a lock the extract queues behind, its query pattern, params)."""
    tx = ctx.spec.transactions
    marks = sql.Identifier(ctx.settings.db_schema, "extract_watermarks")
    source = sql.Identifier(tx.db_schema, tx.table)
    return {
        "read": (sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source),
                 f"%{source.as_string(None)}%", ()),
        "commit": (sql.SQL("INSERT INTO {} (lake, source, watermark, last_date) VALUES (%s, %s, now(), %s)"
                           " ON CONFLICT (lake, source) DO UPDATE SET updated_at = now()").format(marks),
                   "%extract_watermarks%", (lake_key(ctx.settings), tx.qualified, ctx.score_date)),
    }


def extract_with_drop(ctx: Ctx, point: str) -> dict[str, Any]:
    """Run the extract task in a flow while its connection is terminated at `point`: returns what happened."""
    from prefect import flow

    from riskmodel.lake import lake_root
    from tasks.data import extract_task

    @flow(name="faults-extract")
    def extract_flow(run_date: date) -> dict[str, object]:
        return extract_task(run_date)

    hold, pattern, params = drop_holds(ctx)[point]
    with faults.terminate_waiting_backend(ctx.settings, hold, pattern, hold_params=params) as kill:
        state = extract_flow(ctx.score_date, return_state=True)
    runs = task_run_counts(state.state_details.flow_run_id)
    tmp = [str(p) for p in lake_root(ctx.settings).rglob("*")
           if p.is_file() and not (p.name == "part-0.parquet" and p.parent.name.startswith("txn_date="))]
    return {"completed": state.is_completed(), "terminated": len(kill.terminated), "task_runs": runs,
            "temporaries": tmp, "state": str(state.type.value)}


def task_run_counts(flow_run_id: uuid.UUID) -> list[int]:
    """How many times each task of a flow run ran (2 = one retry)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.run_count for r in runs]


def _extract_drops_child(ctx: Ctx) -> list[dict[str, Any]]:
    """In a fresh process (own environment, own ephemeral Prefect server): both kill points, each starting
    from both lakes at the day before; the faults lake must end equal to the undisturbed reference lake."""
    from riskmodel.lake import extract

    os.environ.update({k: v for k, v in child_env(ctx.settings).items() if k != "PYTHONPATH"})
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    rows = []
    for point in ("read", "commit"):
        prepare_lake(ctx)
        before = snapshot(ctx)
        with _timed() as took:
            res = extract_with_drop(ctx, point)
            after = snapshot(ctx)
            extract(ctx.reference, ctx.spec, ctx.score_date)
            expected = lake_files(ctx.reference)
            identical = after.lake == expected
            nxt = extract(ctx.settings, ctx.spec, ctx.score_date)
            next_ok = lake_files(ctx.settings) == expected and nxt.rows_written > 0
        lost = rows_lost(before, after, expected_lake=expected)
        ok = (res["completed"] and res["terminated"] == 1 and res["task_runs"] == [2]
              and not res["temporaries"] and identical and next_ok)
        rows.append(_row(ctx, f"db-drop-extract-{point}", survived=ok, lost=lost,
                         rows=sum(after.lake_rows.values()), seconds=took[0],
                         detail=f"backend terminated {res['terminated']}x at the {point}; task runs "
                                f"{res['task_runs']}; flow {res['state']}; lake identical to an undisturbed "
                                f"extract={identical}; next extract ok={next_ok}"))
    return rows


def prepare_lake(ctx: Ctx) -> None:
    """Both lakes reset and extracted up to the day before the night (the faults lake's committed
    state); the night's own rows wait for the extract under test."""
    from riskmodel.lake import extract, reset_lake

    for s in (ctx.settings, ctx.reference):
        reset_lake(s)
        extract(s, ctx.spec, ctx.score_date - timedelta(days=1))


# ---- the matrix ----------------------------------------------------------------------------------

def setup(scale: str, workdir: Path) -> Ctx:
    """The S bank, a faults lake extracted to the night, a champion, and the night's scores committed."""
    from bench.common import END_DATE, seeded_bank
    from bench.nightly import ensure_champion
    from riskmodel.lake import extract

    bank = seeded_bank(scale, workdir)
    base = (Path(workdir) / f"faults-{scale}").resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ctx = Ctx(bank.model_copy(update={"lake_url": str(base / "lake")}), load_spec(DEMO_SPEC), END_DATE,
              base, scale)
    prepare_lake(ctx)
    extract(ctx.settings, ctx.spec, ctx.score_date)
    extract(ctx.reference, ctx.spec, ctx.score_date)
    ensure_champion(ctx.settings, base)
    score_night(ctx)
    return ctx


def matrix(ctx: Ctx) -> list[dict[str, Any]]:
    """Every fault that needs no Prefect server, in order, each leaving the committed state as it found it."""
    return [
        kill_during_writeback(ctx, "writeback.after_staging"),
        kill_during_writeback(ctx, "writeback.in_swap"),
        error_during_writeback(ctx, "staging"),
        error_during_writeback(ctx, "swap"),
        corrupt_model(ctx, registry.WEIGHTS),
        corrupt_model(ctx, registry.MANIFEST),
        gpu_oom(ctx),
        unwritable_lake(ctx),
    ]


def run(scale: str, workdir: Path) -> list[dict[str, Any]]:
    """Set up the committed state, run the database drops (child process, Prefect), then the rest."""
    from bench.common import in_child

    ctx = setup(scale, workdir)
    rows, _, _ = in_child(_extract_drops_child, ctx)
    return rows + matrix(ctx)


def main(argv: list[str]) -> None:
    """`write DATE PARQUET VERSION`: the write-back child used by the kill faults."""
    if len(argv) != 4 or argv[0] != "write":
        raise SystemExit("usage: python -m bench.faults write DATE PARQUET VERSION")
    child_write(date.fromisoformat(argv[1]), Path(argv[2]), argv[3])


if __name__ == "__main__":
    main(sys.argv[1:])
