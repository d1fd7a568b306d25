"""Retrain steps: out-of-time split with a horizon gap, account-hash fallback, negative sampling."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from flows.cli import build_parser
from flows.commands.flowruns import blend_line, evaluation_window_line
from flows.params import RetrainParams
from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.retrain import (
    baseline_cutoffs,
    downsample_negatives,
    hash_part,
    lstm_train_config,
    plan_retrain,
    plan_split,
)
from riskmodel.settings import DEMO_SPEC
from riskmodel.spec import load_spec


def test_out_of_time_split_keeps_an_h_day_gap_before_validation() -> None:
    cutoffs = [date(2026, 1, 1) + timedelta(days=7 * i) for i in range(12)]
    split = plan_split(cutoffs, horizon_days=14)
    assert split.kind == "out_of_time"
    assert split.test == cutoffs[-2:]
    assert split.valid == [t for t in cutoffs if t <= cutoffs[-2] - timedelta(days=14)][-2:]
    assert split.train == [t for t in cutoffs if t <= split.valid[0] - timedelta(days=14)]
    assert split.train and max(split.train) < min(split.valid) < min(split.test)


def test_the_baseline_trains_on_denser_cutoffs_of_the_same_training_window() -> None:
    spec = load_spec(DEMO_SPEC)
    as_of = date(2026, 6, 30)
    start, split = plan_retrain(spec, as_of, train_days=120, every_days=7)
    dense = baseline_cutoffs(spec, split, start, every_days=3, as_of=as_of)
    assert dense[0] == split.train[0] == start
    assert {b - a for a, b in zip(dense, dense[1:], strict=False)} == {timedelta(days=3)}
    assert max(split.train) - timedelta(days=2) <= dense[-1] <= max(split.train)
    assert len(dense) > 2 * len(split.train)
    hashed = plan_split([start], horizon_days=spec.horizon_days)
    assert baseline_cutoffs(spec, hashed, start, every_days=3, as_of=as_of) == hashed.train


def test_too_few_cutoffs_fall_back_to_account_hash_split(caplog: pytest.LogCaptureFixture) -> None:
    split = plan_split([date(2026, 3, 1)], horizon_days=30)
    assert split.kind == "account_hash"
    assert not caplog.records
    assert plan_split([date(2026, 3, 1) + timedelta(days=7 * i) for i in range(4)], 30).kind == "account_hash"
    assert "cannot hold training, validation and test windows 30 days apart" in caplog.text
    dense = [date(2026, 1, 1) + timedelta(days=3 * i) for i in range(26)]
    shrunk = plan_split(dense, horizon_days=30)
    assert shrunk.kind == "out_of_time" and len(shrunk.test) == len(shrunk.valid) >= 1 and shrunk.train
    assert shrunk.valid[-1] <= shrunk.test[0] - timedelta(days=30)
    assert shrunk.train[-1] <= shrunk.valid[0] - timedelta(days=30)
    with pytest.raises(ConfigError, match="closed label window"):
        plan_split([], horizon_days=30)
    parts = hash_part(np.arange(20_000, dtype=np.int64))
    shares = np.bincount(parts) / parts.size
    assert np.allclose(shares, [0.70, 0.15, 0.15], atol=0.02)
    assert np.array_equal(parts, hash_part(np.arange(20_000, dtype=np.int64)))


def test_downsampling_keeps_every_positive_and_a_share_of_negatives(tmp_path: Path) -> None:
    batch = SequenceBatch.empty(n=4000, seq_len=3, n_num=1, n_cat=1, n_time=4, n_static_num=0,
                                n_static_cat=0, n_agg=0)
    batch.label = (np.arange(4000) % 40 == 0).astype(np.float32)
    batch.lengths[:] = 1
    source = tmp_path / "train-shard-0000.npz"
    batch.save(source)
    first = downsample_negatives([source], tmp_path / "a", keep=0.25, seed=3)
    again = downsample_negatives([source], tmp_path / "b", keep=0.25, seed=3)
    kept = SequenceBatch.load(first[0])
    assert int(kept.label.sum()) == 100
    assert 0.2 < (len(kept) - 100) / 3900 < 0.3
    assert np.array_equal(kept.account_id, SequenceBatch.load(again[0]).account_id)
    assert downsample_negatives([source], tmp_path / "c", keep=1.0, seed=3) == [source]


def test_the_challenger_and_the_ablation_each_get_the_whole_training_budget() -> None:
    for run_ablation in (True, False):
        params = RetrainParams(max_train_minutes=20.0, run_ablation=run_ablation, seed=5).model_dump()
        config = lstm_train_config(params, device="cpu")
        assert (config.max_train_minutes, config.seed, config.device) == (20.0, 5, "cpu")
    assert lstm_train_config(params, seed=9).seed == 9


def test_the_positive_weight_cap_reaches_the_training_config() -> None:
    args = build_parser().parse_args(["train", "--max-pos-weight", "4"])
    params = RetrainParams(max_pos_weight=args.max_pos_weight).model_dump()
    assert lstm_train_config(params).max_pos_weight == 4.0
    assert lstm_train_config(RetrainParams().model_dump()).max_pos_weight == RetrainParams().max_pos_weight


def test_the_train_report_names_the_blend_weight_only_for_a_blended_model() -> None:
    assert blend_line(None) == ""
    assert "LSTM weight in the served blend: 0.3" in blend_line(0.3)
    assert "LightGBM alone" in blend_line(0.0) and blend_line(0.0).endswith("\n")


def test_the_train_report_says_how_many_positives_the_test_window_held() -> None:
    result = {"test_rows": 11952, "test_positives": 7,
              "intervals": {"model": {"average_precision": {"value": 0.2396, "lo": 0.0512, "hi": 0.5871}}}}
    assert evaluation_window_line(result) == ("test window: 11952 rows, 7 positives; served model AP 0.240 "
                                        "[0.051, 0.587] (95% account bootstrap)\n")


def test_riskflow_train_defaults_are_the_flow_parameters_defaults() -> None:
    args = build_parser().parse_args(["train"])
    defaults = RetrainParams()
    assert (args.train_days, args.every, args.epochs, args.hidden) == (
        defaults.train_days, defaults.cutoff_every_days, defaults.epochs, defaults.hidden_size)
    assert (args.max_train_minutes, args.negative_keep, args.seed, args.max_embedded_cardinality) == (
        defaults.max_train_minutes, defaults.negative_keep, defaults.seed, defaults.max_embedded_cardinality)
    assert (args.baseline_every, args.baseline_negative_keep, args.aggregate_dropout, args.ema_decay,
            args.max_pos_weight) == (
        defaults.baseline_cutoff_every_days, defaults.baseline_negative_keep, defaults.aggregate_dropout,
        defaults.ema_decay, defaults.max_pos_weight)
