"""Ranking and calibration metrics in plain NumPy, with paired bootstrap confidence intervals.

The six headline metrics (`METRIC_KEYS`) are what every model comparison reports: ROC-AUC,
average precision, Kolmogorov-Smirnov, recall at 1% false-positive rate, precision in the
top 1% of scores, and the Brier score (on calibrated probabilities). Ties in scores are
handled as one threshold, so results do not depend on row order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

METRIC_KEYS = ("roc_auc", "average_precision", "ks", "recall_at_1pct_fpr",
               "precision_at_top_1pct", "brier")


def _curve(labels: np.ndarray, scores: np.ndarray,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (weighted) true and false positives at each distinct threshold (descending), and
    sorted labels."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    if weights is None:
        tp = np.cumsum(y)[last]
        return tp, (last + 1) - tp, y
    w = weights[order]
    return np.cumsum(w * y)[last], np.cumsum(w * (1.0 - y))[last], y


def top_k_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's share of the `k` highest scores: 1 above the k-th highest score, an equal share of
    the places left for rows tied at it, 0 below; so top-k metrics do not depend on row order."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return np.zeros(0)
    k = min(k, s.size)
    kth = np.partition(s, s.size - k)[s.size - k]
    above = s > kth
    tied = s == kth
    weights = above.astype(np.float64)
    weights[tied] = (k - above.sum()) / tied.sum()
    return weights


def point_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The six headline metrics for 0/1 `labels` and `scores` (probabilities for a meaningful Brier)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = y.sum()
    n_neg = y.size - n_pos
    out = {k: math.nan for k in METRIC_KEYS}
    if y.size == 0:
        return out
    out["brier"] = float(np.mean((s - y) ** 2))
    k = max(1, math.ceil(0.01 * y.size))
    out["precision_at_top_1pct"] = float(top_k_weights(s, k) @ y / k)
    if n_pos == 0 or n_neg == 0:
        return out
    tp, fp, _ = _curve(y, s)
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    out["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tp / (tp + fp)
    out["average_precision"] = float(np.sum(np.diff(tpr) * precision))
    out["ks"] = float(np.max(np.abs(tpr - fpr)))
    out["recall_at_1pct_fpr"] = float(tpr[fpr <= 0.01].max())
    return out


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve); 0 when there is no positive."""
    value = point_metrics(labels, scores)["average_precision"]
    return 0.0 if math.isnan(value) else value


def weighted_average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """Average precision with row weights (ties as one threshold); 0 without a weighted positive."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    if y.size == 0:
        return 0.0
    tp, fp, _ = _curve(y, np.asarray(scores, dtype=np.float64).ravel(),
                       np.asarray(weights, dtype=np.float64).ravel())
    if tp[-1] <= 0:
        return 0.0
    recall = np.r_[0.0, tp / tp[-1]]
    return float(np.sum(np.diff(recall) * tp / (tp + fp)))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes are present."""
    return point_metrics(labels, scores)["roc_auc"]


def calibration_curve(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted probability and observed positive rate per quantile bin of `probs`."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if c.size]
    return {"mean_predicted": [float(p[c].mean()) for c in chunks],
            "observed_rate": [float(y[c].mean()) for c in chunks],
            "count": [int(c.size) for c in chunks]}


def interval(values: np.ndarray, point: float, alpha: float = 0.05) -> dict[str, float]:
    """{"value": point, "lo", "hi"}: the (1 - alpha) percentile interval of finite bootstrap values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"value": point, "lo": math.nan, "hi": math.nan}
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return {"value": point, "lo": float(lo), "hi": float(hi)}


def cluster_codes(clusters: np.ndarray | None, n_rows: int) -> np.ndarray | None:
    """Dense integer codes 0..k-1 of per-row cluster ids (None stays None); the count must match."""
    if clusters is None:
        return None
    ids = np.asarray(clusters).ravel()
    if ids.size != n_rows:
        raise ValueError(f"bootstrap: {ids.size} cluster ids for {n_rows} rows")
    return np.unique(ids, return_inverse=True)[1].ravel()


def resample_rows(rng: np.random.Generator, n_rows: int, codes: np.ndarray | None) -> np.ndarray:
    """Row indices of one bootstrap resample: rows drawn with replacement, or, with cluster `codes`
    (see `cluster_codes`; e.g. the account), whole clusters drawn with replacement and all their rows
    taken, so rows of one account seen at several cutoffs are not counted as independent evidence."""
    if codes is None:
        return rng.integers(0, n_rows, n_rows)
    n_clusters = int(codes.max(initial=-1)) + 1
    times = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
    return np.repeat(np.arange(n_rows), times[codes])


def bootstrap_draws(labels: np.ndarray, scores: Mapping[str, np.ndarray], *, n_boot: int = 200,
                    seed: int = 0, clusters: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every metric of every model on `n_boot` resamples (by `clusters` when given, see
    `resample_rows`); models share the resamples (paired).

    Returns {model: {metric: array of n_boot values}}.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    codes = cluster_codes(clusters, y.size)
    rng = np.random.default_rng(seed)
    draws = {name: {k: np.empty(n_boot) for k in METRIC_KEYS} for name in scores}
    for b in range(n_boot):
        idx = resample_rows(rng, y.size, codes)
        for name, s in scores.items():
            m = point_metrics(y[idx], np.asarray(s)[idx])
            for k in METRIC_KEYS:
                draws[name][k][b] = m[k]
    return draws


def intervals_from_draws(labels: np.ndarray, scores: Mapping[str, np.ndarray],
                         draws: Mapping[str, Mapping[str, np.ndarray]],
                         alpha: float = 0.05) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {metric: {"value", "lo", "hi"}}} from point metrics and bootstrap draws."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, s in scores.items():
        point = point_metrics(labels, s)
        out[name] = {k: interval(np.asarray(draws[name][k]), point[k], alpha) for k in METRIC_KEYS}
    return out


def bootstrap_metrics(labels: np.ndarray, scores: Mapping[str, np.ndarray], *, n_boot: int = 200,
                      seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, dict[str, float]]]:
    """Each model's metrics with a (1 - alpha) paired bootstrap interval.

    Returns {model: {metric: {"value", "lo", "hi"}}}.
    """
    draws = bootstrap_draws(labels, scores, n_boot=n_boot, seed=seed)
    return intervals_from_draws(labels, scores, draws, alpha)


def bootstrap_difference(labels: np.ndarray, a: np.ndarray, b: np.ndarray, *,
                         metric: str = "average_precision", n_boot: int = 200, seed: int = 0,
                         alpha: float = 0.05, clusters: np.ndarray | None = None) -> dict[str, float]:
    """metric(a) - metric(b) on the same rows, with a paired bootstrap interval (does it exclude 0?)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    a, b = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    codes = cluster_codes(clusters, y.size)
    for i in range(n_boot):
        idx = resample_rows(rng, y.size, codes)
        diffs[i] = point_metrics(y[idx], a[idx])[metric] - point_metrics(y[idx], b[idx])[metric]
    point = point_metrics(y, a)[metric] - point_metrics(y, b)[metric]
    return interval(diffs, float(point), alpha)


def group_metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, float]]:
    """Per group of positives (e.g. planted pattern): count, AUC against all negatives, recall in top 1%.

    `groups` names each row's group; only positive rows' groups matter.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(groups).astype(str).ravel()
    top = top_k_weights(s, max(1, math.ceil(0.01 * y.size)))
    negatives = y == 0
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(g[y > 0].tolist())):
        members = (y > 0) & (g == name)
        keep = members | negatives
        out[name] = {"positives": float(members.sum()),
                     "roc_auc": point_metrics(y[keep], s[keep])["roc_auc"],
                     "recall_at_top_1pct": float(top[members].mean())}
    return out
