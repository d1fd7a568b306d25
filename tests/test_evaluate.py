"""Metrics against hand-computed values, bootstrap intervals, per-group results, baseline, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_helpers import order_batch

from riskmodel.evaluate import calibration_png, evaluate_models, pr_png, roc_png, train_baseline
from riskmodel.metrics import METRIC_KEYS, average_precision, group_metrics, point_metrics, roc_auc


def test_point_metrics_match_hand_computed_values() -> None:
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    m = point_metrics(y, s)
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["ks"] == pytest.approx(2 / 3)
    assert m["recall_at_1pct_fpr"] == pytest.approx(0.5)
    assert m["precision_at_top_1pct"] == 1.0
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert average_precision(np.zeros(3), np.ones(3)) == 0.0
    assert math.isnan(point_metrics(np.zeros(3), np.ones(3))["roc_auc"])


def test_ties_do_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(float)
    s = rng.integers(0, 5, 500).astype(float)
    groups = np.where(y == 1, np.where(rng.random(500) < 0.5, "a", "b"), "")
    first, first_groups = point_metrics(y, s), group_metrics(y, s, groups)
    for _ in range(20):
        perm = rng.permutation(500)
        assert point_metrics(y[perm], s[perm]) == pytest.approx(first)
        again = group_metrics(y[perm], s[perm], groups[perm])
        assert {g: pytest.approx(v) for g, v in first_groups.items()} == again
    one_positive = np.r_[1.0, np.zeros(99)]
    for labels in (one_positive, one_positive[::-1]):
        assert point_metrics(labels, np.ones(100))["precision_at_top_1pct"] == pytest.approx(0.01)
    assert point_metrics(np.r_[1.0, 0.0, 0.0], np.array([0.9, 0.9, 0.1]))["precision_at_top_1pct"] == 0.5


def test_evaluation_report_intervals_groups_and_plots() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.1).astype(float)
    good = np.clip(0.1 + 0.5 * y + rng.normal(0, 0.15, y.size), 0, 1)
    weak = np.clip(0.1 + 0.1 * y + rng.normal(0, 0.15, y.size), 0, 1)
    groups = np.where(y == 1, np.where(rng.random(y.size) < 0.5, "burst", "drift"), "")
    report = evaluate_models(y, {"model": good, "baseline": weak}, groups=groups, n_boot=50)
    assert set(report.evaluation) == {"model", "baseline"}
    assert set(report.evaluation["model"]) == set(METRIC_KEYS)
    for name, metrics in report.intervals.items():
        for key, iv in metrics.items():
            assert iv["lo"] <= iv["value"] <= iv["hi"], (name, key)
    diff = report.ap_difference["model_minus_baseline"]
    assert diff["lo"] > 0
    assert set(report.groups["model"]) == {"burst", "drift"}
    assert report.groups["model"]["burst"]["roc_auc"] > report.groups["baseline"]["burst"]["roc_auc"]
    assert report.table()[0]["model"] == "model"
    for png in (roc_png(y, {"model": good}), pr_png(y, {"model": good}), calibration_png(y, {"m": good})):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_group_metrics_counts_positives_per_group() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.05])
    g = np.array(["a", "b", "a", "", "", ""])
    out = group_metrics(y, s, g)
    assert out["a"]["positives"] == 2 and out["a"]["roc_auc"] == 1.0
    assert out["b"]["roc_auc"] == pytest.approx(1 / 3)


def test_lightgbm_baseline_learns_from_aggregates_not_order() -> None:
    train, valid = order_batch(1500, seed=21), order_batch(800, seed=22)
    for batch in (train, valid):
        batch.static_num[:, 0] = batch.label * 1.5 + np.random.default_rng(0).normal(0, 0.5, len(batch))
    baseline = train_baseline([train], [valid], seed=0, rounds=60)
    probs = baseline.predict([valid])
    assert probs.shape == (800,)
    assert point_metrics(valid.label, probs)["roc_auc"] > 0.9
    assert np.array_equal(baseline.predict([valid]), train_baseline([train], [valid], seed=0,
                                                                      rounds=60).predict([valid]))


def test_paired_difference_matches_the_standalone_bootstrap() -> None:
    from riskmodel.metrics import bootstrap_difference

    rng = np.random.default_rng(3)
    y = (rng.random(800) < 0.2).astype(float)
    a, b = y * 0.3 + rng.random(800), rng.random(800)
    report = evaluate_models(y, {"model": a, "baseline": b}, n_boot=40, seed=5)
    assert report.ap_difference["model_minus_baseline"] == pytest.approx(
        bootstrap_difference(y, a, b, n_boot=40, seed=5))


def test_cluster_bootstrap_counts_an_account_once_however_often_it_repeats() -> None:
    """Four identical copies of every account's row: resampling by account gives exactly the draws of
    the single copies, while resampling rows pretends the copies are evidence and narrows the interval."""
    from riskmodel.metrics import bootstrap_draws, interval

    rng = np.random.default_rng(11)
    y = (rng.random(400) < 0.15).astype(float)
    s = y * 0.5 + rng.random(400)
    ids = np.arange(400)
    y4, s4, ids4 = np.tile(y, 4), np.tile(s, 4), np.tile(ids, 4)
    single = bootstrap_draws(y, {"m": s}, n_boot=60, seed=3)["m"]
    by_account = bootstrap_draws(y4, {"m": s4}, n_boot=60, seed=3, clusters=ids4)["m"]
    by_row = bootstrap_draws(y4, {"m": s4}, n_boot=60, seed=3)["m"]
    for key in ("roc_auc", "average_precision"):
        np.testing.assert_allclose(by_account[key], single[key])

    def width(draws: np.ndarray) -> float:
        iv = interval(draws, 0.0)
        return iv["hi"] - iv["lo"]

    assert width(by_row["average_precision"]) < 0.75 * width(by_account["average_precision"])
    with pytest.raises(ValueError, match="cluster ids"):
        bootstrap_draws(y, {"m": s}, n_boot=2, clusters=ids[:10])
