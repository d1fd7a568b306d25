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
        """Boolean Series: True where the id was added before (null ids are never contained).

        The queries are sorted first, so each binary search walks memory in order, and only the
        queries between a run's first and last id are searched in it (ids that grow with time,
        the usual case, skip every run)."""
        found = np.zeros(len(ids), dtype=bool)
        if not self._runs or not len(ids):
            return pl.Series(ids.name, found)
        order = ids.arg_sort(nulls_last=True)
        query = ids.gather(order).drop_nulls()
        hit = np.zeros(len(query), dtype=bool)
        for run in self._runs:
            start, stop = query.search_sorted(run[0], side="left"), query.search_sorted(run[-1], side="right")
            if stop > start:
                part = query.slice(start, stop - start)
                at = run.search_sorted(part, side="left").clip(upper_bound=len(run) - 1)
                hit[start:stop] |= (run.gather(at) == part).to_numpy()
        found[order.to_numpy()[:len(query)]] = hit
        return pl.Series(ids.name, found)

    def update(self, ids: pl.Series) -> pl.Series:
        """Remember every non-null id in `ids`; returns `contains(ids)` as it was before the call."""
        before = self.contains(ids)
        run = ids.filter(~before).drop_nulls().unique().sort().rename(_ID)
        while self._runs and len(run) and len(self._runs[-1]) <= 2 * len(run):
            last = self._runs.pop()
            if last[-1] < run[0]:
                run = pl.concat([last, run], rechunk=True).set_sorted()
            else:
                run = last.to_frame().merge_sorted(run.to_frame(), key=_ID).get_column(_ID).set_sorted()
        if len(run):
            self._runs.append(run)
        return before
