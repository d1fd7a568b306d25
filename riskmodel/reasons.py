"""Reason codes by occlusion of feature groups: which groups of inputs raised an account's score.

Each group (amount pattern, merchant / category, country / channel change, timing, recent
burst, activity level, account profile) is a set of columns of a `SequenceBatch`, matched by
name. For each group one batched predict pass runs with that group neutralised: categorical
ids -> 1 (unseen; padding stays 0), normalised numeric features -> 0 (the training mean),
time features (not standardised) -> their training means over real events, aggregates -> a
neutral value (the training medians). Models registered before the manifest kept the time means
occlude time features with 0 ("every event at the cutoff"), a sensitivity rather than a
typical-account counterfactual. The groups whose removal lowers the score most (only positive
drops) are the account's reasons.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError

BAND_ORDER = ("low", "medium", "high")
_WINDOW = re.compile(r"_(\d+)d$")


@dataclass(frozen=True)
class ReasonGroup:
    """A named group of input columns, per SequenceBatch array ("num", "cat", ...)."""

    key: str
    label: str
    columns: dict[str, list[int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when no column of the batch belongs to this group."""
        return not any(self.columns.values())


GROUP_LABELS: dict[str, str] = {
    "amount_pattern": "Amount pattern",
    "merchant_category": "Merchant / category",
    "country_channel": "Country / channel change",
    "timing": "Transaction timing",
    "recent_burst": "Recent burst of activity",
    "activity_level": "Activity level",
    "static_profile": "Account profile",
}


def _window(name: str) -> int | None:
    match = _WINDOW.search(name)
    return int(match.group(1)) if match else None


def _event_group(name: str) -> str | None:
    low = name.lower()
    if "amount" in low or low.startswith("amt"):
        return "amount_pattern"
    if any(k in low for k in ("mcc", "merchant", "categor")):
        return "merchant_category"
    if any(k in low for k in ("country", "channel")):
        return "country_channel"
    return None


def _agg_group(name: str) -> str | None:
    low = name.lower()
    window = _window(low)
    if low.startswith("days_since_last"):
        return "timing"
    if "tiny" in low:
        return "recent_burst"
    if low.startswith(("cnt_", "amount_count_", "count_", "txn_count_")):
        return "recent_burst" if window is not None and window <= 7 else "activity_level"
    if any(k in low for k in ("mcc", "merchant", "categor")):
        return "merchant_category"
    if any(k in low for k in ("countr", "channel", "online", "atm", "foreign")):
        return "country_channel"
    if "amount" in low or low.startswith("amt"):
        return "amount_pattern"
    return None


def feature_groups(names: dict[str, list[str]]) -> list[ReasonGroup]:
    """Group the columns of a batch layout (`SequenceBatch.names`) by name; unknown names are left out."""
    cols: dict[str, dict[str, list[int]]] = {k: {} for k in GROUP_LABELS}
    for part, columns in names.items():
        for j, name in enumerate(columns):
            if part in ("num", "cat"):
                key = _event_group(name)
            elif part == "time":
                key = "timing"
            elif part in ("static_num", "static_cat"):
                key = "static_profile"
            elif part == "agg":
                key = _agg_group(name)
            else:
                key = None
            if key is not None:
                cols[key].setdefault(part, []).append(j)
    groups = [ReasonGroup(k, GROUP_LABELS[k], cols[k]) for k in GROUP_LABELS]
    return [g for g in groups if not g.empty]


def neutralise(batch: SequenceBatch, group: ReasonGroup, agg_neutral: np.ndarray,
               time_neutral: np.ndarray | None = None) -> SequenceBatch:
    """A copy of `batch` with `group`'s columns set to their neutral values (padding untouched)."""
    real = np.arange(batch.seq_len)[None, :] < batch.lengths[:, None]
    changed: dict[str, np.ndarray] = {}
    for part, idx in group.columns.items():
        values = getattr(batch, part).copy()
        if part == "cat":
            values[..., idx] = np.where(real[..., None], 1, 0).astype(values.dtype)
        elif part == "time" and time_neutral is not None:
            values[..., idx] = np.where(real[..., None], time_neutral[idx], values[..., idx])
        elif part in ("num", "time"):
            values[..., idx] = 0.0
        elif part == "static_cat":
            values[:, idx] = 1
        elif part == "static_num":
            values[:, idx] = 0.0
        elif part == "agg":
            values[:, idx] = agg_neutral[idx]
        changed[part] = values
    return dataclasses.replace(batch, **changed)


def group_drops(predict: Callable[[SequenceBatch], np.ndarray], batch: SequenceBatch,
                groups: list[ReasonGroup], agg_neutral: np.ndarray | None = None,
                time_neutral: np.ndarray | None = None) -> np.ndarray:
    """(N, G) score drop when each group is neutralised (base score minus occluded score)."""
    neutral = np.zeros(batch.agg.shape[1], np.float32) if agg_neutral is None else np.asarray(agg_neutral)
    if neutral.shape != (batch.agg.shape[1],):
        raise ConfigError(f"agg_neutral has shape {neutral.shape}; the batch has {batch.agg.shape[1]} "
                          f"aggregates {batch.names.get('agg', [])}")
    times = None if time_neutral is None else np.asarray(time_neutral, np.float32)
    if times is not None and times.shape != (batch.time.shape[2],):
        raise ConfigError(f"time_neutral has shape {times.shape}; the batch has {batch.time.shape[2]} "
                          f"time features {batch.names.get('time', [])}")
    base = np.asarray(predict(batch), np.float64)
    drops = np.empty((len(batch), len(groups)), np.float64)
    for g, group in enumerate(groups):
        drops[:, g] = base - np.asarray(predict(neutralise(batch, group, neutral, times)), np.float64)
    return drops


def reason_codes(predict: Callable[[SequenceBatch], np.ndarray], batch: SequenceBatch,
                 selected: np.ndarray, top_k: int = 3, agg_neutral: np.ndarray | None = None,
                 time_neutral: np.ndarray | None = None) -> list[list[str]]:
    """Per row, the labels of up to `top_k` groups that raised its score most; [] for unselected rows.

    One predict pass for the base scores and one per group, over the selected rows only.
    """
    selected = np.asarray(selected, bool)
    if selected.shape != (len(batch),):
        raise ConfigError(f"selected has shape {selected.shape}; expected ({len(batch)},)")
    out: list[list[str]] = [[] for _ in range(len(batch))]
    rows = np.flatnonzero(selected)
    groups = feature_groups(batch.names)
    if rows.size == 0 or not groups:
        return out
    drops = group_drops(predict, batch.subset(rows), groups, agg_neutral, time_neutral)
    order = np.argsort(-drops, axis=1, kind="stable")[:, :top_k]
    for r, row in enumerate(rows):
        out[row] = [groups[g].label for g in order[r] if drops[r, g] > 0]
    return out


def at_or_above(bands: np.ndarray, min_band: str) -> np.ndarray:
    """Boolean mask of rows whose band is `min_band` or higher (low < medium < high)."""
    if min_band not in BAND_ORDER:
        raise ConfigError(f"min_band must be one of {BAND_ORDER}, got {min_band!r}")
    allowed = list(BAND_ORDER[BAND_ORDER.index(min_band):])
    return np.isin(np.asarray(bands), allowed)
