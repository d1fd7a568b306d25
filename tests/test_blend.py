"""The served blend: LSTM and LightGBM log-odds standardised on validation, stored without pickle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import order_batch

from riskmodel.bands import BandPolicy
from riskmodel.blend import BLEND_WEIGHTS, BOOSTER_FILE, fit_blend, fit_weighted_blend, log_odds
from riskmodel.calibrate import Calibrator
from riskmodel.errors import ConfigError, ModelIntegrityError
from riskmodel.evaluate import train_baseline
from riskmodel.model import ModelConfig, RiskLSTM, batch_tensors
from riskmodel.registry import load_artifact, save_artifact
from riskmodel.retrain import fit_served_blend, model_proba
from riskmodel.score import ScoreReport, score_batch


def _net() -> RiskLSTM:
    torch.manual_seed(3)
    net = RiskLSTM(ModelConfig.for_batch(order_batch(2, seq_len=8), [6], [4], hidden=8))
    net.set_agg_stats(order_batch(50, seq_len=8).agg)
    return net.eval()


def test_blend_standardises_each_model_on_validation() -> None:
    rng = np.random.default_rng(0)
    lstm, gbdt = rng.normal(3.0, 2.0, 500), rng.beta(1.0, 20.0, 500)
    only_lstm = fit_blend(lstm, gbdt, "", 0, weight=1.0).combine(lstm, gbdt)
    assert only_lstm.mean() == pytest.approx(0.0, abs=1e-9) and only_lstm.std() == pytest.approx(1.0)
    only_gbdt = fit_blend(lstm, gbdt, "", 0, weight=0.0).combine(lstm, gbdt)
    assert np.array_equal(np.argsort(only_gbdt), np.argsort(log_odds(gbdt)))
    half = fit_blend(lstm, gbdt, "", 0).combine(lstm, gbdt)
    assert np.allclose(half, 0.5 * only_lstm + 0.5 * only_gbdt)
    with pytest.raises(ConfigError, match="500 LSTM validation rows but 499 LightGBM rows"):
        fit_blend(lstm, gbdt[:-1], "", 0)
    with pytest.raises(ConfigError, match="weight must be in"):
        fit_blend(lstm, gbdt, "", 0, weight=1.5)


def test_the_blend_weight_follows_the_model_that_ranks_validation_better() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(4000) < 0.05).astype(np.float32)
    signal = labels * 2.0 + rng.normal(0.0, 1.0, labels.size)
    noise = rng.normal(0.0, 1.0, labels.size)
    probs = lambda logits: 1.0 / (1.0 + np.exp(-logits))  # noqa: E731
    assert fit_weighted_blend(signal, probs(noise), labels).weight == 1.0
    assert fit_weighted_blend(noise, probs(signal), labels).weight == 0.0
    assert fit_weighted_blend(signal, probs(signal), labels).weight == 0.5
    other = labels * 2.0 + rng.normal(0.0, 1.0, labels.size)
    assert 0.0 < fit_weighted_blend(signal, probs(other), labels).weight < 1.0
    assert sorted(BLEND_WEIGHTS) == [k / 10 for k in range(11)]


def test_blended_artifact_scores_like_its_parts_skips_an_unused_lstm_and_refuses_a_changed_booster(
        tmp_path: Path) -> None:
    train, valid, test = (order_batch(400, seq_len=8, seed=s) for s in (1, 2, 3))
    baseline = train_baseline([train], [valid], seed=1, rounds=20, threads=1)
    net = _net()
    with torch.no_grad():
        valid_logits = net(**batch_tensors(valid)).numpy()
        test_logits = net(**batch_tensors(test)).numpy()
    blend, calibrator, bands = fit_served_blend(
        valid_logits, valid.label, baseline.predict([valid]),
        baseline.booster.model_to_string(num_iteration=baseline.best_iteration), baseline.best_iteration,
        BandPolicy(mode="capacity", high=0.05, medium=0.2))
    assert calibrator.method == "temperature" and bands.high_threshold is not None
    manifest = {"version": "b", "model": net.config.to_dict(), "calibration": calibrator.to_dict(),
                "bands": bands.to_dict(), "blend": blend.to_dict()}
    sha, files = save_artifact(tmp_path / "b", net, manifest, blend)
    assert set(files) == {"manifest.json", "model.safetensors", BOOSTER_FILE}
    loaded = load_artifact(tmp_path / "b", sha, files)
    assert loaded.blend is not None
    assert np.allclose(loaded.blend.gbdt_probs([test]), baseline.predict([test]))
    expected = blend.combine(test_logits, baseline.predict([test]))
    assert np.allclose(loaded.predict_logits(test, device="cpu"), expected)
    assert np.allclose(loaded.predict_proba(test, device="cpu"), calibrator.apply(expected))

    shard = tmp_path / "test-shard.npz"
    test.save(shard)
    forwards: list[int] = []
    loaded.net.register_forward_hook(lambda _m, _a, kwargs, _out: forwards.append(len(kwargs["lengths"])),
                                     with_kwargs=True)
    for weight in (0.0, 0.3):
        loaded.blend = replace(blend, weight=weight)
        report = ScoreReport(device="cpu", precision="fp32", batch_size=64)
        probs = score_batch(loaded, test, device="cpu", batch_size=64, report=report)
        weighted = replace(blend, weight=weight).combine(test_logits, baseline.predict([test]))
        assert np.allclose(probs, calibrator.apply(weighted), atol=1e-6)
        assert report.lstm_ran == (weight > 0) and (sum(forwards) == len(test)) == (weight > 0)
        forwards.clear()
        assert np.allclose(model_proba(loaded, [shard], device="cpu"), probs, atol=1e-6)
        assert (sum(forwards) == len(test)) == (weight > 0)
        forwards.clear()

    booster = tmp_path / "b" / BOOSTER_FILE
    booster.write_text(booster.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(ModelIntegrityError, match=f"{BOOSTER_FILE} has sha256"):
        load_artifact(tmp_path / "b", sha, files)
    booster.unlink()
    with pytest.raises(ModelIntegrityError, match=f"{BOOSTER_FILE} cannot be read"):
        load_artifact(tmp_path / "b", sha, files)
    with pytest.raises(ModelIntegrityError, match=f"{BOOSTER_FILE} is missing"):
        load_artifact(tmp_path / "b")


def test_an_unblended_artifact_has_no_booster(tmp_path: Path) -> None:
    net = _net()
    manifest = {"version": "x", "model": net.config.to_dict(), "calibration": Calibrator().to_dict(),
                "bands": BandPolicy(mode="probability", high=0.5, medium=0.1).to_dict()}
    sha, files = save_artifact(tmp_path / "x", net, manifest)
    assert load_artifact(tmp_path / "x", sha).blend is None
    (tmp_path / "x" / BOOSTER_FILE).write_text("tree\n")
    with pytest.raises(ModelIntegrityError, match="was registered"):
        load_artifact(tmp_path / "x", sha, files)


def test_scoring_a_blend_without_lightgbm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    blend = fit_blend(np.zeros(3) + [0, 1, 2], np.array([0.1, 0.2, 0.3]), "tree\n", 1)
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(ConfigError, match="pip install lightgbm"):
        blend.gbdt_probs([order_batch(4, seq_len=8)])
