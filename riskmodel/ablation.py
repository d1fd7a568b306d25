"""Order ablation: destroy the order of events while keeping everything else.

When a snapshot is built with an order seed, each account's event ATTRIBUTES (amount, numeric
and categorical columns, and the flags derived from them) are permuted at random across its own
last L events (the ones its sequence holds); timestamps and time features stay where they are,
so each sequence keeps its multiset of attributes and its time slots. The aggregates are then
computed from the permuted events too: recency windows ("tiny charges in the last day", "largest
amount in the last 3 days") would otherwise hand the model the very order the ablation removes.
A model trained and evaluated on such snapshots can use what happened, not in which order: the
gap to the real model is what the order of events contributes.
"""

from __future__ import annotations

import numpy as np


def permute_within(owner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions 0..n-1 shuffled at random within each run of equal `owner` values.

    `owner` must be grouped (equal values adjacent, runs in increasing order), as account indices
    of rows sorted by account are; position i of the result says which row's attributes row i takes."""
    return np.lexsort((rng.random(owner.size), owner))


def order_generator(seed: int, cutoff_ordinal: int, shard: int) -> np.random.Generator:
    """The ablation's generator for one shard of one cutoff: reruns shuffle identically."""
    return np.random.default_rng([seed, cutoff_ordinal, shard])
