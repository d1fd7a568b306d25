"""Counts of the unusual-but-legal inputs a night handled rather than quarantined.

Quarantine counts bad rows; this counts what the builder absorbed: accounts with a single
event, histories at the maximum length L, event and static categories that mapped to "unseen" (id 1: a value
outside the frozen vocabulary, or a null), and accounts of the accounts table that had no event in
the lookback window and so were not scored. A person reading the night's report sees them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from riskmodel.batch import SequenceBatch

UNSEEN = 1


@dataclass
class InputCounts:
    """Running totals over the night's shards; `add` one batch at a time, `rows` for a table."""

    accounts_scored: int = 0
    one_event: int = 0
    at_max_length: int = 0
    events: int = 0
    unseen_event_categories: dict[str, int] = field(default_factory=dict)
    unseen_static_categories: dict[str, int] = field(default_factory=dict)
    accounts_without_events: int | None = None
    scored_ids: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, batch: SequenceBatch) -> None:
        """Fold one shard into the totals."""
        lengths = batch.lengths
        self.accounts_scored += len(batch)
        self.scored_ids.append(np.asarray(batch.account_id).astype(str))
        self.one_event += int((lengths == 1).sum())
        self.at_max_length += int((lengths >= batch.seq_len).sum())
        self.events += int(lengths.sum())
        real = np.arange(batch.seq_len)[None, :] < lengths[:, None]
        for j, name in enumerate(batch.names.get("cat", [])):
            hits = int(((batch.cat[..., j] == UNSEEN) & real).sum())
            self.unseen_event_categories[name] = self.unseen_event_categories.get(name, 0) + hits
        for j, name in enumerate(batch.names.get("static_cat", [])):
            hits = int((batch.static_cat[:, j] == UNSEEN).sum())
            self.unseen_static_categories[name] = self.unseen_static_categories.get(name, 0) + hits

    def count_idle_accounts(self, known: pl.Series | None) -> None:
        """Accounts in `known` (the accounts table's ids) that were not scored: no event in the window."""
        if known is None:
            return
        scored = pl.Series("scored", np.concatenate(self.scored_ids) if self.scored_ids else [],
                           dtype=pl.String)
        idle = known.cast(pl.String).unique().is_in(scored.implode()).not_()
        self.accounts_without_events = int(idle.sum())

    def rows(self) -> list[dict[str, Any]]:
        """One row per count, for a table artifact and the CLI."""
        out: list[dict[str, Any]] = [
            {"input": "accounts scored", "count": self.accounts_scored},
            {"input": "accounts with a single event", "count": self.one_event},
            {"input": "accounts at the maximum length L (any older events dropped)",
             "count": self.at_max_length},
            {"input": "events in the sequences", "count": self.events},
        ]
        if self.accounts_without_events is not None:
            out.append({"input": "accounts with no event in the lookback window (not scored)",
                        "count": self.accounts_without_events})
        out += [{"input": f"events with an unseen or null {name}", "count": n}
                for name, n in self.unseen_event_categories.items()]
        out += [{"input": f"accounts with an unseen or null {name}", "count": n}
                for name, n in self.unseen_static_categories.items()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly totals for the run summary."""
        return {"accounts_scored": self.accounts_scored, "one_event": self.one_event,
                "at_max_length": self.at_max_length, "events": self.events,
                "accounts_without_events": self.accounts_without_events,
                "unseen_event_categories": dict(self.unseen_event_categories),
                "unseen_static_categories": dict(self.unseen_static_categories)}
