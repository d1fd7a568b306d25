"""`FeatureState`: frozen vocabularies and normalisation statistics, fitted on training data only.

It travels inside the model manifest (`to_dict`), so scoring encodes inputs exactly as the
model saw them in training. Category ids: 0 = padding (or a missing static value), 1 = unseen,
2.. = frequency rank (ties broken by the value's text, so refitting the same data is stable).
Numeric features are mapped with a signed log1p and then standardised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from riskmodel.errors import ConfigError
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

PAD_ID = 0
UNSEEN_ID = 1
FIRST_ID = 2
FORMAT_VERSION = 1


@dataclass(frozen=True)
class NumericStats:
    """Mean and standard deviation of signed-log1p values of one numeric column."""

    mean: float
    std: float


@dataclass(frozen=True)
class FeatureState:
    """Vocabularies (value lists, most frequent first) and numeric statistics for every input column."""

    event_num: list[str]
    event_cat: list[str]
    static_num: list[str]
    static_cat: list[str]
    vocab: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, NumericStats] = field(default_factory=dict)
    static_vocab: dict[str, list[str]] = field(default_factory=dict)
    static_stats: dict[str, NumericStats] = field(default_factory=dict)
    window: tuple[str, str] | None = None

    @property
    def cat_cardinalities(self) -> list[int]:
        """Embedding sizes (vocabulary incl. ids 0 and 1) per event categorical column, in batch order."""
        return [len(self.vocab[c]) + FIRST_ID for c in self.event_cat]

    @property
    def static_cat_cardinalities(self) -> list[int]:
        """Embedding sizes per static categorical column, in batch order."""
        return [len(self.static_vocab[c]) + FIRST_ID for c in self.static_cat]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for the model manifest)."""
        return {
            "format": FORMAT_VERSION,
            "event_num": list(self.event_num), "event_cat": list(self.event_cat),
            "static_num": list(self.static_num), "static_cat": list(self.static_cat),
            "vocab": {k: list(v) for k, v in self.vocab.items()},
            "stats": {k: [s.mean, s.std] for k, s in self.stats.items()},
            "static_vocab": {k: list(v) for k, v in self.static_vocab.items()},
            "static_stats": {k: [s.mean, s.std] for k, s in self.static_stats.items()},
            "window": list(self.window) if self.window else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureState:
        """Rebuild a state written by `to_dict`; a malformed dict raises ConfigError naming the key."""
        try:
            if d.get("format") != FORMAT_VERSION:
                raise ConfigError(f"feature state: format {d.get('format')!r} is not {FORMAT_VERSION}")
            state = cls(
                event_num=list(d["event_num"]), event_cat=list(d["event_cat"]),
                static_num=list(d["static_num"]), static_cat=list(d["static_cat"]),
                vocab={k: list(v) for k, v in d["vocab"].items()},
                stats={k: NumericStats(float(m), float(s)) for k, (m, s) in d["stats"].items()},
                static_vocab={k: list(v) for k, v in d["static_vocab"].items()},
                static_stats={k: NumericStats(float(m), float(s)) for k, (m, s) in d["static_stats"].items()},
                window=tuple(d["window"]) if d.get("window") else None,
            )
        except KeyError as exc:
            raise ConfigError(f"feature state: missing key {exc.args[0]!r}") from None
        for col in state.event_cat:
            if col not in state.vocab:
                raise ConfigError(f"feature state: no vocabulary for event column {col!r}")
        for col in state.static_cat:
            if col not in state.static_vocab:
                raise ConfigError(f"feature state: no vocabulary for static column {col!r}")
        return state

    def check_spec(self, spec: FeatureSpec) -> None:
        """Fail clearly when the spec's columns differ from those the state was fitted on."""
        tx = spec.transactions
        want = ([tx.amount, *tx.numeric], list(tx.categorical),
                list(spec.accounts.numeric) if spec.accounts else [],
                list(spec.accounts.categorical) if spec.accounts else [])
        have = (self.event_num, self.event_cat, self.static_num, self.static_cat)
        for label, w, h in zip(("event numeric", "event categorical", "static numeric",
                                "static categorical"), want, have, strict=True):
            if list(w) != list(h):
                raise ConfigError(f"feature state was fitted on {label} columns {h}, spec has {w}")


def signed_log1p(expr: pl.Expr) -> pl.Expr:
    """sign(x) * log1p(|x|): tames heavy-tailed amounts while keeping refunds negative."""
    return expr.sign() * expr.abs().log1p()


def normalise(expr: pl.Expr, stats: NumericStats) -> pl.Expr:
    """Signed log1p, then standardise; nulls and non-finite values become 0 (the mean)."""
    z = (signed_log1p(expr.cast(pl.Float64)) - stats.mean) / stats.std
    return pl.when(z.is_finite()).then(z).otherwise(0.0).cast(pl.Float32)


def encode(expr: pl.Expr, vocab: list[str], *, missing: int) -> pl.Expr:
    """Map text values to ids: vocabulary rank + 2, unseen values to 1, nulls to `missing`.

    A non-strict cast to an Enum of the vocabulary: streams, and needs no per-row hash map. When
    nulls map to the unseen id anyway, one fill covers both (the cast is the per-row cost)."""
    text = expr.cast(pl.String)
    if not vocab:
        return pl.when(text.is_null()).then(pl.lit(missing, pl.Int32)).otherwise(pl.lit(UNSEEN_ID, pl.Int32))
    ranked = text.cast(pl.Enum(vocab), strict=False).to_physical().cast(pl.Int32) + FIRST_ID
    if missing == UNSEEN_ID:
        return ranked.fill_null(pl.lit(UNSEEN_ID, pl.Int32))
    return (pl.when(text.is_null()).then(pl.lit(missing, pl.Int32))
            .otherwise(ranked.fill_null(pl.lit(UNSEEN_ID, pl.Int32))))


def fit_vocab(values: pl.Series, *, max_size: int, min_count: int) -> list[str]:
    """Values by descending frequency (ties by text), at most `max_size`, seen at least `min_count` times."""
    counts = (values.cast(pl.String).drop_nulls().value_counts(name="n")
              .filter(pl.col("n") >= min_count)
              .sort(["n", values.name], descending=[True, False]).head(max_size))
    return counts[values.name].to_list()


def fit_stats(values: pl.Series) -> NumericStats:
    """Mean and std of signed-log1p finite values; std floors at 1e-6 so constants map to 0."""
    x = values.cast(pl.Float64).to_numpy()
    y = np.sign(x) * np.log1p(np.abs(x))
    y = y[np.isfinite(y)]
    if y.size == 0:
        return NumericStats(0.0, 1.0)
    std = float(y.std())
    return NumericStats(float(y.mean()), std if std > 1e-6 and math.isfinite(std) else 1.0)


def fit_state(spec: FeatureSpec, events: pl.DataFrame, accounts: pl.DataFrame | None, *,
              window: tuple[date, date] | None = None, max_vocab: int = 50_000,
              min_count: int = 1) -> FeatureState:
    """Fit vocabularies and statistics on training-window events and the accounts table."""
    tx = spec.transactions
    event_num = [tx.amount, *tx.numeric]
    static_num = list(spec.accounts.numeric) if spec.accounts else []
    static_cat = list(spec.accounts.categorical) if spec.accounts else []
    if accounts is None:
        accounts = pl.DataFrame({c: pl.Series(c, [], pl.String) for c in static_num + static_cat})
    return FeatureState(
        event_num=event_num, event_cat=list(tx.categorical),
        static_num=static_num, static_cat=static_cat,
        vocab={c: fit_vocab(events[c], max_size=max_vocab, min_count=min_count) for c in tx.categorical},
        stats={c: fit_stats(events[c]) for c in event_num},
        static_vocab={c: fit_vocab(accounts[c], max_size=max_vocab, min_count=1) for c in static_cat},
        static_stats={c: fit_stats(accounts[c]) for c in static_num},
        window=(window[0].isoformat(), window[1].isoformat()) if window else None,
    )


def fit_feature_state(settings: Settings, spec: FeatureSpec, start: date, end: date) -> FeatureState:
    """Fit a FeatureState on lake events with local dates in [start, end] and the accounts table."""
    from riskmodel.lake import scan_transactions
    from riskmodel.sources import read_accounts

    if end < start:
        raise ConfigError(f"fit_feature_state: end {end} is before start {start}")
    tx = spec.transactions
    cols = [tx.amount, *tx.numeric, *tx.categorical]
    events = scan_transactions(settings, start, end).select(cols).collect()
    accounts = read_accounts(settings, spec)
    return fit_state(spec, events, accounts, window=(start, end))
