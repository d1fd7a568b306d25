"""Order ablation: shuffled snapshots keep accounts, labels, time slots and multisets; recency moves."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from riskmodel.ablation import permute_within
from riskmodel.batch import SequenceBatch
from riskmodel.lake import extract
from riskmodel.settings import Settings
from riskmodel.snapshots import build_training_shards, fit_feature_state
from riskmodel.spec import FeatureSpec
from tests.datapath_helpers import END, seed_tiny_bank


def test_permute_within_moves_positions_only_inside_their_group() -> None:
    owner = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 9, 50))
    perm = permute_within(owner, np.random.default_rng(1))
    assert sorted(perm.tolist()) == list(range(owner.size))
    assert np.array_equal(owner[perm], owner)
    assert (perm != np.arange(owner.size)).sum() > owner.size // 2


def _build(settings: Settings, spec: FeatureSpec, state, tmp_path, name: str,
           order_seed: int | None) -> SequenceBatch:
    t = END - timedelta(days=10)
    paths = build_training_shards(settings, spec, state, [t], tmp_path / name, as_of=END,
                                  order_seed=order_seed)
    return SequenceBatch.concat([SequenceBatch.load(p) for p in paths])


def test_ablated_snapshots_shuffle_events_and_recompute_aggregates(initialised: Settings,
                                                                   demo_spec: FeatureSpec, tmp_path) -> None:
    spec = demo_spec.model_copy(update={"horizon_days": 3, "reporting_lag_days": 2, "max_seq_len": 12})
    seed_tiny_bank(initialised, accounts=40, days=40)
    extract(initialised, spec, END)
    state = fit_feature_state(initialised, spec, END - timedelta(days=39), END - timedelta(days=10))
    real = _build(initialised, spec, state, tmp_path, "real", None)
    shuffled = _build(initialised, spec, state, tmp_path, "shuffled", 3)
    again = _build(initialised, spec, state, tmp_path, "again", 3)
    other = _build(initialised, spec, state, tmp_path, "other", 4)

    for field in ("account_id", "label", "lengths", "time", "static_num", "static_cat"):
        assert np.array_equal(getattr(shuffled, field), getattr(real, field)), field
    assert np.array_equal(again.num, shuffled.num) and np.array_equal(again.agg, shuffled.agg)
    assert not np.array_equal(other.num, shuffled.num)
    moved = 0
    for i, k in enumerate(real.lengths):
        before = np.c_[real.num[i, :k], real.cat[i, :k]]
        after = np.c_[shuffled.num[i, :k], shuffled.cat[i, :k]]
        assert sorted(map(tuple, before)) == sorted(map(tuple, after))
        assert not shuffled.num[i, k:].any() and not shuffled.cat[i, k:].any()
        moved += not np.array_equal(before, after)
    assert moved >= 0.8 * len(real)
    assert (real.lengths == spec.max_seq_len).any(), "some histories must be longer than the sequence"

    names = real.names["agg"]
    col = {name: j for j, name in enumerate(names)}
    for name in ("amount_count_1d", "amount_count_7d", "amount_count_90d", "days_since_last_event"):
        assert np.array_equal(shuffled.agg[:, col[name]], real.agg[:, col[name]]), name
    assert np.allclose(shuffled.agg[:, col["amount_sum_90d"]], real.agg[:, col["amount_sum_90d"]])
    recent = shuffled.agg[:, col["amount_sum_3d"]] != real.agg[:, col["amount_sum_3d"]]
    assert recent.mean() > 0.5, "recency aggregates must follow the shuffled events"
