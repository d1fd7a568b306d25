"""The model bench's rows: AP margins per seed and over seeds, and the blend weight validation chose."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.model import MODELS, SEEDS, TABLE_COLUMNS, _rows
from bench.model import run as run_model
from flows.commands.bench import run as run_bench
from riskmodel.blend import blend_probs
from riskmodel.errors import ConfigError


def test_rows_report_the_weight_validation_chose_and_the_blend_it_ranks_by() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    y = (rng.random(n) < 0.05).astype(np.float32)
    signal = np.clip(0.4 * y + 0.6 * rng.random(n), 1e-4, 1 - 1e-4)
    probs, weights = {}, {}
    for seed in SEEDS:
        probs.update({f"{m}-{seed}": rng.random(n) * 0.98 + 0.01 for m in MODELS})
        probs[f"baseline-{seed}"] = signal
        for name, lstm in (("blend", "model"), ("blend_shuffled", "shuffled_order")):
            probs[f"{name}-{seed}"], weights[f"{name}-{seed}"] = blend_probs(
                (probs[f"{lstm}-{seed}"], signal), (probs[f"{lstm}-{seed}"], signal), y)
    result = {"bank": "synthetic", "split": "test", "labels": y, "accounts": np.arange(n),
              "groups": np.full(n, "bust_out"), "probs": probs, "training": {}, "blend_weights": weights,
              "seconds": 1.0, "output_mb": 0.0, "peak_rss_mb": 1.0}
    rows = _rows("S", result)
    assert [r["seeds"] for r in rows] == [str(s) for s in SEEDS] + ["mean of 1,2,3"]
    assert all(set(TABLE_COLUMNS) <= set(r) for r in rows)
    # The LSTM is noise and LightGBM carries the signal: validation gives the LSTM no weight, and
    # the blend then ranks exactly as LightGBM does.
    assert rows[-1]["blend_weight"] == "0.0/0.0/0.0"
    assert rows[0]["blend_ap"] == rows[0]["baseline_ap"] > rows[0]["lstm_ap"]
    assert rows[-1]["blend_minus_baseline"].startswith("+0.0000")
    assert rows[-1]["lstm_minus_baseline"].startswith("-")


def test_an_unknown_bank_or_a_bank_for_another_stage_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown bank.s. savings"):
        run_model("S", tmp_path, banks=["synthetic", "savings"])
    args = argparse.Namespace(stage="extract", scale="S", workdir=tmp_path, bank=["control"], json=None)
    with pytest.raises(ConfigError, match="--bank applies to --stage model, not 'extract'"):
        run_bench(args)
