"""Refusals: a backfill without a champion, and write-back inputs that must never reach the table."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import polars as pl
import pytest

from riskmodel.clock import today
from riskmodel.db import connect
from riskmodel.errors import ConfigError
from riskmodel.lake import lake_dates
from riskmodel.registry import RegistryError
from riskmodel.settings import Settings
from riskmodel.writeback import WriteReport, drop_expired_partitions, stored_checksum, write_scores
from tests.flow_helpers import flow_env
from tests.writeback_helpers import score_frame

DAY = dt.date(2026, 6, 30)


def _write(settings: Settings, frame: pl.DataFrame, **kw: Any) -> WriteReport:
    """write_scores of DAY with a fixed sha256 and a fresh run id; `kw` overrides the rest."""
    args: dict[str, Any] = {"model_version": "v1", "table": "risk_scores", **kw}
    return write_scores(settings, score_date=DAY, scores=frame, model_sha256="f" * 64, run_id=uuid.uuid4(),
                        watermark=None, **args)


def _runs(settings: Settings) -> list[str]:
    """Statuses of the recorded runs, oldest first."""
    with connect(settings) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM riskflow.pipeline_runs ORDER BY started_at")]


def _at(frame: pl.DataFrame, row: int, column: str, value: object) -> pl.DataFrame:
    """`frame` with `column` of `row` set to `value`."""
    changed = pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column))
    return frame.with_columns(changed.cast(frame.schema[column]).alias(column))


def test_backfill_without_a_champion_refuses_and_does_nothing(
        initialised: Settings, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no champion registered the backfill flow fails, saying to train one, before any work."""
    from flows.backfill import backfill
    from flows.params import BackfillParams

    for key, value in flow_env(initialised).items():
        monkeypatch.setenv(key, value)
    end = today(initialised.tz) - dt.timedelta(days=1)
    state = backfill(BackfillParams(start=end - dt.timedelta(days=2), end=end), return_state=True)
    assert state.is_failed()
    with pytest.raises(RegistryError, match="no champion model is registered: train one first"):
        state.result()
    assert lake_dates(initialised) == [] and _runs(initialised) == []


NULL_AT = r"column '{}' has 1 null\(s\), first at row {}"
OUT_OF_RANGE = r"risk_score must be in \[0, 1\]; row {} \(account 'acct\d{{5}}'\) has {}"
BAD_FRAMES = {
    "null_account": (lambda f: _at(f, 2, "account_id", None), NULL_AT.format("account_id", 2)),
    "null_score": (lambda f: _at(f, 4, "risk_score", None), NULL_AT.format("risk_score", 4)),
    "null_band": (lambda f: _at(f, 6, "risk_band", None), NULL_AT.format("risk_band", 6)),
    "negative": (lambda f: _at(f, 3, "risk_score", -0.01), OUT_OF_RANGE.format(3, "-0.01")),
    "nan": (lambda f: _at(f, 8, "risk_score", float("nan")), OUT_OF_RANGE.format(8, "nan")),
    "duplicate": (lambda f: pl.concat([f, f.slice(7, 1)]), r"account_id 'acct\d{5}' appears more than once"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_scores_are_refused_naming_the_column_and_the_table_is_unchanged(
        initialised: Settings, case: str) -> None:
    """Each bad frame raises a ConfigError naming its column and row; the stored night stays as it was."""
    frame = score_frame(10, seed=4)
    good = _write(initialised, frame)
    change, message = BAD_FRAMES[case]
    with pytest.raises(ConfigError, match=message):
        _write(initialised, change(frame), model_version="v2")
    assert stored_checksum(initialised, DAY) == good.checksum
    assert _runs(initialised) == ["succeeded"] + (["failed"] if case == "duplicate" else [])


def test_bad_write_arguments_and_retention_are_refused(initialised: Settings) -> None:
    """An empty model version, an unknown table and a retention under a day change nothing."""
    good = _write(initialised, score_frame(10, seed=5))
    with pytest.raises(ConfigError, match="model_version must be a non-empty string"):
        _write(initialised, score_frame(12, seed=6), model_version="")
    with pytest.raises(ConfigError, match=r"table must be one of .* got 'risk_scores_audit'"):
        _write(initialised, score_frame(12, seed=6), table="risk_scores_audit")
    with pytest.raises(ConfigError, match="retention_days must be >= 1, got 0"):
        drop_expired_partitions(initialised, DAY + dt.timedelta(days=30), retention_days=0)
    assert stored_checksum(initialised, DAY) == good.checksum and _runs(initialised) == ["succeeded"]
