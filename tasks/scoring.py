"""Prefect tasks around scoring: load a verified model, score shards, write back, monitor.

A shard's scores go to a Parquet file next to the shard; the write task reads them all and
swaps the night's partition in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from riskmodel import registry, writeback
from riskmodel.batch import SequenceBatch
from riskmodel.db import stored_error
from riskmodel.errors import ModelIntegrityError
from riskmodel.reasons import at_or_above, reason_codes
from riskmodel.reports import drop_expired_nights
from riskmodel.schema import require_current_schema
from riskmodel.score import ScoreReport, choose_device, default_batch_size, score_batch
from tasks.context import settings_and_spec
from tasks.models import cached_model, remember_model
from tasks.retry import retry_on_transient


@task(name="resolve-models", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      cache_policy=NO_CACHE)
def resolve_models_task(shadow: bool) -> dict[str, dict[str, str] | None]:
    """The champion (verified now, refusing a corrupted artifact) and, if asked, a fresh challenger
    (one that fails its checks is reported under "challenger_error" and skipped: the champion's
    night does not wait on a shadow model)."""
    settings, _ = settings_and_spec()
    require_current_schema(settings)
    champion = registry.load_champion(settings)
    remember_model(champion)
    result: dict[str, dict[str, str] | None] = {
        "champion": {"version": champion.version, "sha256": champion.sha256}, "challenger": None}
    challenger = registry.latest_challenger(settings) if shadow else None
    if challenger and challenger != champion.version:
        try:
            model = registry.load_version(settings, challenger)
        except (ModelIntegrityError, registry.RegistryError, OSError) as exc:
            get_run_logger().error("shadow challenger %s cannot be loaded, so tonight scores the champion "
                                   "only: %s", challenger, exc)
            result["challenger_error"] = stored_error(f"{challenger}: {exc}")
        else:
            remember_model(model)
            result["challenger"] = {"version": model.version, "sha256": model.sha256}
    return result


@task(name="score-shard", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      timeout_seconds=3600, cache_policy=NO_CACHE)
def score_shard_task(shard: str, version: str, sha256: str, device: str,
                     with_reasons: bool = True) -> dict[str, object]:
    """Score one shard: calibrated probability, band and (for high bands) reason codes. The reason
    codes' passes run in the precision the scores ended in, so a drop never mixes bf16 and fp32."""
    settings, _ = settings_and_spec()
    model = cached_model(version, sha256)
    batch = SequenceBatch.load(Path(shard))
    size = settings.score_batch_size or default_batch_size(choose_device(device))
    report = ScoreReport(device=device, precision="fp32", batch_size=size)
    probs = score_batch(model, batch, device=device, batch_size=size,
                        threads=settings.torch_threads, precision=settings.score_precision, report=report)
    bands = model.band(probs)
    reasons: list[list[str]] = [[] for _ in range(len(batch))]
    if with_reasons and len(batch):
        selected = at_or_above(bands, settings.reason_min_band)
        neutral = model.manifest["features"].get("agg_neutral")
        times = model.manifest["features"].get("time_neutral")
        if selected.any():
            reasons = reason_codes(lambda b: score_batch(model, b, device=device,
                                                         batch_size=size,
                                                         precision=report.precision, bf16_sample=0),
                                   batch, selected, top_k=3,
                                   agg_neutral=np.asarray(neutral, np.float32) if neutral else None,
                                   time_neutral=np.asarray(times, np.float32) if times else None)
    out = Path(shard).with_suffix(f".{version}.scores.parquet")
    pl.DataFrame({
        "account_id": batch.account_id.astype(str),
        "risk_score": probs.astype(np.float64),
        "risk_band": bands.astype(str),
        "reason_codes": reasons,
    }, schema_overrides={"reason_codes": pl.List(pl.String)}).write_parquet(out)
    return {"path": str(out), "shard": shard, "rows": len(batch), **asdict(report)}


@task(name="write-scores", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_on_transient,
      timeout_seconds=1800, cache_policy=NO_CACHE)
def write_scores_task(score_files: list[str], score_date: date, version: str, sha256: str,
                      run_id: str, watermark: datetime | None, table: str = "risk_scores") -> dict:
    """Swap the night's partition in one transaction (previous scores kept in the audit table)."""
    settings, _ = settings_and_spec()
    frames = [pl.read_parquet(f) for f in score_files]
    scores = pl.concat(frames) if frames else pl.DataFrame(
        schema={"account_id": pl.String, "risk_score": pl.Float64, "risk_band": pl.String,
                "reason_codes": pl.List(pl.String)})
    report = writeback.write_scores(settings, score_date=score_date, scores=scores,
                                    model_version=version, model_sha256=sha256,
                                    run_id=uuid.UUID(run_id), watermark=watermark, table=table)
    return {"table": report.table, "rows": report.rows, "replaced_rows": report.replaced_rows,
            "checksum": report.checksum, "partition": report.partition, "leaves": report.leaves,
            "seconds": report.seconds}


@task(name="retention", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_on_transient,
      timeout_seconds=600, cache_policy=NO_CACHE)
def retention_task(score_date: date) -> dict:
    """Drop score partitions (and their audit rows) and night report folders older than
    `retention_days` before the night just scored; a date another run is writing is kept for a later
    night."""
    settings, _ = settings_and_spec()
    report = writeback.drop_expired_partitions(settings, score_date, settings.retention_days)
    return {"cutoff": report.cutoff.isoformat(), "dropped": report.dropped, "skipped": report.skipped,
            "audit_rows": report.audit_rows,
            "report_folders": drop_expired_nights(settings.reports, report.cutoff, report.skipped_days)}
