"""Nightly scoring: extract -> sequence shards -> score each shard -> write back -> monitor -> retention.

Orchestration only; every step is a task in `tasks/`. The night's scores replace the date's
partition in one transaction, so a failure anywhere leaves the previous scores intact.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from datetime import date, datetime
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run

from flows.output import table
from flows.params import ScoreParams
from flows.runners import SettingsTaskRunner, scoring_placement
from riskmodel.clock import not_after_today, yesterday
from riskmodel.db import stored_error
from riskmodel.reports import night_folder
from riskmodel.score import choose_device
from riskmodel.settings import Settings, load_settings
from tasks.context import settings_and_spec
from tasks.data import extract_task, lake_watermark_task, scoring_shards_task
from tasks.monitoring import monitor_task
from tasks.reporting import publish_markdown, publish_table
from tasks.scoring import resolve_models_task, retention_task, score_shard_task, write_scores_task


def current_run_id() -> str:
    """The Prefect flow-run id (so pipeline_runs rows link to the UI), or a fresh uuid."""
    return str(flow_run.get_id() or uuid.uuid4())


def build_shards(model: dict[str, str], score_date: date, out_dir: Path, settings: Settings) -> list[dict]:
    """Sequence shards for `model`, as the runner suits: one task on threads (one read of the lake in
    this process), one task per shard on Dask (each worker reads only its shard's accounts).

    Returns the tasks' results in shard order: paths, shards and the worker that built them."""
    if settings.task_runner != "dask":
        return [scoring_shards_task(model["version"], model["sha256"], score_date, str(out_dir))]
    futures = scoring_shards_task.map(unmapped(model["version"]), unmapped(model["sha256"]),
                                      unmapped(score_date), unmapped(str(out_dir)),
                                      shards=[[k] for k in range(settings.n_shards)],
                                      n_shards=unmapped(settings.n_shards))
    return [f.result() for f in futures]


def score_with(model: dict[str, str], score_date: date, run_dir: Path, device: str, run_id: str,
               watermark: datetime | None, table: str, timings: dict[str, float]) -> dict:
    """Build shards with the model's frozen features, score them in parallel, and write them back."""
    settings = load_settings()
    t = time.perf_counter()
    built = build_shards(model, score_date, run_dir / model["version"], settings)
    shards = [path for b in built for path in b["paths"]]
    timings[f"sequences[{table}]"] = time.perf_counter() - t
    t = time.perf_counter()
    with scoring_placement(settings):
        futures = score_shard_task.map(shards, model["version"], model["sha256"], device)
    scored = [f.result() for f in futures]
    timings[f"score[{table}]"] = time.perf_counter() - t
    t = time.perf_counter()
    written = write_scores_task([s["path"] for s in scored], score_date, model["version"],
                                model["sha256"], run_id, watermark, table)
    timings[f"write[{table}]"] = time.perf_counter() - t
    return {"shards": scored, "write": written,
            "builds": [{"shards": b["shards"], "worker": b["worker"]} for b in built]}


def scoring_line(shards: list[dict]) -> str:
    """How the shards were scored: device, precision (per shard: a bf16 shard whose sample disagreed
    with fp32 was scored in fp32), and whether the LSTM ran at all."""
    if not shards:
        return "no shard to score"
    first = shards[0]
    if not first["lstm_ran"]:
        return "LightGBM alone: the served blend gives the LSTM weight 0, so the network was not run"
    retries = sum(s["oom_retries"] for s in shards)
    fell_back = sum(s["precision"] == "fp32" for s in shards)
    precision = first["precision"] if len({s["precision"] for s in shards}) == 1 else (
        f"bf16 ({fell_back} of {len(shards)} shards in fp32: their bf16 sample disagreed with fp32)")
    return (f"LSTM on {first['device']} in {precision}, batch {first['batch_size']}"
            + (f", {retries} out-of-memory back-offs" if retries else ""))


def input_line(inputs: dict) -> str:
    """One readable line of the inputs the night handled rather than quarantined."""
    idle = inputs["accounts_without_events"]
    unseen = {k: v for k, v in inputs["unseen_event_categories"].items() if v}
    return (f"{inputs['one_event']} single-event accounts, {inputs['at_max_length']} at length L, "
            f"{'no accounts table' if idle is None else f'{idle} accounts without events in the window'}, "
            f"unseen or null categories {unseen or 'none'}")


def drift_line(score_psi: float | None, reference: str) -> str:
    """Tonight's score PSI and the reference night it was closest to, as one readable line."""
    if score_psi is None or math.isnan(score_psi):
        return "not computed (the model's manifest has no reference distributions)"
    return f"score PSI {score_psi:.3f} (closest reference: {reference})"


def realised_line(realised: dict | None) -> str:
    """Realised performance of the scores served H + reporting lag days ago, as one readable line."""
    if not realised:
        return "not yet: no scores were served H + reporting lag days before this night"
    served, n, positives = realised["served_date"], realised["accounts"], realised["positives"]
    if not positives:
        return f"not measurable: no matured positive among the {n} accounts scored {served}"

    def measured(key: str) -> str:
        value, bounds = realised.get(key), realised.get(f"{key}_interval")
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")

    return (f"AP {measured('average_precision')}, ROC-AUC {measured('roc_auc')} of the scores served "
            f"{served} ({positives} of {n} accounts positive; 95% bootstrap intervals)")


def monitoring_lines(summary: dict) -> list[str]:
    """The night's drift, realised performance and monitoring notes as report lines, for the CLI
    report and the summary artifact alike."""
    return [f"drift: {drift_line(summary['score_psi'], summary['score_reference'])}; "
            f"score distribution {summary['score_distribution']}",
            f"realised performance: {realised_line(summary['realised'])}",
            *(f"note: {n}" for n in summary["monitoring_notes"])]


def movers_table(movers: list[dict]) -> str:
    """The night's top movers as a text table (or a line saying there is no previous night)."""
    if not movers:
        return "no previous scored night to compare with"
    rows = [{"account_id": m["account_id"], "previous": f"{m['previous_score']:.4f} {m['previous_band']}",
             "tonight": f"{m['risk_score']:.4f} {m['risk_band']}", "change": f"{m['change']:+.4f}",
             "reasons": "; ".join(m["reason_codes"])} for m in movers]
    return f"previous scored night: {movers[0]['previous_date']}\n{table(rows)}"


@flow(name="nightly-scoring", log_prints=False, task_runner=SettingsTaskRunner())
def nightly_scoring(params: ScoreParams = ScoreParams()) -> dict:  # noqa: B008
    """Score every active account for `params.score_date` with the champion (and shadow challenger)."""
    logger = get_run_logger()
    settings, _ = settings_and_spec()
    score_date = not_after_today("score_date", params.score_date
                                 or yesterday(settings.tz, flow_run.scheduled_start_time), settings.tz)
    device = params.device or settings.device
    choose_device(device)
    run_id = current_run_id()
    run_dir = settings.home / "runs" / run_id
    timings: dict[str, float] = {}

    t = time.perf_counter()
    models = resolve_models_task(params.shadow)
    champion = models["champion"]
    timings["load model"] = time.perf_counter() - t
    extract: dict[str, object] = {}
    if params.extract:
        t = time.perf_counter()
        extract = extract_task(score_date)
        watermark = extract.get("watermark")
        timings["extract"] = time.perf_counter() - t
    else:
        watermark = lake_watermark_task()
    try:
        result = score_with(champion, score_date, run_dir, device, run_id, watermark,
                            "risk_scores", timings)
        shadow: dict | None = None
        shadow_error = models.get("challenger_error")
        if models["challenger"]:
            try:
                shadow = score_with(models["challenger"], score_date, run_dir, device,
                                    str(uuid.uuid4()), watermark, "risk_scores_shadow", timings)
            except Exception as exc:  # noqa: BLE001 - the champion's night is written; the shadow's failure is reported
                shadow_error = stored_error(f"{models['challenger']['version']}: {type(exc).__name__}: {exc}")
                logger.error("shadow scoring failed; the champion's scores for %s stand: %s", score_date,
                             shadow_error)
        t = time.perf_counter()
        monitor = monitor_task(score_date, champion["version"], champion["sha256"],
                               [s["shard"] for s in result["shards"]],
                               [s["path"] for s in result["shards"]],
                               str(night_folder(settings.reports, score_date)))
        timings["monitor"] = time.perf_counter() - t
        t = time.perf_counter()
        retention = retention_task(score_date)
        timings["retention"] = time.perf_counter() - t
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    summary = {
        "score_date": score_date.isoformat(), "run_id": run_id, "model_version": champion["version"],
        "accounts_scored": result["write"]["rows"], "replaced_rows": result["write"]["replaced_rows"],
        "checksum": result["write"]["checksum"], "bands": monitor["band_counts"],
        "shadow_model": models["challenger"]["version"] if models["challenger"] else None,
        "shadow_rows": shadow["write"]["rows"] if shadow else 0,
        "shadow_error": shadow_error,
        "extract": extract, "alerts": monitor["alerts"], "monitoring_notes": monitor["notes"],
        "score_psi": monitor["score_psi"],
        "score_reference": monitor["score_reference"], "realised": monitor["realised"],
        "movers": monitor["movers"], "score_distribution": monitor["score_distribution"],
        "timings_s": timings, "scoring": scoring_line(result["shards"]),
        "sequence_builds": result["builds"], "inputs": monitor["inputs"], "retention": retention,
    }
    publish_table(f"nightly-timings-{score_date}",
                  [{"stage": k, "seconds": round(v, 3)} for k, v in timings.items()],
                  f"Stage timings for {score_date}")
    publish_markdown(
        f"nightly-summary-{score_date}",
        "\n".join([f"# Nightly scores for {score_date}",
                   f"- model: `{champion['version']}`",
                   f"- accounts scored: {summary['accounts_scored']} ({summary['scoring']})",
                   f"- bands: {summary['bands']}",
                   f"- inputs handled: {input_line(monitor['inputs'])}",
                   f"- alerts: {summary['alerts'] or 'none'}",
                   *(f"- {line}" for line in monitoring_lines(summary)),
                   f"- shadow challenger: {summary['shadow_model'] or 'none'}"
                   + (f" (failed: {summary['shadow_error']})" if summary["shadow_error"] else ""),
                   f"- retention: dropped {len(retention['dropped'])} table(s) and "
                   f"{len(retention['report_folders'])} report folder(s) dated before "
                   f"{retention['cutoff']}, kept {len(retention['skipped'])} table(s) in use",
                   "", "## Top movers since the previous scored night", "",
                   "```", movers_table(monitor["movers"]), "```"]),
        f"Summary of the nightly run for {score_date}")
    logger.info("scored %s accounts for %s with %s", summary["accounts_scored"], score_date,
                champion["version"])
    return summary
