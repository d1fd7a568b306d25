"""Reason codes: occlusion ranks the group a score depends on first, only positive drops count."""

from __future__ import annotations

import numpy as np
import pytest

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.reasons import GROUP_LABELS, at_or_above, feature_groups, neutralise, reason_codes
from riskmodel.retrain import time_means

NAMES = {
    "num": ["amount"],
    "cat": ["mcc", "channel", "country", "merchant_id"],
    "time": ["log_gap", "log_age", "hour", "dow"],
    "static_num": ["credit_limit", "tenure_months"],
    "static_cat": ["segment", "home_country"],
    "agg": ["amt_sum_7d", "cnt_1d", "share_online_30d", "new_country_90d", "tiny_cnt_7d",
            "days_since_last", "mystery_feature"],
}


def _batch(n: int = 40, seed: int = 0) -> SequenceBatch:
    rng = np.random.default_rng(seed)
    b = SequenceBatch.empty(n=n, seq_len=6, n_num=1, n_cat=4, n_time=4, n_static_num=2,
                            n_static_cat=2, n_agg=len(NAMES["agg"]))
    b.lengths[:] = rng.integers(1, 7, n)
    real = np.arange(6)[None, :] < b.lengths[:, None]
    b.num[..., 0] = rng.normal(size=(n, 6)) * real
    b.cat[:] = rng.integers(2, 9, size=(n, 6, 4)) * real[..., None]
    b.time[:] = rng.normal(size=(n, 6, 4)) * real[..., None]
    b.static_num[:] = rng.normal(size=(n, 2))
    b.static_cat[:] = rng.integers(2, 5, size=(n, 2))
    b.agg[:] = rng.random((n, len(NAMES["agg"]))) * 5
    b.names = NAMES
    return b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_groups_match_names_and_ignore_unknown() -> None:
    groups = {g.key: g.columns for g in feature_groups(NAMES)}
    assert groups["amount_pattern"] == {"num": [0], "agg": [0]}
    assert groups["merchant_category"] == {"cat": [0, 3]}
    assert groups["country_channel"] == {"cat": [1, 2], "agg": [2, 3]}
    assert groups["timing"] == {"time": [0, 1, 2, 3], "agg": [5]}
    assert groups["recent_burst"] == {"agg": [1, 4]}
    assert groups["static_profile"] == {"static_num": [0, 1], "static_cat": [0, 1]}
    assert "activity_level" not in groups
    assert all(6 not in cols.get("agg", []) for cols in groups.values())


def test_neutralise_keeps_padding_and_the_other_groups() -> None:
    b = _batch()
    group = next(g for g in feature_groups(NAMES) if g.key == "country_channel")
    out = neutralise(b, group, np.full(len(NAMES["agg"]), -1.0, np.float32))
    real = np.arange(6)[None, :] < b.lengths[:, None]
    assert np.array_equal(out.cat[..., 1:3], np.where(real[..., None], 1, 0).repeat(2, axis=2))
    assert np.array_equal(out.cat[..., [0, 3]], b.cat[..., [0, 3]])
    assert np.all(out.agg[:, [2, 3]] == -1) and np.array_equal(out.agg[:, [0, 1, 4, 5, 6]],
                                                               b.agg[:, [0, 1, 4, 5, 6]])
    assert np.array_equal(b.cat, _batch().cat), "the input batch was modified"


def test_timing_is_occluded_with_the_training_means_of_real_events(tmp_path) -> None:
    b = _batch()
    timing = next(g for g in feature_groups(NAMES) if g.key == "timing")
    means = np.array([0.5, 1.5, -2.0, 3.0], np.float32)
    out = neutralise(b, timing, np.zeros(len(NAMES["agg"]), np.float32), means)
    real = np.arange(6)[None, :] < b.lengths[:, None]
    assert np.array_equal(out.time[real], np.broadcast_to(means, (int(real.sum()), 4)))
    assert np.array_equal(out.time[~real], b.time[~real]), "padding untouched"
    legacy = neutralise(b, timing, np.zeros(len(NAMES["agg"]), np.float32))
    assert np.all(legacy.time == 0)
    with pytest.raises(ConfigError, match="time_neutral has shape"):
        reason_codes(lambda x: np.zeros(len(x)), b, np.ones(40, bool), time_neutral=np.zeros(3))
    paths = []
    for k, part in enumerate((b.subset(np.arange(25)), b.subset(np.arange(25, 40)))):
        paths.append(tmp_path / f"train-shard-{k:04d}.npz")
        part.save(paths[-1])
    np.testing.assert_allclose(time_means(paths), b.time[real].astype(np.float64).mean(axis=0), rtol=1e-9)


def test_the_group_the_score_depends_on_ranks_first() -> None:
    b = _batch()
    calls: list[int] = []

    def predict(batch: SequenceBatch) -> np.ndarray:
        calls.append(len(batch))
        foreign_mcc = (batch.cat[..., 0] >= 5).sum(axis=1)            # merchant category, strongly
        burst = batch.agg[:, 1]                                      # cnt_1d, weakly
        return _sigmoid(1.5 * foreign_mcc + 0.2 * burst - 3)

    selected = np.zeros(len(b), bool)
    selected[::2] = True
    codes = reason_codes(predict, b, selected)
    assert len(codes) == len(b)
    assert all(codes[i] == [] for i in np.flatnonzero(~selected))
    has_mcc = (b.cat[..., 0] >= 5).sum(axis=1) > 0
    for i in np.flatnonzero(selected):
        assert codes[i], f"row {i} got no reasons"
        assert len(codes[i]) <= 2 and set(codes[i]) <= {"Merchant / category", "Recent burst of activity"}
        if has_mcc[i]:
            assert codes[i][0] == GROUP_LABELS["merchant_category"]
    assert calls == [int(selected.sum())] * (1 + len(feature_groups(NAMES)))


def test_only_positive_drops_and_top_k() -> None:
    b = _batch()

    def predict(batch: SequenceBatch) -> np.ndarray:
        return _sigmoid(batch.agg[:, 0] - batch.agg[:, 5] + 0.1 * batch.static_num[:, 0])

    codes = reason_codes(predict, b, np.ones(len(b), bool), top_k=1)
    assert all(len(c) <= 1 for c in codes)
    assert all("Transaction timing" not in c for c in codes)
    assert sum(c == ["Amount pattern"] for c in codes) >= len(b) - 5


def test_bands_selection_and_bad_inputs() -> None:
    bands = np.array(["low", "medium", "high", "low"])
    assert at_or_above(bands, "medium").tolist() == [False, True, True, False]
    assert at_or_above(bands, "low").all()
    with pytest.raises(ConfigError, match="min_band"):
        at_or_above(bands, "severe")
    with pytest.raises(ConfigError, match="selected has shape"):
        reason_codes(lambda x: np.zeros(len(x)), _batch(), np.ones(3, bool))
    with pytest.raises(ConfigError, match="agg_neutral has shape"):
        reason_codes(lambda x: np.zeros(len(x)), _batch(), np.ones(40, bool), agg_neutral=np.zeros(2))
