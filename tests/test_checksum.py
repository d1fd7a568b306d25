"""The night checksum: the same rows give the same checksum in any order, any change to what was
served changes it, and the write's pipelined form agrees with the one recomputed from stored rows."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from writeback_helpers import score_frame

from riskmodel.errors import ConfigError
from riskmodel.writeback import (
    scores_checksum,
    sort_frame,
    sorted_checksum,
    validate_scores,
)

DAY = dt.date(2026, 6, 30)


def _as_stored(frame: pl.DataFrame, version: str = "v1") -> pl.DataFrame:
    return frame.with_columns(pl.lit(version).alias("model_version"))


def _written(frame: pl.DataFrame, version: str = "v1", day: dt.date = DAY) -> str:
    """The checksum as `write_scores` computes it, from validated Arrow rows."""
    return sorted_checksum(day, sort_frame(validate_scores(frame)), version)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2**16))
def test_row_order_never_changes_the_checksum(n: int, seed: int) -> None:
    frame = score_frame(n, seed)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    assert _written(frame) == _written(shuffled) == scores_checksum(DAY, _as_stored(shuffled))


@pytest.mark.parametrize(("column", "change"), [
    ("risk_score", pl.col("risk_score").map_elements(lambda s: s + 1e-12 if s < 0.9 else s - 1e-12,
                                                     pl.Float64)),
    ("risk_band", pl.when(pl.col("risk_band") == "low").then(pl.lit("medium"))
     .otherwise(pl.col("risk_band"))),
    ("reason_codes", pl.col("reason_codes").list.reverse()),
    ("reason_codes", pl.when(pl.col("reason_codes").list.len() == 0).then(pl.lit([""]))
     .otherwise(pl.col("reason_codes"))),
    ("reason_codes", pl.col("reason_codes").list.join("").map_elements(lambda s: [s] if s else [],
                                                                      pl.List(pl.Utf8))),
    ("account_id", pl.col("account_id").str.replace("acct", "acc")),
])
def test_any_change_to_a_served_value_changes_the_checksum(column: str, change: pl.Expr) -> None:
    frame = score_frame(200, 3)
    changed = frame.with_columns(change.alias(column))
    assert changed.columns == frame.columns and not changed.equals(frame)
    assert _written(changed) != _written(frame)


def test_date_and_model_version_are_part_of_the_checksum() -> None:
    frame = score_frame(50, 4)
    assert len({_written(frame), _written(frame, version="v2"),
                _written(frame, day=DAY + dt.timedelta(days=1))}) == 3


def test_several_versions_of_a_date_hash_each_version() -> None:
    one, two = _as_stored(score_frame(40, 5), "c1"), _as_stored(score_frame(40, 6), "c2")
    both = pl.concat([two, one])
    assert scores_checksum(DAY, one) == _written(score_frame(40, 5), "c1")
    assert scores_checksum(DAY, both) == scores_checksum(DAY, pl.concat([one, two]))
    assert scores_checksum(DAY, both) not in {scores_checksum(DAY, one), scores_checksum(DAY, two)}


def test_a_repeated_account_is_named() -> None:
    frame = score_frame(30, 7)
    repeated = pl.concat([frame, frame.slice(12, 1)])
    with pytest.raises(ConfigError, match=repr(frame["account_id"][12])):
        _written(repeated)
