"""Regroup an unordered stream of rows by a key column in bounded memory (for the streaming extract).

Rows are held in memory per key until their total size passes a byte budget; then every held
group is written to its own Arrow IPC file under a fresh spill folder and memory is freed.
`take(key)` gathers one key's rows back from the spills (memory-mapped) and from memory, so the
peak is about the budget plus one key's rows, whatever order the stream arrives in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path

import polars as pl


class KeySpill:
    """Rows grouped by the values of column `key`, spilled to IPC files in `folder` past `budget_bytes`."""

    def __init__(self, folder: Path, key: str, budget_bytes: int) -> None:
        self.folder, self.key, self.budget = folder, key, budget_bytes
        self._held: dict[Hashable, list[pl.DataFrame]] = defaultdict(list)
        self._held_bytes = 0
        self._spilled: dict[Hashable, list[Path]] = defaultdict(list)
        self._spills = 0
        self.rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Take in a chunk of the stream (any mix of keys)."""
        self.rows += frame.height
        for (value,), part in frame.partition_by(self.key, as_dict=True).items():
            self._held[value].append(part)
            self._held_bytes += part.estimated_size()
        if self._held_bytes > self.budget:
            self.spill()

    def spill(self) -> None:
        """Write every group held in memory to disk, one IPC file per key, and free the memory."""
        if not self._held:
            return
        target = self.folder / f"spill-{self._spills:05d}"
        target.mkdir(parents=True, exist_ok=True)
        for n, (value, parts) in enumerate(self._held.items()):
            path = target / f"{n:06d}.arrow"
            pl.concat(parts, rechunk=True).write_ipc(path, compression="uncompressed")
            self._spilled[value].append(path)
        self._spills += 1
        self._held.clear()
        self._held_bytes = 0

    def keys(self) -> list[Hashable]:
        """Every key seen, ascending, the null key (if any) last."""
        seen = set(self._held) | set(self._spilled)
        return sorted(k for k in seen if k is not None) + ([None] if None in seen else [])

    def take(self, value: Hashable) -> pl.DataFrame:
        """All rows with key `value` (spilled first, then held, in arrival order); they are forgotten here."""
        paths = self._spilled.pop(value, [])
        parts = [pl.read_ipc(p, memory_map=True, rechunk=False) for p in paths]
        held = self._held.pop(value, [])
        self._held_bytes -= sum(p.estimated_size() for p in held)
        rows = pl.concat(parts + held, rechunk=True)
        for path in paths:
            path.unlink()
        return rows
