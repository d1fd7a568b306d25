"""The spec's small source tables (accounts, risk events) as Polars frames, with fixed column types.

Static account columns come back as `account_id`, numeric columns as Float64, categorical
columns as String; risk events as `account_id`, `event_ts`, `reported_at` (UTC), `event_type`.
"""

from __future__ import annotations

import polars as pl
from psycopg import sql

from riskmodel.pgread import param, read_frame
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

ACCOUNT = "account_id"


def read_accounts(settings: Settings, spec: FeatureSpec) -> pl.DataFrame | None:
    """The accounts table's static columns (None when the spec names no accounts table)."""
    acc = spec.accounts
    if acc is None:
        return None
    cols = [sql.SQL("{} AS {}").format(sql.Identifier(acc.account_id), sql.Identifier(ACCOUNT))]
    cols += [sql.SQL("{}::float8 AS {}").format(sql.Identifier(c), sql.Identifier(c)) for c in acc.numeric]
    cols += [sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c)) for c in acc.categorical]
    query = sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
        sql.SQL(", ").join(cols), sql.Identifier(acc.db_schema, acc.table))
    frame = read_frame(settings, query)
    return frame.with_columns([pl.col(c).cast(pl.Float64) for c in acc.numeric]
                              + [pl.col(c).cast(pl.String) for c in acc.categorical])


def read_events(settings: Settings, spec: FeatureSpec) -> pl.DataFrame:
    """Positive-type risk events with the time each became known (`reported_at`, else `event_ts`)."""
    ev = spec.events
    reported = sql.Identifier(ev.reported_at) if ev.reported_at else sql.Identifier(ev.timestamp)
    query = sql.SQL(
        "SELECT {acc} AS account_id, {ts} AS event_ts, {rep} AS reported_at, {typ}::text AS event_type "
        "FROM {table} WHERE {typ}::text = ANY(string_to_array({types}, chr(31))) ORDER BY 1, 2"
    ).format(acc=sql.Identifier(ev.account_id), ts=sql.Identifier(ev.timestamp), rep=reported,
             typ=sql.Identifier(ev.event_type), table=sql.Identifier(ev.db_schema, ev.table),
             types=param("types", "text"))
    frame = read_frame(settings, query, {"types": "\x1f".join(ev.positive_types)})
    return frame.with_columns(pl.col("event_ts").dt.convert_time_zone("UTC"),
                              pl.col("reported_at").dt.convert_time_zone("UTC"))
