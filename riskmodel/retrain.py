"""The steps of a retrain, as plain functions: split cutoffs, fit a challenger, predict, group rows.

The Prefect flow (`flows/retrain.py`) calls these through tasks; a notebook can call them too.
Splits are out-of-time: training cutoffs end at least H days before the validation cutoff, which
precedes the test cutoff, so no training label window overlaps the evaluation windows. When the
cutoffs cannot hold three windows H days apart (a one-off portfolio snapshot, or a training window
shorter than about 2H) rows are split by a stable hash of the account id instead: the report says
so, and such an in-period evaluation never promotes over a champion (`registry.promotion_decision`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from riskmodel.bands import BandPolicy
from riskmodel.batch import SequenceBatch, check_keep_rate, sample_negatives
from riskmodel.blend import Blend, fit_weighted_blend
from riskmodel.calibrate import Calibrator, fit_calibrator
from riskmodel.errors import ConfigError
from riskmodel.features import FeatureState
from riskmodel.model import ModelConfig, RiskLSTM
from riskmodel.sequences import stable_hash
from riskmodel.snapshots import training_cutoffs
from riskmodel.spec import FeatureSpec
from riskmodel.train import (
    ProgressFn,
    TrainConfig,
    TrainResult,
    predict_logits,
    resolve_device,
    torch_threads,
    train_model,
)

if TYPE_CHECKING:
    from riskmodel.registry import LoadedModel

log = logging.getLogger("riskflow.retrain")

SplitKind = Literal["out_of_time", "account_hash"]


@dataclass(frozen=True)
class Split:
    """Which cutoffs feed training, validation and test, and how rows are separated."""

    kind: SplitKind
    train: list[date]
    valid: list[date]
    test: list[date]

    def describe(self) -> str:
        """One line for reports."""
        fmt = ", ".join
        return (f"{self.kind}: train {fmt(map(str, self.train))} | valid {fmt(map(str, self.valid))} | "
                f"test {fmt(map(str, self.test))}")


def plan_split(cutoffs: Sequence[date], horizon_days: int) -> Split:
    """Out-of-time split of closed cutoffs: the last sixth (at least one) is the test window, the
    sixth before it validation, the rest training, with an H-day gap before each later window so
    no label window of an earlier part overlaps a later one. When the gaps leave no training
    cutoff, the test and validation windows shrink (to one cutoff each at least) first; only
    cutoffs that cannot hold three windows H days apart fall back to the account-hash split."""
    ordered = sorted(set(cutoffs))
    if not ordered:
        raise ConfigError("no training cutoff has a closed label window: widen train_days or wait")
    gap = timedelta(days=horizon_days)
    for k in range(max(1, len(ordered) // 6), 0, -1):
        test = ordered[-k:]
        before_test = [t for t in ordered[:-k] if t <= test[0] - gap]
        valid = before_test[-k:]
        train = [t for t in before_test[:-k] if valid and t <= valid[0] - gap]
        if valid and train:
            return Split("out_of_time", train, valid, test)
    if len(ordered) >= 3:
        log.warning("the %d closed cutoffs (%s to %s, %d days) cannot hold training, validation and test "
                    "windows %d days apart (that takes at least %d days between the first and the last): "
                    "splitting rows by account instead, an in-period evaluation; widen train_days",
                    len(ordered), ordered[0], ordered[-1], (ordered[-1] - ordered[0]).days, horizon_days,
                    2 * horizon_days)
    return Split("account_hash", ordered, ordered, ordered)


def plan_retrain(spec: FeatureSpec, as_of: date, train_days: int, every_days: int) -> tuple[date, Split]:
    """The retrain's first day (`train_days` before `as_of`) and the split of its closed cutoffs,
    taken every `every_days` days from there."""
    start = as_of - timedelta(days=train_days)
    return start, plan_split(training_cutoffs(spec, start, as_of, every_days, as_of), spec.horizon_days)


def baseline_cutoffs(spec: FeatureSpec, split: Split, start: date, every_days: int,
                     as_of: date) -> list[date]:
    """Training cutoffs of the LightGBM baseline: every `every_days` days from `start` to the last
    training cutoff, so each fraud is seen from several days before it (scale M, out of time:
    LightGBM 0.16-0.18 -> 0.21 test AP going from weekly to 3-day cutoffs, 3 seeds, while the LSTM
    fell, 0.165 -> 0.155 and 0.163 -> 0.137, so it keeps the weekly ones). Validation and test
    are shared; an account-hash split has no out-of-time training window to densify."""
    if split.kind != "out_of_time":
        return list(split.train)
    return training_cutoffs(spec, start, max(split.train), every_days, as_of)


def snapshot_windows(split: Split, baseline_days: list[date], negative_keep: float,
                     baseline_negative_keep: float) -> list[tuple[str, list[date], float]]:
    """(part, cutoffs, share of negatives kept) of an out-of-time retrain's snapshots: the LSTM's
    training part, the baseline's denser one, then validation and test (all rows kept)."""
    return [("train", split.train, negative_keep), ("baseline_train", baseline_days, baseline_negative_keep),
            ("valid", split.valid, 1.0), ("test", split.test, 1.0)]


def hash_part(account_id: np.ndarray) -> np.ndarray:
    """Stable split of accounts for the single-cutoff case: 0..69 train, 70..84 valid, 85..99 test."""
    bucket = (stable_hash(account_id) % np.uint64(100)).astype(np.int64)
    return np.where(bucket < 70, 0, np.where(bucket < 85, 1, 2))


def split_shards_by_hash(paths: Sequence[Path], out_dir: Path) -> dict[str, list[Path]]:
    """Write each shard's train/valid/test rows (by account hash) to `out_dir/<part>/`."""
    out: dict[str, list[Path]] = {"train": [], "valid": [], "test": []}
    for path in paths:
        batch = SequenceBatch.load(Path(path))
        part = hash_part(batch.account_id)
        for index, name in enumerate(("train", "valid", "test")):
            target = out_dir / name / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.subset(part == index).save(target)
            out[name].append(target)
    return out


def downsample_negatives(paths: Sequence[Path], out_dir: Path, keep: float, seed: int) -> list[Path]:
    """Training shards with every positive and a seeded `keep` share of negatives (validation, test
    and calibration stay untouched, so probabilities remain calibrated to the real base rate)."""
    check_keep_rate(keep)
    if keep == 1.0:
        return list(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(paths):
        batch = SequenceBatch.load(Path(path))
        if batch.label is None:
            raise ConfigError(f"{path}: training shard without labels")
        target = out_dir / Path(path).name
        sample_negatives(batch, keep, [seed, i]).save(target)
        written.append(target)
    return written


def lstm_train_config(params: Mapping[str, Any], seed: int | None = None,
                      device: str | None = None) -> TrainConfig:
    """How a retrain trains each LSTM, from its parameters (a `RetrainParams` dump): epochs, the time
    budget, the weight average, the positive-weight cap, the seed (or `seed`) and the device (or
    `device`). The challenger and the order ablation train at the same time, a process each, so each
    gets the whole budget."""
    return TrainConfig(epochs=params["epochs"], max_train_minutes=params["max_train_minutes"],
                       ema_decay=params["ema_decay"], max_pos_weight=params["max_pos_weight"],
                       seed=params["seed"] if seed is None else seed,
                       device=device or params.get("device", "auto"))


def lstm_model_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The network's shape from a retrain's parameters (a `RetrainParams` dump), as `fit_model` takes it."""
    return {"hidden": params["hidden_size"], "max_embedded_cardinality": params["max_embedded_cardinality"],
            "aggregate_dropout": params["aggregate_dropout"]}


@dataclass
class Fitted:
    """A trained, calibrated network with its capacity bands fitted on validation scores."""

    net: RiskLSTM
    calibrator: Calibrator
    bands: BandPolicy
    result: TrainResult
    summary: dict[str, Any] = field(default_factory=dict)


def fit_model(train: Sequence[Path], valid: Sequence[Path], *, features: dict[str, Any], hidden: int,
              config: TrainConfig, bands: BandPolicy | None = None, max_embedded_cardinality: int,
              aggregate_dropout: float = 0.0, on_progress: ProgressFn | None = None) -> Fitted:
    """Train on `train`, early-stop and calibrate on `valid`, fit band thresholds on `valid`."""
    first = SequenceBatch.load(Path(train[0]))
    state = FeatureState.from_dict(features)
    model_config = ModelConfig.for_batch(
        first, cat_cardinalities=state.cat_cardinalities,
        static_cat_cardinalities=state.static_cat_cardinalities, hidden=hidden,
        max_embedded_cardinality=max_embedded_cardinality, aggregate_dropout=aggregate_dropout)
    result = train_model(list(train), list(valid), model_config=model_config, config=config,
                         on_progress=on_progress)
    calibrator = fit_calibrator(result.valid_logits, result.valid_labels)
    fitted_bands = (bands or BandPolicy()).fit(calibrator.apply(result.valid_logits))
    summary = {"best_epoch": result.best_epoch, "best_val_ap": result.best_val_ap,
               "stopped": result.stopped, "seconds": round(result.seconds, 2),
               "sequences_seen": result.sequences_seen, "rows_per_epoch": result.rows_per_epoch,
               "budget_minutes": config.max_train_minutes,
               "sequences_per_s": round(result.sequences_seen / max(result.seconds, 1e-9), 1),
               "history": result.history}
    return Fitted(result.model, calibrator, fitted_bands, result, summary)


def predict_proba(net: RiskLSTM, calibrator: Calibrator, paths: Sequence[Path], device: str = "auto",
                  threads: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities and labels for every row of `paths`, in order.

    Runs on `threads` CPU threads (0 = torch default), like training: on the shared 2-core box one
    thread scored the M test window ~4x faster than two (`riskflow bench --stage score`)."""
    logits, labels = lstm_logits(net, paths, device, threads)
    return calibrator.apply(logits), labels


def lstm_logits(net: RiskLSTM, paths: Sequence[Path], device: str = "auto",
                threads: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw logits and labels of the network for every row of `paths`, in order (see `predict_proba`)."""
    with torch_threads(threads):
        return predict_logits(net, list(paths), resolve_device(device))


def model_proba(model: LoadedModel, paths: Sequence[Path], device: str = "auto",
                threads: int = 1) -> np.ndarray:
    """Calibrated probabilities of a registered model for every row of `paths`, blended with its
    LightGBM part when it has one; the network runs only when they depend on it (`runs_lstm`)."""
    rows = 0 if model.runs_lstm else len(row_keys(paths)[0])
    return model.calibrator.apply(model.served_from(lambda: lstm_logits(model.net, paths, device, threads)[0],
                                                    rows, list(paths)))


def fit_served_blend(lstm_valid_logits: np.ndarray, valid_labels: np.ndarray, gbdt_valid_probs: np.ndarray,
                     booster_text: str, best_iteration: int,
                     bands: BandPolicy) -> tuple[Blend, Calibrator, BandPolicy]:
    """The LSTM blended with LightGBM: weighted, standardised, calibrated and banded on the validation
    window."""
    blend = fit_weighted_blend(lstm_valid_logits, gbdt_valid_probs, valid_labels, booster_text,
                               best_iteration)
    values = blend.combine(lstm_valid_logits, gbdt_valid_probs)
    calibrator = fit_calibrator(values, valid_labels)
    return blend, calibrator, bands.fit(calibrator.apply(values))


def row_keys(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(account ids as text, cutoffs) of every row in order, to align two models' test rows."""
    ids, cutoffs = [], []
    for path in paths:
        with np.load(Path(path), allow_pickle=False) as data:
            ids.append(data["account_id"].astype(str))
            cutoffs.append(data["cutoff"])
    if not ids:
        return np.zeros(0, str), np.zeros(0, "datetime64[D]")
    return np.concatenate(ids), np.concatenate(cutoffs)


def aggregate_medians(paths: Sequence[Path]) -> list[float]:
    """Median of each aggregate over the training rows: the neutral value reason codes occlude with."""
    aggs = []
    for path in paths:
        with np.load(Path(path), allow_pickle=False) as data:
            aggs.append(data["agg"])
    stacked = np.concatenate(aggs) if aggs else np.zeros((0, 0), np.float32)
    return np.median(stacked, axis=0).astype(float).tolist() if len(stacked) else []


def time_means(paths: Sequence[Path]) -> list[float]:
    """Mean of each time feature over the real (not padding) events of the training rows: the
    neutral value reason codes occlude the timing group with."""
    total: np.ndarray | None = None
    count = 0
    for path in paths:
        with np.load(Path(path), allow_pickle=False) as data:
            times, lengths = data["time"], data["lengths"]
        real = np.arange(times.shape[1])[None, :] < lengths[:, None]
        part = times[real].astype(np.float64).sum(axis=0)
        total = part if total is None else total + part
        count += int(real.sum())
    return (total / count).tolist() if total is not None and count else []


def pattern_groups(account_ids: np.ndarray, truth: dict[str, str]) -> np.ndarray:
    """Each row's planted pattern (from ground truth), "look-alike:<pattern>", or "unplanted"."""
    return np.array([truth.get(a, "unplanted") for a in account_ids.astype(str)], dtype=object)
