"""Prefect tasks around the data path: extract to the lake, feature fitting, sequence shards.

Tasks pass dates, paths and small dicts only; frames and arrays stay on disk.
"""

from __future__ import annotations

import os
import socket
from datetime import date, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from riskmodel import lake, sequences, snapshots
from riskmodel.errors import ConfigError
from riskmodel.features import FeatureState, fit_feature_state
from tasks.context import settings_and_spec
from tasks.models import cached_model
from tasks.retry import retry_on_transient


@task(name="extract", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient, timeout_seconds=3600,
      cache_policy=NO_CACHE)
def extract_task(run_date: date) -> dict[str, object]:
    """Bring the lake up to `run_date` (incremental, quality-checked, atomic per partition)."""
    settings, spec = settings_and_spec()
    return lake.extract(settings, spec, run_date).as_dict()


@task(name="lake-watermark", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      cache_policy=NO_CACHE)
def lake_watermark_task() -> datetime | None:
    """The source watermark the lake holds now, for runs that score without extracting first."""
    settings, spec = settings_and_spec()
    return lake.lake_watermark(settings, spec)


@task(name="build-scoring-shards", timeout_seconds=3600, cache_policy=NO_CACHE)
def scoring_shards_task(version: str, sha256: str, score_date: date, out_dir: str,
                        shards: list[int] | None = None, n_shards: int | None = None) -> dict[str, object]:
    """Padded sequences of every account active at `score_date`, one .npz per account-hash shard,
    encoded with the vocabularies and statistics frozen in model `version`.

    `shards` limits the build to those shard numbers (None = all), so one task per shard group can
    run on each Dask worker; `n_shards` is the flow's shard count, which the worker must share (else
    shard k would name other accounts). Returns the paths, the shards, and the worker (host:pid)."""
    settings, spec = settings_and_spec()
    if n_shards is not None and n_shards != settings.n_shards:
        raise ConfigError(f"n_shards: the flow splits accounts into {n_shards} shards but this worker's "
                          f"RISKFLOW_N_SHARDS is {settings.n_shards}; give workers the flow's settings")
    state = FeatureState.from_dict(cached_model(version, sha256).manifest["features"])
    paths = sequences.build_scoring_shards(settings, spec, state, score_date, Path(out_dir), shards)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    get_run_logger().info("shards %s for %s: %d files built on %s", "all" if shards is None else shards,
                          score_date, len(paths), worker)
    return {"paths": [str(p) for p in paths], "shards": shards, "worker": worker}


@task(name="fit-features", timeout_seconds=3600, cache_policy=NO_CACHE)
def fit_features_task(start: date, end: date) -> dict:
    """Vocabularies and normalisation statistics fitted on the training window only."""
    settings, spec = settings_and_spec()
    return fit_feature_state(settings, spec, start, end).to_dict()


@task(name="build-training-shards", timeout_seconds=3 * 3600, cache_policy=NO_CACHE)
def training_shards_task(features: dict, cutoffs: list[date], out_dir: str, as_of: date,
                         negative_keep: float = 1.0, seed: int = 0,
                         order_seed: int | None = None, horizon_days: int | None = None) -> list[str]:
    """Labelled snapshots at `cutoffs` (labels known by `as_of`, over `horizon_days` or the spec's
    horizon), same shard format as scoring; with `negative_keep` < 1 only that seeded share of
    negatives is kept (training rows only); with `order_seed`, the order ablation's snapshots."""
    settings, spec = settings_and_spec(horizon_days)
    state = FeatureState.from_dict(features)
    paths = snapshots.build_training_shards(settings, spec, state, cutoffs, Path(out_dir), as_of,
                                            negative_keep=negative_keep, seed=seed,
                                            order_seed=order_seed)
    return [str(p) for p in paths]
