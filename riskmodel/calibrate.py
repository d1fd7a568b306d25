"""Calibration: turn model logits into probabilities that match observed event rates.

Fitted on the validation window (never on training data, whose logits are over-confident and
shifted by class weighting). Two methods: "temperature" (p = sigmoid(logit / T + b): a
temperature plus a bias that undoes the prior shift of class-imbalance weighting) and
"isotonic" (a monotone step function by pool-adjacent-violators). Both serialise to JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from riskmodel.errors import ConfigError

Method = Literal["temperature", "isotonic", "identity"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from logits to probabilities; `params` holds the method's numbers."""

    method: Method = "identity"
    params: dict[str, Any] = field(default_factory=dict)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) for raw logits."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "identity":
            return sigmoid(logits)
        if self.method == "temperature":
            return sigmoid(logits / self.params["temperature"] + self.params["bias"])
        if self.method == "isotonic":
            return np.interp(logits, self.params["x"], self.params["y"])
        raise ConfigError(f"calibration method {self.method!r} is not one of "
                          "'temperature', 'isotonic', 'identity'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the manifest."""
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Inverse of `to_dict`."""
        return cls(method=data["method"], params=dict(data.get("params", {})))


def _log_loss(a: float, b: float, x: np.ndarray, y: np.ndarray) -> float:
    z = a * x + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> dict[str, float]:
    """Damped Newton on the log loss of sigmoid(a * logit + b); returns T = 1/a and b."""
    a, b = 1.0, 0.0
    x, y = logits, labels
    loss = _log_loss(a, b, x, y)
    for _ in range(iterations):
        p = sigmoid(a * x + b)
        r = p - y
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.dot(r, x), r.sum()]) / x.size
        hess = np.array([[np.dot(w, x * x), np.dot(w, x)], [np.dot(w, x), w.sum()]]) / x.size
        hess += np.eye(2) * 1e-9 * max(1.0, float(np.trace(hess)))
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and _log_loss(a - scale * step[0], b - scale * step[1], x, y) > loss:
            scale /= 2
        if scale <= 1e-6:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        new_loss = _log_loss(a, b, x, y)
        if loss - new_loss < 1e-12:
            break
        loss = new_loss
    a = max(a, 1e-3)
    return {"temperature": float(1.0 / a), "bias": float(b)}


def _fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Pool-adjacent-violators on labels sorted by logit; knots at block means for `np.interp`."""
    order = np.argsort(logits, kind="stable")
    x, y = logits[order], labels[order]
    ux, start = np.unique(x, return_index=True)
    sums = np.add.reduceat(y, start)
    counts = np.diff(np.append(start, len(y))).astype(np.float64)
    block_sum: list[float] = []
    block_n: list[float] = []
    block_x: list[float] = []
    block_xn: list[float] = []
    for xi, s, n in zip(ux, sums, counts, strict=True):
        block_sum.append(float(s))
        block_n.append(float(n))
        block_x.append(float(xi) * n)
        block_xn.append(float(n))
        while len(block_sum) > 1 and block_sum[-2] / block_n[-2] >= block_sum[-1] / block_n[-1]:
            for blocks in (block_sum, block_n, block_x, block_xn):
                top = blocks.pop()
                blocks[-1] += top
    knots_x = [bx / bn for bx, bn in zip(block_x, block_xn, strict=True)]
    knots_y = [s / n for s, n in zip(block_sum, block_n, strict=True)]
    return {"x": knots_x, "y": knots_y}


def fit_calibrator(logits: np.ndarray, labels: np.ndarray, method: Method = "temperature") -> Calibrator:
    """Fit a calibrator on validation logits and 0/1 labels."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if logits.shape != labels.shape:
        raise ConfigError(f"calibration: {logits.size} logits but {labels.size} labels")
    if method == "identity":
        return Calibrator("identity")
    if labels.size == 0 or labels.min() == labels.max():
        raise ConfigError("calibration: the validation labels must contain both classes, "
                          f"got {int(labels.sum())} positives out of {labels.size}")
    if method == "temperature":
        return Calibrator("temperature", _fit_temperature(logits, labels))
    if method == "isotonic":
        return Calibrator("isotonic", _fit_isotonic(logits, labels))
    raise ConfigError(f"calibration method {method!r} is not one of 'temperature', 'isotonic', "
                      "'identity'")
