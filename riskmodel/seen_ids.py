"""The transaction ids an extract has met so far, to catch duplicates across the days it streams.

Kept as a few disjoint sorted runs merged like a binary counter (each run at least twice the
next; two runs merge in linear time), so adding n ids costs O(n log n) in all and a lookup is a
binary search per run (at most log n runs), with the queries sorted first so memory is walked in order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

_ID = "id"


class SeenIds:
    """A growing set of non-null ids of one dtype, with vectorised membership tests."""

    def __init__(self) -> None:
        self._runs: list[pl.Series] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, ids: pl.Series) -> pl.Series:
        """Boolean Series: True where the id was added before (null ids are never contained)."""
        found = np.zeros(len(ids), dtype=bool)
        if self._runs and len(ids):
            order = ids.arg_sort(nulls_last=True)
            query = ids.gather(order)
            hit = pl.Series(ids.name, np.zeros(len(ids), dtype=bool))
            for run in self._runs:
                at = run.search_sorted(query, side="left").clip(upper_bound=len(run) - 1)
                hit = hit | (run.gather(at) == query).fill_null(False)
            found[order.to_numpy()] = hit.to_numpy()
        return pl.Series(ids.name, found)

    def update(self, ids: pl.Series) -> pl.Series:
        """Remember every non-null id in `ids`; returns `contains(ids)` as it was before the call."""
        before = self.contains(ids)
        run = ids.filter(~before).drop_nulls().unique().sort().rename(_ID)
        while self._runs and len(run) and len(self._runs[-1]) <= 2 * len(run):
            merged = self._runs.pop().to_frame().merge_sorted(run.to_frame(), key=_ID)
            run = merged.get_column(_ID).set_sorted()
        if len(run):
            self._runs.append(run)
        return before
