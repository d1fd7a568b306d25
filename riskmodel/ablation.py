"""Order ablation: destroy the order of events while keeping everything else.

Each account's event ATTRIBUTES (numeric and categorical columns) are permuted at random
across its own real time slots; the timestamps and time features stay where they are, the
padding stays padding, and each account keeps its multiset of attributes. A model trained
and evaluated on such data can use what happened, not in which order: the gap to the real
model is what the order of events contributes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from riskmodel.batch import SequenceBatch


def order_permutation(lengths: np.ndarray, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """(N, L) gather indices: a random permutation of 0..len-1 in the real slots, identity on padding."""
    keys = rng.random((lengths.shape[0], seq_len))
    slots = np.arange(seq_len)[None, :]
    padding = slots >= lengths[:, None]
    keys[padding] = 2.0 + slots.repeat(lengths.shape[0], 0)[padding]
    return np.argsort(keys, axis=1, kind="stable")


def shuffle_order(batch: SequenceBatch, seed: int = 0) -> SequenceBatch:
    """A copy of `batch` whose per-account event attributes are permuted within each real length."""
    perm = order_permutation(batch.lengths, batch.seq_len, np.random.default_rng(seed))
    num = np.take_along_axis(batch.num, perm[:, :, None], axis=1)
    cat = np.take_along_axis(batch.cat, perm[:, :, None], axis=1)
    return replace(batch, num=num, cat=cat)


def shuffle_shards(paths: list[Path], out_dir: Path, seed: int = 0) -> list[Path]:
    """Write an order-shuffled copy of each shard into `out_dir` (seeded per shard); returns the new paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, path in enumerate(paths):
        target = out_dir / Path(path).name
        tmp = target.with_name(target.name + ".tmp")
        shuffle_order(SequenceBatch.load(Path(path)), seed=seed + k).save(tmp)
        tmp.replace(target)
        written.append(target)
    return written
