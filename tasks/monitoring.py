"""Prefect task for nightly monitoring: drift (PSI) against the model's reference, band changes and
top movers since the previous night, realised performance, a Prefect event for automations when
something needs a person."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from riskmodel.batch import SequenceBatch
from riskmodel.input_counts import InputCounts
from riskmodel.monitor import feature_values, monitor
from riskmodel.served import top_movers
from riskmodel.settings import Settings
from riskmodel.sources import read_accounts
from riskmodel.spec import FeatureSpec
from tasks.context import settings_and_spec
from tasks.models import cached_model
from tasks.reporting import publish_images, publish_table
from tasks.retry import retry_on_transient

DRIFT_EVENT = "riskflow.drift.detected"


def shard_values(shards: list[str], counts: InputCounts | None = None) -> dict[str, np.ndarray]:
    """Per-column monitoring values of every shard, concatenated; folds each shard into `counts`."""
    parts: dict[str, list[np.ndarray]] = {}
    for shard in shards:
        batch = SequenceBatch.load(Path(shard))
        if counts is not None:
            counts.add(batch)
        for key, values in feature_values(batch).items():
            parts.setdefault(key, []).append(values)
    return {key: np.concatenate(v) for key, v in parts.items()}


def accounts_table_ids(settings: Settings, spec: FeatureSpec) -> pl.Series | None:
    """Ids of the spec's accounts table (None without one), to count accounts that were not scored."""
    accounts = read_accounts(settings, spec)
    return None if accounts is None else accounts["account_id"]


@task(name="monitor", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      timeout_seconds=1800, cache_policy=NO_CACHE)
def monitor_task(score_date: date, version: str, sha256: str, shards: list[str], score_files: list[str],
                 out_dir: str) -> dict[str, Any]:
    """PSI of scores and feature groups, band counts and top movers vs last night, realised
    performance (over the horizon the model was trained for); alerts. The score-distribution image
    is written into `out_dir`."""
    model = cached_model(version, sha256)
    settings, spec = settings_and_spec(model.manifest.get("training_window", {}).get("horizon_days"))
    scores = pl.concat([pl.read_parquet(f, columns=["risk_score", "risk_band"]) for f in score_files])
    reference = model.manifest.get("reference") or {}
    inputs = InputCounts()
    values = shard_values(shards, inputs)
    inputs.count_idle_accounts(accounts_table_ids(settings, spec))
    report = monitor(settings, spec, score_date=score_date, scores=scores["risk_score"].to_numpy(),
                     values=values, reference=reference)
    publish_table(f"inputs-{score_date}", inputs.rows(),
                  f"Inputs handled, not quarantined (single events, unseen categories, idle accounts), "
                  f"{score_date}")
    publish_table(f"monitoring-{score_date}", report.rows(),
                  f"Drift (PSI vs training reference), band counts and realised performance, {score_date}")
    movers = top_movers(settings, score_date)
    publish_table(f"movers-{score_date}", movers,
                  f"Accounts whose score moved most since the previous night, {score_date}")
    image = publish_images(f"score-distribution-{score_date}", {"Score distribution": report.image_png},
                           Path(out_dir), f"Score distribution for {score_date} against the reference")[0]
    score_psi = None if math.isnan(report.drift.score_psi) else report.drift.score_psi
    if report.alerts:
        logger = get_run_logger()
        for alert in report.alerts:
            logger.warning("monitoring alert for %s: %s", score_date, alert)
        emit_event(event=DRIFT_EVENT,
                   resource={"prefect.resource.id": f"riskflow.monitor.{spec.name}"},
                   payload={"score_date": score_date.isoformat(), "model_version": version,
                            "alerts": report.alerts, "score_psi": score_psi})
    counts = scores.group_by("risk_band").len().sort("risk_band")
    return {"band_counts": dict(zip(counts["risk_band"].to_list(), counts["len"].to_list(), strict=True)),
            "alerts": report.alerts, "notes": report.notes,
            "score_psi": score_psi,
            "score_reference": report.drift.score_reference, "realised": report.realised, "movers": movers,
            "score_distribution": str(image), "inputs": inputs.to_dict()}
