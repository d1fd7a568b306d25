"""One LSTM candidate of a retrain: trained, calibrated, scored on the test window and saved as an
artifact folder (path + sha256) with its probabilities as .npy files, so that it can run in a
child process (`riskmodel.child`) and hand back only paths."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from riskmodel import registry, retrain
from riskmodel.train import ProgressFn


def save_probs(path: Path, probs: np.ndarray) -> str:
    """Write `probs` as float64 .npy (no pickle) and return the path as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(probs, dtype=np.float64), allow_pickle=False)
    return str(path)


def fit_candidate(name: str, train: list[str], valid: list[str], test: list[str], features: dict,
                  params: dict[str, Any], out_dir: str,
                  on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train, calibrate and band one LSTM as the retrain's `params` say; save it as candidate `name`
    under `out_dir` with its test and validation outputs; return their paths and the training summary
    (with when the work started and finished, UTC, which shows whether two candidates ran at once)."""
    started = datetime.now(UTC).isoformat()
    config = retrain.lstm_train_config(params)
    fitted = retrain.fit_model([Path(p) for p in train], [Path(p) for p in valid], features=features,
                               config=config, on_progress=on_progress, **retrain.lstm_model_options(params))
    logits, labels = retrain.lstm_logits(fitted.net, [Path(p) for p in test], device=config.device)
    probs = fitted.calibrator.apply(logits)
    folder = Path(out_dir) / name
    features = {**features, "agg_neutral": retrain.aggregate_medians([Path(p) for p in train]),
                "time_neutral": retrain.time_means([Path(p) for p in train])}
    summary = {**fitted.summary, "started_at": started, "finished_at": datetime.now(UTC).isoformat()}
    manifest = registry.build_manifest(
        version=name, net=fitted.net, calibrator=fitted.calibrator, bands=fitted.bands,
        features=features, spec_hash="candidate", train_start=date.min, train_end=date.min,
        evaluation={}, training=summary)
    sha, _ = registry.save_artifact(folder, fitted.net, manifest)
    out = Path(out_dir)
    valid_logits = fitted.result.valid_logits
    return {"path": str(folder), "sha256": sha, "training": summary,
            "test_probs": save_probs(out / f"{name}-test.npy", probs),
            "test_labels": save_probs(out / f"{name}-labels-test.npy", labels),
            "test_logits": save_probs(out / f"{name}-test-logits.npy", logits),
            "valid_logits": save_probs(out / f"{name}-valid-logits.npy", valid_logits),
            "valid_probs": save_probs(out / f"{name}-valid.npy", fitted.calibrator.apply(valid_logits)),
            "valid_labels": save_probs(out / f"{name}-valid-labels.npy", fitted.result.valid_labels)}
