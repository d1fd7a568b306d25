"""Read the extract window of the source transactions as a stream, date range by date range, in one snapshot.

When the timestamp column is indexed, the window is cut at local midnights into ranges of a few
days, each one COPY BINARY (ADBC) of an index range scan, so a range's dates are complete when
its COPY ends and the extract can finish them while the next range streams. Without such an
index the window is one range (one scan; the caller regroups it). All ranges run in one
REPEATABLE READ transaction, so together they see one snapshot of the source. `prefetch` keeps
the COPY flowing in a background thread while the caller works on what arrived.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

import polars as pl
import psycopg
from psycopg import sql

from riskmodel.pgread import adbc_connection, param, stream_arrow
from riskmodel.quality import local_midnight
from riskmodel.settings import Settings
from riskmodel.spec import TransactionsSpec

TXN_DATE = "txn_date"
T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Rows with `lo <= ts < hi` (None = unbounded), plus the null-timestamp rows when `nulls` and
    the rows stamped from `also_from` on when it is set."""

    lo: datetime | None
    hi: datetime | None
    nulls: bool
    also_from: datetime | None = None

    def params(self) -> dict[str, str]:
        """The query parameters of `extract_query` for this range."""
        return {"lo": self.lo.isoformat() if self.lo else "-infinity",
                "hi": self.hi.isoformat() if self.hi else "infinity",
                "also": self.also_from.isoformat() if self.also_from else "infinity"}


def extract_query(tx: TransactionsSpec, nulls: bool = True, also: bool = False) -> sql.Composed:
    """SELECT of the spec's columns (NUMERIC as float8, categories as text) from `lo` to `hi`.

    With `nulls`, rows with a null timestamp come too (the quality rules quarantine them); with
    `also`, the rows stamped from `also` on (the future-stamped ones, read in the same scan when the
    source has no timestamp index; an index range scan keeps its plain range condition)."""
    ident = sql.Identifier
    cols = [ident(tx.id), ident(tx.account_id), ident(tx.timestamp),
            sql.SQL("{}::float8 AS {}").format(ident(tx.amount), ident(tx.amount))]
    cols += [sql.SQL("{}::float8 AS {}").format(ident(c), ident(c)) for c in tx.numeric]
    cols += [sql.SQL("{}::text AS {}").format(ident(c), ident(c)) for c in tx.categorical]
    ts = ident(tx.timestamp)
    text = "{ts} IS NULL OR ({ts} >= {lo} AND {ts} < {hi})" if nulls else "{ts} >= {lo} AND {ts} < {hi}"
    bounds = {"ts": ts, "lo": param("lo", "timestamptz"), "hi": param("hi", "timestamptz")}
    if also:
        text += " OR {ts} >= {also}"
        bounds["also"] = param("also", "timestamptz")
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=sql.SQL(", ").join(cols), table=ident(tx.db_schema, tx.table),
        where=sql.SQL(text).format(**bounds))


def timestamp_indexed(conn: psycopg.Connection, tx: TransactionsSpec) -> bool:
    """True when some index of the source table starts with its timestamp column."""
    table = sql.Identifier(tx.db_schema, tx.table).as_string(conn)
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = to_regclass(%s) AND a.attname = %s)", (table, tx.timestamp)).fetchone()
    return bool(row and row[0])


def plan_ranges(conn: psycopg.Connection, settings: Settings, tx: TransactionsSpec, lo: datetime | None,
                hi: datetime | None, days: int, future: datetime | None = None) -> list[Range]:
    """Cut the window [lo, hi) at local midnights every `days` days between its first and last row,
    and read the rows stamped from `future` on too: with a timestamp index as one more range, without
    one in the window's single scan."""
    if not timestamp_indexed(conn, tx):
        return [Range(lo, hi, True, future)]
    tail = [] if future is None else [Range(future, None, False)]
    whole = [Range(lo, hi, True), *tail]
    ts = sql.Identifier(tx.timestamp)
    first, last = conn.execute(
        sql.SQL("SELECT min({ts}), max({ts}) FROM {t} "
                "WHERE {ts} >= %s::timestamptz AND {ts} < %s::timestamptz").format(
            ts=ts, t=sql.Identifier(tx.db_schema, tx.table)),
        (lo.isoformat() if lo else "-infinity", hi.isoformat() if hi else "infinity")).fetchone()
    if first is None:
        return whole
    tz = settings.tz
    cuts: list[datetime] = []
    day: date = first.astimezone(tz).date() + timedelta(days=days)
    while day <= last.astimezone(tz).date():
        cuts.append(local_midnight(day, tz))
        day += timedelta(days=days)
    bounds = [lo, *cuts, hi]
    return [*(Range(a, b, k == 0) for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))), *tail]


def stream_ranges(settings: Settings, tx: TransactionsSpec,
                  ranges: list[Range]) -> Iterator[pl.DataFrame | None]:
    """Each range's rows in chunks (UTC timestamps, local `txn_date` added), then None once it is done."""
    ts = pl.col(tx.timestamp).dt.convert_time_zone("UTC")
    local_date = ts.dt.convert_time_zone(settings.tz.key).dt.date().alias(TXN_DATE)
    with adbc_connection(settings) as conn:
        if len(ranges) > 1:
            with conn.cursor() as cur:
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.commit()
        for part in ranges:
            query = extract_query(tx, part.nulls, part.also_from is not None)
            for batch in stream_arrow(conn, query, part.params()):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield frame.with_columns(ts, local_date)
            yield None


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` items ahead; errors surface here."""
    box: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                box.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put("error", exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=pump, name="riskflow-extract-read", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "item":
                yield value  # type: ignore[misc]
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                return
    finally:
        stop.set()
        worker.join()
