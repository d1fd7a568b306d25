"""Small seeded SequenceBatch sets with a planted ORDER pattern, for the model-side tests and benches.

Positives end with a burst of three tiny amounts followed by one large amount; half of the
negatives carry the very same four events in the opposite order (large first), so only the
order tells them apart: a bag of aggregates cannot.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from riskmodel.ablation import permute_within
from riskmodel.batch import SequenceBatch

TINY, LARGE = -2.5, 3.0


def order_batch(n: int, *, seq_len: int = 24, seed: int = 0, pos_rate: float = 0.25) -> SequenceBatch:
    """`n` accounts; label 1 = tiny-tiny-tiny-LARGE near the end of the sequence."""
    rng = np.random.default_rng(seed)
    b = SequenceBatch.empty(n=n, seq_len=seq_len, n_num=1, n_cat=1, n_time=4, n_static_num=1,
                            n_static_cat=1, n_agg=2)
    b.lengths[:] = rng.integers(6, seq_len + 1, n)
    label = (rng.random(n) < pos_rate).astype(np.float32)
    decoy = (label == 0) & (rng.random(n) < 0.5)
    real = np.arange(seq_len)[None, :] < b.lengths[:, None]
    b.num[:, :, 0] = np.where(real, rng.normal(0.0, 0.6, (n, seq_len)), 0.0)
    b.cat[:, :, 0] = np.where(real, rng.integers(1, 6, (n, seq_len)), 0)
    b.time[:] = np.where(real[:, :, None], rng.normal(0.0, 1.0, (n, seq_len, 4)), 0.0)
    offset = rng.integers(0, 3, n)
    start = b.lengths - 4 - offset
    rows = np.arange(n)
    for j in range(4):
        pos_value = LARGE if j == 3 else TINY
        neg_value = LARGE if j == 0 else TINY
        value = np.where(label == 1, pos_value, np.where(decoy, neg_value, b.num[rows, start + j, 0]))
        b.num[rows, start + j, 0] = value
    b.static_num[:, 0] = rng.normal(0.0, 1.0, n)
    b.static_cat[:, 0] = rng.integers(1, 4, n)
    b.agg[:, 0] = np.where(real, b.num[:, :, 0], 0.0).sum(1) * 100.0
    b.agg[:, 1] = b.lengths
    b.cutoff[:] = np.datetime64("2026-06-30")
    b.account_id = np.array([f"A{seed:02d}{i:06d}" for i in range(n)])
    b.label = label
    return b


def shuffle_sequences(batch: SequenceBatch, seed: int) -> SequenceBatch:
    """A copy of `batch` whose event attributes are permuted within each account's real steps
    (the sequence half of the order ablation; its aggregates are left as they are)."""
    rng = np.random.default_rng(seed)
    real = np.arange(batch.seq_len)[None, :] < batch.lengths[:, None]
    rows, steps = np.nonzero(real)
    flat = rows * batch.seq_len + steps
    source = flat[permute_within(rows, rng)]
    num, cat = batch.num.copy(), batch.cat.copy()
    num.reshape(-1, num.shape[2])[flat] = batch.num.reshape(-1, num.shape[2])[source]
    cat.reshape(-1, cat.shape[2])[flat] = batch.cat.reshape(-1, cat.shape[2])[source]
    return replace(batch, num=num, cat=cat)
