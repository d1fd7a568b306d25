"""Training snapshots: labelled shards at cutoffs every k days, through the scoring builder's code path.

At cutoff t the label is 1 when the account has a positive risk event with local date in
(t, t+H] that was reported by `as_of`. A cutoff is usable only once t + H + reporting lag <=
as_of (its label window is closed). Accounts already known bad at t (a positive event reported
on or before t) are left out. Features come from `sequences.build_cutoff`, exactly as scoring.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from riskmodel.batch import check_keep_rate, sample_negatives
from riskmodel.errors import ConfigError
from riskmodel.features import FeatureState, fit_feature_state
from riskmodel.quality import local_midnight
from riskmodel.sequences import build_cutoff, load_prepared, write_shards
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

__all__ = ["build_training_shards", "cutoff_is_closed", "fit_feature_state", "label_frame",
           "training_cutoffs"]

log = logging.getLogger("riskflow.snapshots")


def cutoff_is_closed(spec: FeatureSpec, cutoff: date, as_of: date) -> bool:
    """True when every label of `cutoff` is known by `as_of`: t + H + reporting lag <= as_of."""
    return cutoff + timedelta(days=spec.horizon_days + spec.reporting_lag_days) <= as_of


def training_cutoffs(spec: FeatureSpec, start: date, end: date, every_days: int, as_of: date) -> list[date]:
    """Cutoffs start, start+k, ... up to `end`, keeping only those whose label window closed by `as_of`."""
    if every_days < 1:
        raise ConfigError(f"training_cutoffs: every_days must be >= 1, got {every_days}")
    if end < start:
        raise ConfigError(f"training_cutoffs: end {end} is before start {start}")
    days = range(0, (end - start).days + 1, every_days)
    return [t for t in (start + timedelta(days=d) for d in days) if cutoff_is_closed(spec, t, as_of)]


def label_frame(events: pl.DataFrame, spec: FeatureSpec, cutoff: date, as_of: date,
                tz: ZoneInfo) -> tuple[pl.Series, pl.Series]:
    """(accounts known bad at t, accounts labelled positive at t) from positive events (see read_events)."""
    after_t = local_midnight(cutoff + timedelta(days=1), tz)
    window_end = local_midnight(cutoff + timedelta(days=spec.horizon_days + 1), tz)
    known_by = local_midnight(as_of + timedelta(days=1), tz)
    known_bad = events.filter(pl.col("reported_at") < after_t)["account_id"].unique()
    positive = events.filter((pl.col("event_ts") >= after_t) & (pl.col("event_ts") < window_end)
                             & (pl.col("reported_at") < known_by))["account_id"].unique()
    return known_bad, positive


def build_training_shards(settings: Settings, spec: FeatureSpec, state: FeatureState, cutoffs: list[date],
                          out_dir: Path, as_of: date, *, negative_keep: float = 1.0,
                          seed: int = 0, order_seed: int | None = None) -> list[Path]:
    """Labelled shards `train-{t}-shard-NNNN.npz` for each cutoff (all with closed label windows).

    With `negative_keep` < 1 only that share of negatives is written (see `sample_negatives`), so
    dense training cutoffs never put their full, mostly negative snapshots on disk; the same
    accounts are kept whatever `order_seed`. With `order_seed` the snapshots are the order
    ablation's (see `riskmodel.ablation`): the same accounts and labels, events shuffled."""
    from riskmodel.sources import read_events

    check_keep_rate(negative_keep)
    if not cutoffs:
        raise ConfigError("build_training_shards: no cutoffs given")
    open_ = [t for t in cutoffs if not cutoff_is_closed(spec, t, as_of)]
    if open_:
        raise ConfigError(f"cutoff {open_[0]}: label window not closed by as_of {as_of} "
                          f"(needs t + {spec.horizon_days} + {spec.reporting_lag_days} days <= as_of)")
    events = read_events(settings, spec)
    prep = load_prepared(settings, spec, state, min(cutoffs), max(cutoffs))
    paths: list[Path] = []
    for cutoff in sorted(set(cutoffs)):
        known_bad, positive = label_frame(events, spec, cutoff, as_of, settings.tz)
        batches = build_cutoff(prep, spec, cutoff, settings.tz, exclude=known_bad, order_seed=order_seed)
        for batch in batches:
            batch.label = np.isin(batch.account_id, positive.to_numpy()).astype(np.float32)
        batches = [sample_negatives(batch, negative_keep, [seed, cutoff.toordinal(), k])
                   for k, batch in enumerate(batches)]
        paths += write_shards(batches, Path(out_dir), f"train-{cutoff.isoformat()}")
        log.info("snapshot %s: %d accounts, %d positive", cutoff, sum(len(b) for b in batches),
                 int(sum(float(b.label.sum()) for b in batches if b.label is not None)))
    return paths
