"""Questions about what was served: which dates a model already scored, the top accounts of a date,
the accounts whose score moved most since the night before."""

from __future__ import annotations

from datetime import date
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from riskmodel.db import connect
from riskmodel.settings import Settings


def scored_dates(settings: Settings, model_version: str, start: date, end: date) -> list[date]:
    """Dates in [start, end] whose served scores in `risk_scores` come from `model_version`."""
    query = sql.SQL("SELECT score_date FROM {} WHERE score_table = 'risk_scores'"
                    " AND score_date BETWEEN %s AND %s AND model_version = %s ORDER BY 1").format(
        sql.Identifier(settings.db_schema, "scored_nights"))
    with connect(settings) as conn:
        return [r[0] for r in conn.execute(query, (start, end, model_version)).fetchall()]


def top_accounts(settings: Settings, score_date: date, limit: int = 10) -> list[dict[str, Any]]:
    """The `limit` riskiest accounts of a date with band and reasons, highest score first."""
    query = sql.SQL("SELECT account_id, risk_score, risk_band, reason_codes, model_version FROM {} "
                    "WHERE score_date = %s ORDER BY risk_score DESC, account_id LIMIT %s").format(
        sql.Identifier(settings.db_schema, "risk_scores"))
    return _dict_rows(settings, query, (score_date, limit))


def top_movers(settings: Settings, score_date: date, limit: int = 10) -> list[dict[str, Any]]:
    """The `limit` accounts whose score changed most since the previous scored night, largest change
    first: the `score_movers` SQL function analysts call (sql/050_views.sql), so both agree."""
    query = sql.SQL("SELECT account_id, previous_date, previous_score, risk_score, change, previous_band,"
                    " risk_band, reason_codes FROM {}(%s, %s)").format(
        sql.Identifier(settings.db_schema, "score_movers"))
    return _dict_rows(settings, query, (score_date, limit))


def _dict_rows(settings: Settings, query: sql.Composed, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The rows of `query` as dicts keyed by column name."""
    with connect(settings) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()
