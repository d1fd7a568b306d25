"""`SequenceBatch`: the one type that carries padded per-account sequences and their lengths.

This is the contract between the sequence builder (producer), training and scoring
(consumers). Sequences are LEFT-aligned: account i's real events sit in positions
`0 .. lengths[i]-1` in time order (oldest first); positions from `lengths[i]` on are padding
(zeros). Categorical ids: 0 = padding, 1 = unseen (out of vocabulary), 2.. = frequency rank.

Example:
    >>> import numpy as np
    >>> b = SequenceBatch.empty(n=2, seq_len=3, n_num=1, n_cat=2, n_time=4, n_static_num=0,
    ...                         n_static_cat=0, n_agg=0)
    >>> b.lengths[:] = [3, 1]
    >>> b.num[1, 0, 0] = 5.0
    >>> b.subset(np.array([1])).num[0, 0, 0]
    np.float32(5.0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from riskmodel.errors import ConfigError

TIME_FEATURES = ("log_gap", "log_age", "hour", "dow")


@dataclass
class SequenceBatch:
    """Padded event sequences, static features and aggregates for N accounts at one cutoff each."""

    account_id: np.ndarray      # (N,) int64 or unicode; sorted ascending within a shard
    num: np.ndarray             # (N, L, F) float32 normalised numeric event features (amount first)
    cat: np.ndarray             # (N, L, C) int32 category ids (0 pad, 1 unseen)
    time: np.ndarray            # (N, L, 4) float32, TIME_FEATURES order
    lengths: np.ndarray         # (N,) int32 true number of events (>= 1 for scored accounts)
    static_num: np.ndarray      # (N, S) float32 normalised static numeric features
    static_cat: np.ndarray      # (N, T) int32 static category ids (0 missing, 1 unseen)
    agg: np.ndarray             # (N, A) float32 aggregates (raw scale, NaN-free)
    cutoff: np.ndarray          # (N,) datetime64[D] score date D of each row (uses ts < D+1)
    label: np.ndarray | None = None   # (N,) float32 in {0,1} for training snapshots
    names: dict[str, list[str]] = field(default_factory=dict)  # column names per array

    ARRAYS = ("account_id", "num", "cat", "time", "lengths", "static_num", "static_cat", "agg",
              "cutoff", "label")

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def seq_len(self) -> int:
        """L, the padded length."""
        return int(self.num.shape[1])

    @classmethod
    def empty(cls, n: int, seq_len: int, n_num: int, n_cat: int, n_time: int, n_static_num: int,
              n_static_cat: int, n_agg: int) -> SequenceBatch:
        """A zero-filled batch of the given shape (account ids 0..n-1, cutoff epoch)."""
        return cls(
            account_id=np.arange(n, dtype=np.int64),
            num=np.zeros((n, seq_len, n_num), np.float32),
            cat=np.zeros((n, seq_len, n_cat), np.int32),
            time=np.zeros((n, seq_len, n_time), np.float32),
            lengths=np.zeros(n, np.int32),
            static_num=np.zeros((n, n_static_num), np.float32),
            static_cat=np.zeros((n, n_static_cat), np.int32),
            agg=np.zeros((n, n_agg), np.float32),
            cutoff=np.zeros(n, "datetime64[D]"),
        )

    def subset(self, index: np.ndarray) -> SequenceBatch:
        """Rows `index` (an int or bool array) as a new batch."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in self.ARRAYS:
            value = kw[name]
            if value is not None:
                kw[name] = value[index]
        return SequenceBatch(**kw)

    @classmethod
    def concat(cls, batches: list[SequenceBatch]) -> SequenceBatch:
        """Stack batches with the same layout row-wise."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        kw: dict[str, object] = {"names": batches[0].names}
        for name in cls.ARRAYS:
            parts = [getattr(b, name) for b in batches]
            kw[name] = None if any(p is None for p in parts) else np.concatenate(parts)
        return cls(**kw)  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        """Write as an uncompressed .npz (no pickle); the caller renames it into place."""
        arrays = {n: getattr(self, n) for n in self.ARRAYS if getattr(self, n) is not None}
        arrays["names_json"] = np.array(json.dumps(self.names))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> SequenceBatch:
        """Read a batch written by `save` (pickle disabled)."""
        with np.load(path, allow_pickle=False) as data:
            kw: dict[str, object] = {n: data[n] for n in cls.ARRAYS if n in data.files}
            kw["names"] = json.loads(str(data["names_json"]))
        kw.setdefault("label", None)
        return cls(**kw)  # type: ignore[arg-type]


def check_keep_rate(keep: float, name: str = "negative keep rate") -> None:
    """A share of negatives to keep must be in (0, 1]; ConfigError naming `name` otherwise."""
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"{name} must be in (0, 1], got {keep}")


def sample_negatives(batch: SequenceBatch, keep: float, key: list[int]) -> SequenceBatch:
    """Every positive row and a share `keep` of the negatives, drawn by a generator seeded with `key`
    (the same key keeps the same rows). Only training rows are sampled: validation, test and
    calibration keep the real base rate."""
    check_keep_rate(keep)
    if batch.label is None:
        raise ValueError("sample_negatives: batch has no labels")
    if keep == 1.0:
        return batch
    draw = np.random.default_rng(key).random(len(batch))
    return batch.subset((batch.label > 0) | (draw < keep))
