"""Risk bands: capacity shares fitted on validation scores, ties, probability thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from riskmodel.bands import BandPolicy, assign_bands
from riskmodel.errors import ConfigError


def _counts(bands: np.ndarray) -> dict[str, int]:
    return {name: int((bands == name).sum()) for name in ("high", "medium", "low")}


def test_capacity_bands_take_their_share_of_distinct_scores() -> None:
    probs = np.random.default_rng(0).random(10_000)
    policy = BandPolicy(mode="capacity", high=0.005, medium=0.045).fit(probs)
    assert _counts(assign_bands(probs, policy)) == {"high": 50, "medium": 450, "low": 9500}


def test_ties_at_the_cut_never_push_a_band_past_its_share() -> None:
    rng = np.random.default_rng(1)
    probs = np.r_[rng.uniform(0.0, 0.8, 9_800), np.full(200, 0.9)]
    policy = BandPolicy(mode="capacity", high=0.005, medium=0.045).fit(probs)
    counts = _counts(assign_bands(probs, policy))
    assert counts["high"] <= 50 and counts["high"] + counts["medium"] <= 500
    assert counts["high"] + counts["medium"] >= 300, "the block below the tie still fills medium"
    tied_below = np.r_[np.full(9_900, 0.1), rng.uniform(0.5, 1.0, 100)]
    fitted = BandPolicy(mode="capacity", high=0.01, medium=0.02).fit(tied_below)
    assert _counts(assign_bands(tied_below, fitted)) == {"high": 100, "medium": 0, "low": 9_900}


def test_probability_bands_and_unfitted_capacity() -> None:
    policy = BandPolicy(mode="probability", high=0.5, medium=0.1)
    bands = assign_bands(np.array([0.05, 0.1, 0.49, 0.5]), policy)
    assert bands.tolist() == ["low", "medium", "medium", "high"]
    with pytest.raises(ConfigError, match="not fitted"):
        assign_bands(np.array([0.5]), BandPolicy(mode="capacity"))
    with pytest.raises(ConfigError, match="exceeds 1"):
        BandPolicy(mode="capacity", high=0.6, medium=0.5)
