"""Out-of-time evaluation: every model side by side, with bootstrap intervals, per pattern, and plots.

`evaluate_models` takes calibrated probabilities of the challenger ("model"), the current
"champion", the LightGBM "baseline" and the "shuffled_order" ablation (trained and tested on
order-shuffled snapshots, `riskmodel.ablation`) on the same rows and
returns the `evaluation` table the manifest stores (point values), the 95% intervals, the
paired difference in average precision of the model against each other entry, per-group
results and calibration curves. `train_baseline` fits the gradient-boosting baseline on the
static features and aggregates alone (what a bag of hand-made features can do).
LightGBM and matplotlib are imported only by the functions that need them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.metrics import (
    bootstrap_draws,
    calibration_curve,
    group_metrics,
    interval,
    intervals_from_draws,
)

TABULAR_KEYS = ("static_num", "static_cat", "agg", "label")
BASELINE_ROUNDS = 400


def tabular_features(static_num: np.ndarray, static_cat: np.ndarray,
                     agg: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The baseline's design matrix [static numerics | static category ids | aggregates].

    Also returns the indices of its categorical columns.
    """
    x = np.concatenate([static_num, static_cat.astype(np.float32), agg], axis=1).astype(np.float32)
    first = static_num.shape[1]
    return x, list(range(first, first + static_cat.shape[1]))


def read_tabular(sources: Sequence[Path | SequenceBatch]) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Design matrix, labels (None if any source lacks them) and categorical columns of shards or batches.

    Only the small per-account arrays are read from each .npz, never the sequences.
    """
    xs, ys, categorical = [], [], []
    for source in sources:
        if isinstance(source, SequenceBatch):
            arrays = {k: getattr(source, k) for k in TABULAR_KEYS}
        else:
            with np.load(Path(source), allow_pickle=False) as data:
                arrays = {k: (data[k] if k in data.files else None) for k in TABULAR_KEYS}
        x, categorical = tabular_features(arrays["static_num"], arrays["static_cat"], arrays["agg"])
        xs.append(x)
        ys.append(arrays["label"])
    if not xs:
        raise ConfigError("read_tabular: no shards given")
    labels = None if any(y is None for y in ys) else np.concatenate(ys).astype(np.float32)
    return np.concatenate(xs), labels, categorical


@dataclass
class Baseline:
    """A fitted LightGBM booster on static features and aggregates."""

    booster: Any
    categorical: list[int]
    best_iteration: int

    def predict(self, sources: Sequence[Path | SequenceBatch]) -> np.ndarray:
        """Probabilities for every row of `sources`, in order."""
        x, _, _ = read_tabular(sources)
        return np.asarray(self.booster.predict(x, num_iteration=self.best_iteration), dtype=np.float64)


def baseline_params(*, seed: int = 0, threads: int = 0, learning_rate: float = 0.05,
                    num_leaves: int = 31) -> dict[str, Any]:
    """LightGBM parameters of the baseline (binary objective, early stopping on average precision)."""
    return {"objective": "binary", "learning_rate": learning_rate, "num_leaves": num_leaves,
            "min_data_in_leaf": 20, "feature_fraction": 0.9, "bagging_fraction": 0.9,
            "bagging_freq": 1, "metric": "average_precision", "seed": seed, "deterministic": True,
            "num_threads": threads, "verbose": -1}


def train_baseline(train: Sequence[Path | SequenceBatch], valid: Sequence[Path | SequenceBatch], *,
                   seed: int = 0, rounds: int = BASELINE_ROUNDS, early_stopping: int = 30, threads: int = 0,
                   learning_rate: float = 0.05, num_leaves: int = 31) -> Baseline:
    """Fit the LightGBM baseline (early stopping on the validation window's average precision)."""
    import lightgbm as lgb

    x_train, y_train, categorical = read_tabular(train)
    x_valid, y_valid, _ = read_tabular(valid)
    if y_train is None or y_valid is None:
        raise ConfigError("train_baseline: training and validation shards must carry labels")
    params = baseline_params(seed=seed, threads=threads, learning_rate=learning_rate, num_leaves=num_leaves)
    dtrain = lgb.Dataset(x_train, y_train, categorical_feature=categorical or "auto", free_raw_data=True)
    dvalid = lgb.Dataset(x_valid, y_valid, reference=dtrain, categorical_feature=categorical or "auto")
    booster = lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(early_stopping, verbose=False)])
    return Baseline(booster=booster, categorical=categorical,
                    best_iteration=int(booster.best_iteration or rounds))


@dataclass
class EvaluationReport:
    """Everything an evaluation produces; `evaluation` is what the manifest's "evaluation" holds."""

    split: str
    rows: int
    positives: int
    evaluation: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, dict[str, float]]]
    ap_difference: dict[str, dict[str, float]]
    groups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    calibration: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (goes into the manifest's metrics)."""
        return {"split": self.split, "rows": self.rows, "positives": self.positives,
                "evaluation": self.evaluation, "intervals": self.intervals,
                "ap_difference": self.ap_difference, "groups": self.groups,
                "calibration": self.calibration}

    def table(self) -> list[dict[str, Any]]:
        """One row per model with each metric as "value [lo, hi]" (for a Prefect table artifact)."""
        rows = []
        for name, metrics in self.intervals.items():
            row: dict[str, Any] = {"model": name}
            for key, iv in metrics.items():
                row[key] = f"{iv['value']:.4f} [{iv['lo']:.4f}, {iv['hi']:.4f}]"
            rows.append(row)
        return rows


def evaluate_models(labels: np.ndarray, probs: Mapping[str, np.ndarray], *, split: str = "out_of_time",
                    groups: np.ndarray | None = None, n_boot: int = 200, seed: int = 0,
                    clusters: np.ndarray | None = None) -> EvaluationReport:
    """Side-by-side metrics of calibrated probabilities on the same rows; "model" is the reference entry.

    Intervals resample whole `clusters` (the test rows' account ids) when given: an account scored at
    several test cutoffs counts once per draw, not as independent rows."""
    y = np.asarray(labels, dtype=np.float64)
    for name, p in probs.items():
        if np.asarray(p).shape != y.shape:
            raise ConfigError(f"evaluate_models: {name!r} has {np.asarray(p).size} scores "
                              f"for {y.size} labels")
    draws = bootstrap_draws(y, probs, n_boot=n_boot, seed=seed, clusters=clusters)
    intervals = intervals_from_draws(y, probs, draws)
    evaluation = {name: {k: v["value"] for k, v in m.items()} for name, m in intervals.items()}
    diffs = {}
    if "model" in probs:
        ap = "average_precision"
        point = {name: m[ap]["value"] for name, m in intervals.items()}
        diffs = {f"model_minus_{name}": interval(draws["model"][ap] - draws[name][ap],
                                                 point["model"] - point[name])
                 for name in probs if name != "model"}
    per_group = {} if groups is None else {name: group_metrics(y, p, groups) for name, p in probs.items()}
    curves = {name: calibration_curve(y, p) for name, p in probs.items()}
    return EvaluationReport(split=split, rows=int(y.size), positives=int(y.sum()), evaluation=evaluation,
                            intervals=intervals, ap_difference=diffs, groups=per_group, calibration=curves)


def _png(draw: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    try:
        draw(ax)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    ys = y[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    fpr = np.r_[0, fp / max(fp[-1], 1)]
    tpr = np.r_[0, tp / max(tp[-1], 1)]
    precision = tp / np.arange(1, ys.size + 1)
    return fpr, tpr, tpr[1:], precision


def roc_png(labels: np.ndarray, probs: Mapping[str, np.ndarray]) -> bytes:
    """ROC curves of every model as PNG bytes."""
    y = np.asarray(labels, dtype=np.float64)

    def draw(ax: Any) -> None:
        for name, p in probs.items():
            fpr, tpr, _, _ = _roc_points(y, np.asarray(p, dtype=np.float64))
            ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")

    return _png(draw)


def pr_png(labels: np.ndarray, probs: Mapping[str, np.ndarray]) -> bytes:
    """Precision-recall curves of every model as PNG bytes."""
    y = np.asarray(labels, dtype=np.float64)

    def draw(ax: Any) -> None:
        for name, p in probs.items():
            _, _, recall, precision = _roc_points(y, np.asarray(p, dtype=np.float64))
            ax.plot(recall, precision, label=name)
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")

    return _png(draw)


def calibration_png(labels: np.ndarray, probs: Mapping[str, np.ndarray]) -> bytes:
    """Reliability diagram (mean predicted vs observed rate per decile) as PNG bytes."""
    def draw(ax: Any) -> None:
        for name, p in probs.items():
            curve = calibration_curve(labels, p)
            ax.plot(curve["mean_predicted"], curve["observed_rate"], "o-", ms=3, label=name)
        top = max(float(np.max(p)) for p in probs.values()) if probs else 1.0
        ax.plot([0, top], [0, top], "k:", lw=0.8)
        ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration")

    return _png(draw)
