"""Counts of inputs the builder handled rather than quarantined: single events, histories at L,
unseen categories and accounts with no event in the window."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import polars as pl

from riskmodel.batch import SequenceBatch
from riskmodel.input_counts import InputCounts
from riskmodel.sequences import build_cutoff, prepare
from riskmodel.spec import FeatureSpec
from tests.test_sequences import LOOKBACK, D, events_frame, fitted_state, small_spec


def test_counts_single_events_full_histories_unseen_categories_and_idle_accounts(
        demo_spec: FeatureSpec) -> None:
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    minutes_before = [-600, -500, -400, -300, -200]
    draws = [(1, m, "z" if i in (0, 3) else "a", "pos") for i, m in enumerate(minutes_before)]
    draws += [(2, -10, "z", "online")]
    draws += [(3, -(LOOKBACK + 2) * 24 * 60, "a", "pos")]
    batches = build_cutoff(prepare(events_frame(draws), spec, fitted_state(spec), ZoneInfo("UTC"), 2),
                           spec, D, ZoneInfo("UTC"))

    counts = InputCounts()
    for batch in batches:
        counts.add(batch)
    counts.count_idle_accounts(pl.Series([1, 2, 3, 4]))

    assert counts.accounts_scored == 2
    assert counts.one_event == 1
    assert counts.at_max_length == 1
    assert counts.events == 4 + 1
    # Account 1 keeps its last four events: one "z" (the fourth) survives, the first was cut off.
    assert counts.unseen_event_categories["mcc"] == 1 + 1
    assert all(n == 0 for name, n in counts.unseen_event_categories.items() if name != "mcc")
    assert counts.accounts_without_events == 2
    rows = {r["input"]: r["count"] for r in counts.rows()}
    assert rows["accounts with no event in the lookback window (not scored)"] == 2
    assert rows["events with an unseen or null mcc"] == 2
    assert sorted(SequenceBatch.concat(batches).lengths.tolist()) == [1, 4]


def test_without_an_accounts_table_idle_accounts_are_not_guessed() -> None:
    counts = InputCounts()
    counts.count_idle_accounts(None)
    assert counts.accounts_without_events is None
    assert all("lookback window" not in r["input"] for r in counts.rows())
