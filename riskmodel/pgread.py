"""Read a query into Polars through ADBC, which streams Postgres `COPY ... (FORMAT BINARY)` to Arrow.

Measured here, ADBC reaches the raw COPY BINARY rate, while bound parameters make the driver
leave its COPY path. So values travel as parameters of `set_config` into session settings
named `riskflow.p_<name>`, and the query reads them back with `param(name, type)`; the query
itself is composed with `psycopg.sql` (identifiers quoted) and never contains pasted values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pyarrow as pa
from psycopg import sql

from riskmodel.db import connect_error, database_url
from riskmodel.errors import DatabaseError, TransientDatabaseError, first_line
from riskmodel.settings import Settings

_PARAM_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_PG_TYPES = frozenset({"timestamptz", "date", "text", "float8", "int8"})


def param(name: str, pg_type: str) -> sql.Composed:
    """SQL reading the session parameter `name` as `pg_type` (set by `read_arrow`).

    A scalar subquery, so Postgres evaluates it once per query (an InitPlan), not once per row."""
    if not _PARAM_NAME.match(name) or pg_type not in _PG_TYPES:
        raise ValueError(f"bad query parameter {name!r}::{pg_type!r}")
    setting = sql.Literal(f"riskflow.p_{name}")
    return sql.SQL("(SELECT current_setting({})::{})").format(setting, sql.SQL(pg_type))


@contextmanager
def adbc_connection(settings: Settings) -> Iterator[adbc.Connection]:
    """An ADBC connection to the configured database, running as the writer role like `db.connect`."""
    url = database_url(settings)
    try:
        conn = adbc.connect(url)
    except Exception as exc:  # the driver raises its own error hierarchy
        raise connect_error(url, exc, " (ADBC)") from None
    try:
        if settings.run_as_writer:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.writer_role))
                            .as_string(None))
        yield conn
    finally:
        conn.close()


def _set_params(cur: adbc.Cursor, params: Mapping[str, str] | None) -> None:
    for name, value in (params or {}).items():
        if not _PARAM_NAME.match(name):
            raise ValueError(f"bad query parameter name {name!r}")
        cur.execute("SELECT set_config($1, $2, false)", parameters=(f"riskflow.p_{name}", value))
        cur.fetchall()


def _query_error(exc: Exception) -> DatabaseError:
    """The driver's error as ours: a dropped connection or an I/O failure (the DB-API's
    OperationalError) is transient; a bad query, a missing table or column is not."""
    kind = TransientDatabaseError if isinstance(exc, adbc.OperationalError) else DatabaseError
    return kind(f"query failed: {first_line(exc)[:300]}")


def read_arrow(conn: adbc.Connection, query: sql.Composable,
               params: Mapping[str, str] | None = None) -> pa.Table:
    """Run `query` with `params` (text values, read back by `param`) and return an Arrow table."""
    with conn.cursor() as cur:
        _set_params(cur, params)
        try:
            cur.execute(query.as_string(None))
            return cur.fetch_arrow_table()
        except Exception as exc:
            raise _query_error(exc) from None


def read_frame(settings: Settings, query: sql.Composable,
               params: Mapping[str, str] | None = None) -> pl.DataFrame:
    """`read_arrow` on a fresh connection, as a Polars DataFrame."""
    with adbc_connection(settings) as conn:
        return pl.from_arrow(read_arrow(conn, query, params))  # type: ignore[return-value]


def stream_arrow(conn: adbc.Connection, query: sql.Composable,
                 params: Mapping[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """Like `read_arrow`, but yield record batches (a few MB each) as they arrive, in bounded memory."""
    with conn.cursor() as cur:
        _set_params(cur, params)
        try:
            cur.execute(query.as_string(None))
            reader = cur.fetch_record_batch()
            yield from reader
        except Exception as exc:
            raise _query_error(exc) from None
