"""Inference: OOM back-off gives identical scores, reloaded model equals in-memory, device and
precision choice."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from model_helpers import order_batch

from riskmodel.bands import BandPolicy
from riskmodel.calibrate import Calibrator
from riskmodel.errors import ConfigError
from riskmodel.model import ModelConfig, RiskLSTM
from riskmodel.registry import LoadedModel, load_artifact, save_artifact
from riskmodel.score import (
    ScoreReport,
    choose_device,
    cpu_bf16_supported,
    default_batch_size,
    score_batch,
    score_logits,
)
from riskmodel.settings import Settings


def _model() -> LoadedModel:
    torch.manual_seed(0)
    net = RiskLSTM(ModelConfig.for_batch(order_batch(2), [6], [4], hidden=16)).eval()
    net.set_agg_stats(order_batch(100).agg)
    calibrator = Calibrator("temperature", {"temperature": 1.5, "bias": -2.0})
    bands = BandPolicy(mode="capacity", high=0.05, medium=0.15)
    manifest = {"version": "mem", "model": net.config.to_dict(), "calibration": calibrator.to_dict(),
                "bands": bands.to_dict()}
    return LoadedModel(version="mem", sha256="", manifest=manifest, net=net, calibrator=calibrator,
                       bands=bands)


def test_oom_back_off_gives_identical_scores() -> None:
    model = _model()
    batch = order_batch(300, seed=5)
    reference = score_batch(model, batch, device="cpu", batch_size=512)
    sizes: list[int] = []

    def fail_above_40(size: int) -> None:
        sizes.append(size)
        if size > 40:
            raise torch.cuda.OutOfMemoryError("injected")

    report = ScoreReport(device="cpu", precision="fp32", batch_size=512)
    backed_off = score_batch(model, batch, device="cpu", batch_size=512, oom_hook=fail_above_40,
                             report=report)
    np.testing.assert_allclose(backed_off, reference, rtol=0, atol=1e-6)
    assert report.oom_retries == 3 and report.batch_size == 37
    assert sizes[:5] == [300, 150, 75, 37, 37]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        score_batch(model, batch, device="cpu", batch_size=8,
                    oom_hook=lambda size: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")))


def test_reloaded_model_predicts_like_the_in_memory_one(tmp_path: Path) -> None:
    model = _model()
    batch = order_batch(200, seed=6)
    model.bands = model.bands.fit(model.predict_proba(batch, device="cpu"))
    model.manifest["bands"] = model.bands.to_dict()
    sha, _ = save_artifact(tmp_path / "m", model.net, model.manifest)
    loaded = load_artifact(tmp_path / "m", sha)
    probs = model.predict_proba(batch, device="cpu")
    assert np.array_equal(loaded.predict_proba(batch, device="cpu"), probs)
    assert np.all((probs > 0) & (probs < 1))
    assert np.array_equal(loaded.band(probs), model.band(probs))
    assert (loaded.band(probs) == "high").sum() == 10


def test_batch_size_and_threads_do_not_change_scores() -> None:
    model = _model()
    batch = order_batch(128, seed=7)
    a = score_logits(model.net, batch, device="cpu", batch_size=128)
    b = score_logits(model.net, batch, device="cpu", batch_size=7, threads=1)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_an_unset_batch_size_is_the_devices_default() -> None:
    """With no batch size the CPU scores in chunks of 1024 (the nightly's setting is unset by
    default), and a batch larger than one chunk scores as it does in one piece."""
    model = _model()
    batch = order_batch(1500, seed=8)
    report = ScoreReport(device="cpu", precision="", batch_size=0)
    chunked = score_logits(model.net, batch, device="cpu", report=report)
    assert report.batch_size == default_batch_size(torch.device("cpu")) == 1024
    assert default_batch_size(torch.device("cuda")) == 4096
    whole = score_logits(model.net, batch, device="cpu", batch_size=1500)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert Settings.model_fields["score_batch_size"].default is None


def test_device_choice() -> None:
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'tpu'"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            choose_device("cuda")
    with pytest.raises(ConfigError, match="batch_size"):
        score_logits(_model().net, order_batch(3), device="cpu", batch_size=0)


def test_precision_choice_on_cpu() -> None:
    model = _model()
    batch = order_batch(200, seed=9)
    exact = score_logits(model.net, batch, device="cpu", batch_size=64)
    report = ScoreReport(device="cpu", precision="", batch_size=64)
    fp32 = score_logits(model.net, batch, device="cpu", batch_size=64, precision="fp32", report=report)
    assert np.array_equal(fp32, exact)
    assert report.precision == "fp32" and report.bf16_max_abs_diff is None
    report = ScoreReport(device="cpu", precision="", batch_size=64)
    fast = score_logits(model.net, batch, device="cpu", batch_size=64, precision="bf16", report=report)
    if not cpu_bf16_supported():
        assert report.precision == "fp32" and np.array_equal(fast, exact)
        return
    assert report.precision == "bf16" and 0 < report.bf16_max_abs_diff <= 0.02
    assert not np.array_equal(fast, exact)
    np.testing.assert_allclose(1 / (1 + np.exp(-fast)), 1 / (1 + np.exp(-exact)), rtol=0, atol=0.02)
    rerun = score_logits(model.net, batch, device="cpu", batch_size=64, precision="bf16")
    assert np.array_equal(rerun, fast)
    smaller = score_logits(model.net, batch, device="cpu", batch_size=7, precision="bf16")
    np.testing.assert_allclose(smaller, fast, rtol=0, atol=1e-3)
    strict = ScoreReport(device="cpu", precision="", batch_size=64)
    checked = score_logits(model.net, batch, device="cpu", batch_size=64, precision="bf16",
                           bf16_tolerance=0.0, report=strict)
    assert strict.precision == "fp32" and np.array_equal(checked, exact)
    unchecked = ScoreReport(device="cpu", precision="", batch_size=64)
    kept = score_logits(model.net, batch, device="cpu", batch_size=64, precision="bf16", bf16_sample=0,
                        bf16_tolerance=0.0, report=unchecked)
    assert unchecked.precision == "bf16" and unchecked.bf16_max_abs_diff is None
    assert np.array_equal(kept, fast)


def test_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="score_precision='fp16'"):
        score_logits(_model().net, order_batch(3), device="cpu", precision="fp16")
    with pytest.raises(pydantic.ValidationError, match="score_precision"):
        Settings(score_precision="fp16")


def test_length_sorted_trimmed_scoring_equals_the_full_forward() -> None:
    model = _model()
    batch = order_batch(150, seq_len=24, seed=8)
    batch.lengths[:3] = [1, 24, 2]
    with torch.no_grad():
        from riskmodel.model import batch_tensors

        full = model.net(**batch_tensors(batch)).numpy()
    np.testing.assert_allclose(score_logits(model.net, batch, device="cpu", batch_size=16), full,
                               rtol=0, atol=1e-5)


def test_inference_modules_import_with_torch_and_numpy_only() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('polars', 'prefect', 'psycopg', 'pydantic', 'sqlalchemy',\n"
        "                                  'pyarrow', 'lightgbm', 'matplotlib', 'pandas'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import riskmodel.model, riskmodel.train, riskmodel.score, riskmodel.registry\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_one_model_scores_shards_from_several_threads() -> None:
    model = _model()
    batches = [order_batch(120, seed=20 + k) for k in range(4)]
    expected = [score_batch(model, b, device="cpu", batch_size=16) for b in batches]
    flat_refs = model.net.lstm._flat_weight_refs
    score_batch(model, batches[0], device="cpu", batch_size=16)
    assert model.net.lstm._flat_weight_refs is flat_refs, "scoring again must not re-place the model"
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(15):
                got = score_batch(model, batches[k], device="cpu", batch_size=16)
                np.testing.assert_allclose(got, expected[k], rtol=0, atol=1e-6)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
