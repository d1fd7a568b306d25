"""Analyst views and functions in sql/050_views.sql return the right rows on a small fixture."""

from __future__ import annotations

import datetime as dt
import uuid

import polars as pl
import pytest

from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.served import top_movers
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec
from riskmodel.writeback import write_scores

D1, D2, D3 = dt.date(2026, 6, 28), dt.date(2026, 6, 29), dt.date(2026, 6, 30)
# account -> score per night (None: not scored that night)
SCORES = {
    "a1": (0.10, 0.12, 0.90),
    "a2": (0.50, 0.40, 0.45),
    "a3": (0.95, 0.90, None),
    "a4": (None, 0.20, 0.05),
    "a5": (0.30, None, 0.31),
}


def _band(score: float) -> str:
    return "high" if score >= 0.8 else "medium" if score >= 0.4 else "low"


@pytest.fixture()
def scored(initialised: Settings, demo_spec: FeatureSpec) -> Settings:
    """Three nights of hand-made scores; db init re-applied on top to prove idempotence."""
    for i, day in enumerate((D1, D2, D3)):
        rows = [(acct, s[i]) for acct, s in SCORES.items() if s[i] is not None]
        frame = pl.DataFrame({
            "account_id": [a for a, _ in rows], "risk_score": [s for _, s in rows],
            "risk_band": [_band(s) for _, s in rows],
            "reason_codes": [["recent_burst"] if s >= 0.8 else [] for _, s in rows],
        })
        write_scores(initialised, score_date=day, scores=frame, model_version=f"m{i}",
                     model_sha256="b" * 64, run_id=uuid.uuid4(), watermark=None)
    init_database(initialised, demo_spec, demo_source=True)
    return initialised


def _query(settings: Settings, query: str, params: tuple = ()) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(query, params).fetchall()


def test_latest_scores_one_row_per_account_with_its_last_score(scored: Settings) -> None:
    rows = _query(scored, "SELECT account_id, score_date, risk_score, risk_band FROM riskflow.latest_scores"
                          " ORDER BY account_id")
    assert rows == [("a1", D3, 0.90, "high"), ("a2", D3, 0.45, "medium"), ("a3", D2, 0.90, "high"),
                    ("a4", D3, 0.05, "low"), ("a5", D3, 0.31, "low")]


def test_latest_night_is_only_the_last_date(scored: Settings) -> None:
    rows = _query(scored, "SELECT account_id, score_date, model_version FROM riskflow.latest_night"
                          " ORDER BY account_id")
    assert rows == [("a1", D3, "m2"), ("a2", D3, "m2"), ("a4", D3, "m2"), ("a5", D3, "m2")]


def test_band_counts_per_night(scored: Settings) -> None:
    rows = _query(scored, "SELECT score_date, risk_band, accounts, share::float8 FROM riskflow.band_counts"
                          " ORDER BY score_date, risk_band")
    assert rows == [
        (D1, "high", 1, 0.25), (D1, "low", 2, 0.5), (D1, "medium", 1, 0.25),
        (D2, "high", 1, 0.25), (D2, "low", 2, 0.5), (D2, "medium", 1, 0.25),
        (D3, "high", 1, 0.25), (D3, "low", 2, 0.5), (D3, "medium", 1, 0.25),
    ]


def test_movers_against_the_previous_scored_night(scored: Settings) -> None:
    latest = _query(scored, "SELECT account_id, previous_date, round(change::numeric, 4)::float8,"
                            " previous_band, risk_band FROM riskflow.latest_movers")
    assert latest == [("a1", D2, 0.78, "low", "high"), ("a4", D2, -0.15, "low", "low"),
                      ("a2", D2, 0.05, "medium", "medium")]
    top = _query(scored, "SELECT account_id, round(change::numeric, 4)::float8"
                         " FROM riskflow.score_movers(%s, 1)", (D2,))
    assert top == [("a2", -0.1)]
    assert _query(scored, "SELECT count(*) FROM riskflow.score_movers(%s)", (D1,)) == [(0,)]
    summary = top_movers(scored, D3, limit=2)
    assert [(m["account_id"], m["previous_date"], round(m["change"], 4), m["previous_band"], m["risk_band"],
             m["reason_codes"]) for m in summary] == [("a1", D2, 0.78, "low", "high", ["recent_burst"]),
                                                      ("a4", D2, -0.15, "low", "low", [])]
    assert (summary[0]["previous_score"], summary[0]["risk_score"]) == (0.12, 0.90)
    assert top_movers(scored, D1) == []


def test_account_history_in_date_order_with_changes(scored: Settings) -> None:
    rows = _query(scored, "SELECT score_date, risk_score, risk_band, reason_codes,"
                          " round(change::numeric, 4)::float8 FROM riskflow.account_history(%s)", ("a1",))
    assert rows == [(D1, 0.10, "low", [], None), (D2, 0.12, "low", [], 0.02),
                    (D3, 0.90, "high", ["recent_burst"], 0.78)]
    assert _query(scored, "SELECT count(*) FROM riskflow.account_history('nobody')") == [(0,)]


def test_history_and_latest_night_use_indexes_and_pruning(scored: Settings) -> None:
    with connect(scored) as conn:
        indexed = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'riskflow'"
            " AND tablename ~ '^risk_scores_p[0-9]{8}_[0-9]+$' AND indexdef LIKE '%%(account_id, score_date)'"
        ).fetchone()
        conn.execute("SET enable_seqscan = off")
        history = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (COSTS OFF) SELECT * FROM riskflow.risk_scores WHERE account_id = 'a1'").fetchall())
        conn.execute("RESET enable_seqscan")
        night = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM riskflow.latest_night").fetchall())
    assert indexed == (3,)
    assert history.count("Index Cond: (account_id = 'a1'::text)") == 3, history
    assert night.count("(never executed)") >= 2, night


def test_latest_night_comes_from_scored_nights_and_partitions_keep_one_index(scored: Settings) -> None:
    with connect(scored) as conn:
        nights = conn.execute("SELECT score_table, score_date, model_version, row_count"
                              " FROM riskflow.scored_nights ORDER BY score_date").fetchall()
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT max(score_date) FROM riskflow.latest_night").fetchall())
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'riskflow' AND tablename = %s",
            ("risk_scores_p20260630",)).fetchone()[0]
    assert nights == [("risk_scores", day, f"m{i}", 4) for i, day in enumerate((D1, D2, D3))]
    assert "scored_nights" in plan, plan
    assert plan.count("(never executed)") == 2, plan
    assert indexes == 1, "the night's partitioned primary key only"
