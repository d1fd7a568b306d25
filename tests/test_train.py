"""Training, calibration and bands on a small seeded bank with a planted ORDER pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import order_batch, shuffle_sequences

from riskmodel.bands import BandPolicy, assign_bands
from riskmodel.batch import SequenceBatch
from riskmodel.calibrate import Calibrator, fit_calibrator, sigmoid
from riskmodel.errors import ConfigError
from riskmodel.metrics import point_metrics, weighted_average_precision
from riskmodel.model import ModelConfig, RiskLSTM
from riskmodel.retrain import predict_proba
from riskmodel.train import (
    TrainConfig,
    TrainResult,
    WeightAverage,
    early_stop_sample,
    predict_logits,
    train_model,
)

SIZES = {"hidden": 16, "head_hidden": 16, "dropout": 0.0}
FAST = TrainConfig(epochs=6, batch_size=64, lr=1e-2, patience=2, device="cpu", seed=3)


def _shards(tmp_path: Path, shuffled: bool = False) -> tuple[list[Path], list[Path]]:
    paths = []
    for seed in (11, 12, 13):
        batch = order_batch(300, seed=seed)
        batch = shuffle_sequences(batch, seed=seed) if shuffled else batch
        path = tmp_path / f"shard{seed}{'s' if shuffled else ''}.npz"
        batch.save(path)
        paths.append(path)
    return paths[:2], paths[2:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, list[Path], list[Path]]:
    train, valid = _shards(tmp_path_factory.mktemp("shards"))
    config = ModelConfig.for_batch(order_batch(2), [6], [4], **SIZES)
    return train_model(train, valid, model_config=config, config=FAST), train, valid


def test_training_learns_the_order_pattern_and_ranks_planted_accounts_first(trained) -> None:
    result, _, _ = trained
    metrics = point_metrics(result.valid_labels, result.valid_logits)
    assert metrics["roc_auc"] > 0.9
    n_pos = int(result.valid_labels.sum())
    top = np.argsort(-result.valid_logits)[:n_pos]
    assert result.valid_labels[top].mean() > 0.85
    assert result.best_val_ap == pytest.approx(metrics["average_precision"])
    assert result.history[0]["epoch"] == 1.0


def test_training_is_deterministic_with_a_seed(trained) -> None:
    first, train, valid = trained
    again = train_model(train, valid, model_config=first.config, config=FAST)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert np.array_equal(first.valid_logits, again.valid_logits)


def test_shuffled_order_removes_the_signal(tmp_path: Path) -> None:
    train, valid = _shards(tmp_path, shuffled=True)
    config = ModelConfig.for_batch(order_batch(2), [6], [4], **SIZES)
    result = train_model(train, valid, model_config=config, config=FAST)
    assert point_metrics(result.valid_labels, result.valid_logits)["roc_auc"] < 0.8


def test_progress_callback_and_time_budget(tmp_path: Path) -> None:
    train, valid = _shards(tmp_path)
    calls: list[tuple[int, int, int, dict]] = []
    budget = TrainConfig(epochs=50, batch_size=32, device="cpu", max_train_minutes=0.0)
    result = train_model(train, valid, config=budget,
                         on_progress=lambda e, s, t, m: calls.append((e, s, t, m)))
    assert result.stopped == "time_budget"
    assert len(result.history) == 1
    assert calls and calls[-1][3]["val_ap"] == result.history[0]["val_ap"]
    assert calls[-1][2] == 2 * -(-300 // 32)


def test_training_without_positives_is_refused(tmp_path: Path) -> None:
    batch = order_batch(50, seed=1)
    batch.label[:] = 0
    with pytest.raises(ConfigError, match="positives"):
        train_model([batch], [order_batch(50, seed=2)], config=FAST)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_improves_brier_on_miscalibrated_scores(method: str) -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-3.0, 1.5, 20_000)
    labels = (rng.random(true_logit.size) < sigmoid(true_logit)).astype(float)
    skewed = 3.0 * true_logit + 4.0
    fit, test = slice(0, 10_000), slice(10_000, None)
    calibrator = fit_calibrator(skewed[fit], labels[fit], method)
    raw = point_metrics(labels[test], sigmoid(skewed[test]))["brier"]
    calibrated = point_metrics(labels[test], calibrator.apply(skewed[test]))["brier"]
    assert calibrated < 0.8 * raw
    again = Calibrator.from_dict(calibrator.to_dict())
    assert np.array_equal(again.apply(skewed[test]), calibrator.apply(skewed[test]))
    assert np.all(np.diff(calibrator.apply(np.sort(skewed[test]))) >= 0)


def test_capacity_bands_give_the_configured_volumes() -> None:
    rng = np.random.default_rng(1)
    policy = BandPolicy(mode="capacity", high=0.005, medium=0.045).fit(rng.random(100_000))
    bands = assign_bands(rng.random(200_000), policy)
    assert abs((bands == "high").mean() - 0.005) < 0.001
    assert abs((bands == "medium").mean() - 0.045) < 0.003
    assert set(bands.tolist()) == {"low", "medium", "high"}
    assert BandPolicy.from_dict(policy.to_dict()) == policy


def test_probability_bands_and_bad_policies() -> None:
    policy = BandPolicy(mode="probability", high=0.5, medium=0.1)
    assert assign_bands(np.array([0.05, 0.1, 0.49, 0.5, 0.9]), policy).tolist() == [
        "low", "medium", "medium", "high", "high"]
    with pytest.raises(ConfigError, match="not fitted"):
        assign_bands(np.array([0.1]), BandPolicy(mode="capacity"))
    with pytest.raises(ConfigError, match="medium"):
        BandPolicy(mode="probability", high=0.1, medium=0.5)


def test_weighted_average_precision_matches_replicated_rows() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.2).astype(np.float32)
    s = np.round(rng.random(400) + 0.5 * y, 2)
    plain = point_metrics(y, s)["average_precision"]
    assert weighted_average_precision(y, s, np.ones(400)) == pytest.approx(plain)
    weights = np.where(y > 0, 1.0, 4.0)
    replicated = np.r_[np.arange(400)[y > 0], np.repeat(np.arange(400)[y == 0], 4)]
    expected = point_metrics(y[replicated], s[replicated])["average_precision"]
    assert weighted_average_precision(y, s, weights) == pytest.approx(expected)
    assert weighted_average_precision(np.zeros(3), np.ones(3), np.ones(3)) == 0.0


def test_early_stop_sample_keeps_positives_and_weights_back_the_negatives(tmp_path: Path) -> None:
    batch = order_batch(4000, seed=21)
    path = tmp_path / "valid.npz"
    batch.save(path)
    parts, weights = early_stop_sample([path], keep=0.25, seed=3)
    again, _ = early_stop_sample([path], keep=0.25, seed=3)
    kept = parts[0]
    assert int(kept.label.sum()) == int(batch.label.sum())
    negatives = int((batch.label == 0).sum())
    assert 0.2 < int((kept.label == 0).sum()) / negatives < 0.3
    assert np.array_equal(weights, np.where(kept.label > 0, 1.0, 4.0))
    assert np.array_equal(kept.num, again[0].num)
    with pytest.raises(ConfigError, match="valid_negative_keep"):
        early_stop_sample([path], keep=0.0, seed=3)


def test_sampled_early_stopping_still_returns_the_whole_validation_window(trained) -> None:
    result, train, valid = trained
    full = TrainConfig(**{**FAST.__dict__, "valid_negative_keep": 1.0})
    whole = train_model(train, valid, model_config=result.config, config=full)
    n_valid = sum(len(SequenceBatch.load(p)) for p in valid)
    assert FAST.valid_negative_keep < 1.0
    assert result.valid_logits.shape == whole.valid_logits.shape == (n_valid,)
    assert result.best_val_ap == pytest.approx(point_metrics(result.valid_labels, result.valid_logits)
                                               ["average_precision"])
    assert result.rows_per_epoch == sum(len(SequenceBatch.load(p)) for p in train)


def test_predict_proba_runs_on_one_thread_and_restores_the_count(trained) -> None:
    result, _, valid = trained
    calibrator = fit_calibrator(result.valid_logits, result.valid_labels)
    before = torch.get_num_threads()
    one, labels = predict_proba(result.model, calibrator, valid, device="cpu")
    default, _ = predict_proba(result.model, calibrator, valid, device="cpu", threads=0)
    assert torch.get_num_threads() == before
    assert np.allclose(one, default, atol=1e-6)
    assert np.array_equal(one, calibrator.apply(result.valid_logits))
    assert np.array_equal(labels, result.valid_labels)
    with pytest.raises(ConfigError, match="threads"):
        predict_proba(result.model, calibrator, valid, threads=-1)


def test_weight_average_warms_up_then_converges_to_a_model_that_stops_moving() -> None:
    torch.manual_seed(0)
    model = RiskLSTM(ModelConfig.for_batch(order_batch(2), [6], [4], **SIZES))
    average = WeightAverage(model, decay=0.9)
    start = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    first = (1.0 + 1) / (10.0 + 1)
    for p0, p in zip(start, average.model.parameters(), strict=True):
        assert torch.allclose(p, p0 + (1.0 - first), atol=1e-6)
    for _ in range(200):
        average.update(model)
    assert average.steps == 201
    for p, target in zip(average.model.parameters(), model.parameters(), strict=True):
        assert torch.allclose(p, target, atol=1e-5)
    assert torch.equal(average.model.agg_mean, model.agg_mean)
    with pytest.raises(ConfigError, match="ema_decay"):
        WeightAverage(model, decay=1.0)


def test_training_with_a_weight_average_returns_and_judges_the_average(trained) -> None:
    plain, train, valid = trained
    config = TrainConfig(**{**FAST.__dict__, "ema_decay": 0.9})
    result = train_model(train, valid, model_config=plain.config, config=config)
    again = train_model(train, valid, model_config=plain.config, config=config)
    assert point_metrics(result.valid_labels, result.valid_logits)["roc_auc"] > 0.9
    assert not all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                        plain.model.state_dict().values(), strict=True))
    logits, _ = predict_logits(result.model, valid, torch.device("cpu"))
    assert np.array_equal(logits, result.valid_logits)
    assert np.array_equal(result.valid_logits, again.valid_logits)
