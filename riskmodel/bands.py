"""Risk bands: "high" / "medium" / "low" from calibrated probabilities.

Two policies. "probability": fixed probability thresholds. "capacity": the share of
accounts the team can review (e.g. top 0.5% high, next 4.5% medium); the matching
thresholds are fitted once on the validation score distribution and stored with the
model, so band volumes stay stable night to night and across models. Ties at a cut never
push a band past its share on the validation scores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from riskmodel.errors import ConfigError

BANDS = ("low", "medium", "high")


@dataclass(frozen=True)
class BandPolicy:
    """How bands are cut; `high`/`medium` are probabilities ("probability") or shares ("capacity")."""

    mode: Literal["probability", "capacity"] = "capacity"
    high: float = 0.005
    medium: float = 0.045
    high_threshold: float | None = None
    medium_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("probability", "capacity"):
            raise ConfigError(f"band mode {self.mode!r} must be 'probability' or 'capacity'")
        for name in ("high", "medium"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"band {name}={value} must lie in [0, 1]")
        if self.mode == "probability" and self.medium > self.high:
            raise ConfigError(f"band thresholds: medium={self.medium} must not exceed high={self.high}")
        if self.mode == "capacity" and self.high + self.medium > 1.0:
            raise ConfigError(f"band capacity: high={self.high} + medium={self.medium} exceeds 1")

    @property
    def thresholds(self) -> tuple[float, float]:
        """(high, medium) probability cut-offs: a score >= the cut-off is in that band or above."""
        if self.mode == "probability":
            return self.high, self.medium
        if self.high_threshold is None or self.medium_threshold is None:
            raise ConfigError("capacity band policy is not fitted: call BandPolicy.fit on "
                              "validation scores first")
        return self.high_threshold, self.medium_threshold

    def fit(self, probs: np.ndarray) -> BandPolicy:
        """For "capacity": thresholds at the (1 - share) quantiles of `probs`; else unchanged.

        Capacity is a ceiling: when scores tied at the cut would push a band past its share, the cut
        moves above the tied block (the band gets fewer accounts, never more)."""
        if self.mode == "probability":
            return self
        p = np.sort(np.asarray(probs, dtype=np.float64))
        if p.size == 0:
            raise ConfigError("band capacity: cannot fit thresholds on zero scores")

        def cut(share: float) -> float:
            k = int(round(share * p.size))
            if k == 0:
                return float(np.nextafter(p[-1], np.inf))
            kth = p[p.size - k]
            if k == p.size or p[p.size - k - 1] < kth:
                return float(kth)
            above = np.searchsorted(p, kth, side="right")
            return float(p[above]) if above < p.size else float(np.nextafter(p[-1], np.inf))

        return replace(self, high_threshold=cut(self.high),
                       medium_threshold=cut(self.high + self.medium))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the manifest."""
        return {"mode": self.mode, "high": self.high, "medium": self.medium,
                "high_threshold": self.high_threshold, "medium_threshold": self.medium_threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandPolicy:
        """Inverse of `to_dict`."""
        return cls(**data)


def assign_bands(probs: np.ndarray, bands: BandPolicy) -> np.ndarray:
    """Band name per probability: "high" at/above the high cut-off, "medium" at/above medium, else "low"."""
    high, medium = bands.thresholds
    p = np.asarray(probs, dtype=np.float64)
    out = np.full(p.shape, "low", dtype=object)
    out[p >= medium] = "medium"
    out[p >= high] = "high"
    return out.astype(str)
