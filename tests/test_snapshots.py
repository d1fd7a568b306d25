"""Training snapshots: closed label windows, reporting lag, known-bad accounts left out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.lake import extract
from riskmodel.settings import Settings
from riskmodel.snapshots import build_training_shards, fit_feature_state, training_cutoffs
from riskmodel.spec import FeatureSpec
from tests.datapath_helpers import END, execute, seed_tiny_bank

T = END - timedelta(days=10)


def at(day: date, hour: int = 12) -> datetime:
    """Noon UTC of `day`."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_training_cutoffs_keep_only_closed_windows(demo_spec: FeatureSpec) -> None:
    spec = demo_spec.model_copy(update={"horizon_days": 5, "reporting_lag_days": 2})
    cuts = training_cutoffs(spec, date(2026, 6, 1), date(2026, 6, 30), 7, as_of=date(2026, 6, 30))
    assert cuts == [date(2026, 6, 1), date(2026, 6, 8), date(2026, 6, 15), date(2026, 6, 22)]
    with pytest.raises(ConfigError, match="every_days"):
        training_cutoffs(spec, date(2026, 6, 1), date(2026, 6, 30), 0, as_of=date(2026, 6, 30))


def test_labels_respect_reporting_lag_and_known_bad(initialised: Settings, demo_spec: FeatureSpec,
                                                    tmp_path) -> None:
    spec = demo_spec.model_copy(update={"horizon_days": 5, "reporting_lag_days": 2, "max_seq_len": 8})
    seed_tiny_bank(initialised, accounts=12, days=40)
    extract(initialised, spec, END)
    as_of = T + timedelta(days=7)
    events = [
        (1, at(T + timedelta(days=2)), at(T + timedelta(days=3)), "fraud"),      # label 1
        (2, at(T + timedelta(days=2)), at(as_of + timedelta(days=1)), "fraud"),  # reported after as_of: 0
        (3, at(T - timedelta(days=3)), at(T - timedelta(days=1)), "chargeback"),  # known bad at t: left out
        (4, at(T - timedelta(days=3)), at(T + timedelta(days=1)), "fraud"),      # not yet known at t: kept, 0
        (5, at(T + timedelta(days=6)), at(T + timedelta(days=6)), "fraud"),      # after the horizon: 0
        (6, at(T + timedelta(days=1)), at(T + timedelta(days=2)), "dispute"),    # not a positive type: 0
        (7, at(T + timedelta(days=5), 23), at(T + timedelta(days=6)), "default"),  # last day of horizon: 1
    ]
    for row in events:
        execute(initialised, "INSERT INTO bank.risk_events (account_id, event_ts, reported_at, event_type) "
                             "VALUES (%s, %s, %s, %s)", row)
    state = fit_feature_state(initialised, spec, END - timedelta(days=39), T)
    assert state.window == ((END - timedelta(days=39)).isoformat(), T.isoformat())
    paths = build_training_shards(initialised, spec, state, [T], tmp_path, as_of=as_of)
    batch = SequenceBatch.concat([SequenceBatch.load(p) for p in paths])
    labels = dict(zip(batch.account_id.tolist(), batch.label.tolist(), strict=True))
    assert 3 not in labels
    assert labels[1] == 1.0 and labels[7] == 1.0
    assert labels[2] == 0.0 and labels[4] == 0.0 and labels[5] == 0.0 and labels[6] == 0.0
    assert (batch.cutoff == np.datetime64(T, "D")).all()
    assert sum(labels.values()) == 2
    with pytest.raises(ConfigError, match="label window not closed"):
        build_training_shards(initialised, spec, state, [as_of - timedelta(days=3)], tmp_path, as_of=as_of)

    def sampled(name: str, seed: int) -> SequenceBatch:
        out = build_training_shards(initialised, spec, state, [T], tmp_path / name, as_of=as_of,
                                    negative_keep=0.3, seed=seed)
        return SequenceBatch.concat([SequenceBatch.load(p) for p in out])

    first, again, other = sampled("a", 5), sampled("b", 5), sampled("c", 6)
    assert first.label.sum() == 2
    assert set(first.account_id.tolist()) < set(labels)
    assert first.account_id.tolist() == again.account_id.tolist()
    assert {1, 7} <= set(other.account_id.tolist()) and len(first) < len(batch)
    with pytest.raises(ConfigError, match="negative keep rate"):
        build_training_shards(initialised, spec, state, [T], tmp_path / "d", as_of=as_of, negative_keep=0.0)


def test_feature_state_round_trips_and_ranks_by_frequency(initialised: Settings,
                                                          demo_spec: FeatureSpec) -> None:
    rows = seed_tiny_bank(initialised, accounts=10, days=20)
    extract(initialised, demo_spec, END)
    state = fit_feature_state(initialised, demo_spec, END - timedelta(days=19), END)
    frame = pl.DataFrame({"mcc": [r[4] for r in rows]})
    counts = frame["mcc"].value_counts().sort(["count", "mcc"], descending=[True, False])
    assert state.vocab["mcc"] == counts["mcc"].to_list()
    assert state.static_vocab["home_country"] == ["DE"]
    assert state.static_cat_cardinalities == [len(state.static_vocab["segment"]) + 2, 3]
    again = type(state).from_dict(state.to_dict())
    assert again == state
    bad = state.to_dict() | {"format": 99}
    with pytest.raises(ConfigError, match="format"):
        type(state).from_dict(bad)
