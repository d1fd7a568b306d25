"""The served blend: the LSTM's and the LightGBM baseline's log-odds, each standardised on validation.

The LSTM's weight is the one of `BLEND_WEIGHTS` whose blend has the best validation AP
(`fit_weighted_blend`): with LightGBM on weekly snapshots a half-and-half blend beat both models at
scale M, while with LightGBM on 3-day snapshots validation gave the LSTM 0-0.1 and a fixed half
fell below LightGBM alone; with aggregate dropout it gives 0.2-0.5 and the blend beats LightGBM
(`riskflow bench --stage model`). `Blend` holds what scoring needs: the
booster as LightGBM's own text format (no pickle), the validation means and spreads, and the
weight. The calibrator is then fitted on the blended validation values, so a blended model's
probabilities are calibrated like any other. LightGBM is imported only when a blend is fitted
or loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.metrics import average_precision

BOOSTER_FILE = "baseline.txt"
# The LSTM's weights `fit_weighted_blend` tries, nearest one half first (ties keep the even blend).
BLEND_WEIGHTS = tuple(sorted((k / 10 for k in range(11)), key=lambda w: abs(w - 0.5)))


def log_odds(probs: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 (float64)."""
    q = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def _moments(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ConfigError("blend: the validation window has no rows to standardise on")
    return float(values.mean()), max(float(values.std()), 1e-12)


@dataclass
class Blend:
    """`weight` x standardised LSTM logit + (1 - `weight`) x standardised LightGBM log-odds."""

    booster_text: str
    best_iteration: int
    lstm_mean: float
    lstm_std: float
    gbdt_mean: float
    gbdt_std: float
    weight: float = 0.5
    _booster: Any = field(default=None, repr=False, compare=False)

    def booster(self) -> Any:
        """The LightGBM booster, parsed from its text on first use."""
        if self._booster is None:
            try:
                import lightgbm as lgb
            except ImportError:
                raise ConfigError("this model blends the LSTM with LightGBM, which is not installed here: "
                                  "`pip install lightgbm` to score it") from None
            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    def gbdt_probs(self, sources: Sequence[Path | SequenceBatch]) -> np.ndarray:
        """LightGBM's probabilities for every row of shards or batches (static features, aggregates)."""
        from riskmodel.evaluate import Baseline

        return Baseline(self.booster(), [], self.best_iteration).predict(sources)

    def combine(self, lstm_logits: np.ndarray, gbdt_probs: np.ndarray) -> np.ndarray:
        """The blended value (a logit-like score) of rows with these two model outputs."""
        z_lstm = (np.asarray(lstm_logits, dtype=np.float64) - self.lstm_mean) / self.lstm_std
        z_gbdt = (log_odds(gbdt_probs) - self.gbdt_mean) / self.gbdt_std
        return self.weight * z_lstm + (1.0 - self.weight) * z_gbdt

    def logits(self, lstm_logits: np.ndarray, sources: Sequence[Path | SequenceBatch]) -> np.ndarray:
        """The blended value of every row of shards or batches, given the LSTM's logits for the same rows."""
        return self.combine(lstm_logits, self.gbdt_probs(sources))

    def to_dict(self) -> dict[str, Any]:
        """The manifest's "blend" entry (the booster itself lives in `BOOSTER_FILE`)."""
        return {"booster_file": BOOSTER_FILE, "best_iteration": self.best_iteration,
                "lstm_mean": self.lstm_mean, "lstm_std": self.lstm_std, "gbdt_mean": self.gbdt_mean,
                "gbdt_std": self.gbdt_std, "weight": self.weight}

    @classmethod
    def from_dict(cls, data: dict[str, Any], booster_text: str) -> Blend:
        """Inverse of `to_dict`, with the booster's text read from the artifact."""
        return cls(booster_text=booster_text, best_iteration=int(data["best_iteration"]),
                   lstm_mean=float(data["lstm_mean"]), lstm_std=float(data["lstm_std"]),
                   gbdt_mean=float(data["gbdt_mean"]), gbdt_std=float(data["gbdt_std"]),
                   weight=float(data["weight"]))


def fit_blend(lstm_valid_logits: np.ndarray, gbdt_valid_probs: np.ndarray, booster_text: str,
              best_iteration: int, weight: float = 0.5) -> Blend:
    """A blend standardised on the validation window's outputs of both models (same rows, same order)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"blend weight must be in [0, 1], got {weight}")
    if len(lstm_valid_logits) != len(gbdt_valid_probs):
        raise ConfigError(f"blend: {len(lstm_valid_logits)} LSTM validation rows but "
                          f"{len(gbdt_valid_probs)} LightGBM rows; they must be the same rows")
    lstm_mean, lstm_std = _moments(lstm_valid_logits)
    gbdt_mean, gbdt_std = _moments(log_odds(gbdt_valid_probs))
    return Blend(booster_text=booster_text, best_iteration=int(best_iteration), lstm_mean=lstm_mean,
                 lstm_std=lstm_std, gbdt_mean=gbdt_mean, gbdt_std=gbdt_std, weight=weight)


def fit_weighted_blend(lstm_valid_logits: np.ndarray, gbdt_valid_probs: np.ndarray, valid_labels: np.ndarray,
                       booster_text: str = "", best_iteration: int = 0) -> Blend:
    """`fit_blend` with the LSTM's weight among `BLEND_WEIGHTS` whose blend ranks the validation window
    best (AP); the standardisation is fitted once and shared by every weight tried."""
    blend = fit_blend(lstm_valid_logits, gbdt_valid_probs, booster_text, best_iteration)
    weight = max(BLEND_WEIGHTS, key=lambda w: average_precision(
        valid_labels, replace(blend, weight=w).combine(lstm_valid_logits, gbdt_valid_probs)))
    return replace(blend, weight=weight)


def blend_probs(test: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
                valid_labels: np.ndarray) -> tuple[np.ndarray, float]:
    """(blended values of two models' test probabilities, the LSTM's weight): standardised on their
    validation probabilities (LSTM first) and weighted by `fit_weighted_blend`; what `riskflow bench
    --stage model` ranks by and reports."""
    blend = fit_weighted_blend(log_odds(valid[0]), valid[1], valid_labels)
    return blend.combine(log_odds(test[0]), test[1]), blend.weight
