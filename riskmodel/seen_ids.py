"""The transaction ids an extract has met so far, to catch duplicates across the days it streams.

Kept as a few sorted runs merged like a binary counter (each run at least twice the next), so
adding n ids costs O(n log n) in all and a lookup is a binary search per run (at most log n runs).
"""

from __future__ import annotations

import polars as pl


class SeenIds:
    """A growing set of non-null ids of one dtype, with vectorised membership tests (runs are disjoint)."""

    def __init__(self) -> None:
        self._runs: list[pl.Series] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, ids: pl.Series) -> pl.Series:
        """Boolean Series: True where the id was added before (null ids are never contained)."""
        hit = pl.Series(ids.name, [False] * len(ids), dtype=pl.Boolean)
        for run in self._runs:
            at = run.search_sorted(ids, side="left").clip(upper_bound=len(run) - 1)
            hit = hit | (run.gather(at) == ids).fill_null(False)
        return hit

    def add(self, ids: pl.Series) -> None:
        """Remember every non-null id in `ids`."""
        run = ids.drop_nulls().unique().sort()
        run = run.filter(~self.contains(run))
        if run.is_empty():
            return
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            run = pl.concat([self._runs.pop(), run]).unique().sort()
        self._runs.append(run)
