"""Atomic write-back of one night's scores: binary COPY into staging leaves, then a partition swap.

A night's partition of `risk_scores` is itself partitioned by account range into one or two
leaves. Each leaf is built as a plain table on its own connection, both at once (same columns
and indexes as the parent, plus a CHECK constraint matching the leaf's date and account range so
ATTACH skips its validation scan). Only the columns that vary per account travel in the COPY;
the night's constants (date, model version, scoring time, run id) are the leaf's column defaults
while it is filled. The rows are validated first; worker threads find their account order, group
the (band, reasons) pairs so each distinct pair is encoded once, and compute the checksum, while
this thread connects. The rows are sent in account byte order (the primary key's COLLATE "C"
order), so the index build sorts presorted input. The run record and the leaves commit
asynchronously: the swap's synchronous commit flushes them with itself, and a crash before it
loses nothing that was served. One short transaction then creates the night's partitioned table
over the leaves, copies the rows being replaced into the audit table, detaches and drops the
old partition, attaches the new one, and records the run in pipeline_runs and scored_nights.
Lock waits in that transaction are bounded by `lock_timeout` and retried a bounded number of
times, so analysts' queries are never cancelled and never queue behind the writer for long. A run
that dies at any point leaves the previous contents of the date as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal, TypeVar

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from riskmodel import faults, pgcopy, writer_pool
from riskmodel.db import advisory_lock, connect, stored_error
from riskmodel.errors import ConfigError, DatabaseError, RiskflowError, TransientDatabaseError, first_line
from riskmodel.settings import Settings

log = logging.getLogger("riskflow.writeback")

ScoreTable = Literal["risk_scores", "risk_scores_shadow"]
SCORE_TABLES: tuple[str, ...] = ("risk_scores", "risk_scores_shadow")
COLUMNS = ("score_date", "account_id", "risk_score", "risk_band", "model_version", "reason_codes",
           "scored_at", "run_id")
VARYING_COLUMNS = ("account_id", "risk_score", "risk_band", "reason_codes")
LOCK_ATTEMPTS = 8
FIRST_BLOCK_ROWS = 2_048
MAX_LEAVES = 2
BLOCK_ROWS = 16_384
PARALLEL_INDEX_ROWS = 1_000_000
CHECKSUM_VERSION = "riskflow-scores-v2"
T = TypeVar("T")


class InjectedFailure(RiskflowError):
    """Raised on purpose by `write_scores(fail_after=...)` so tests can prove a crash is harmless."""


@dataclass(frozen=True)
class WriteReport:
    """What `write_scores` did: rows written and replaced, the checksum, lock attempts, timings, and
    the account-range leaves the night's partition was built as."""

    table: str
    score_date: dt.date
    run_id: uuid.UUID
    partition: str
    rows: int
    replaced_rows: int
    checksum: str
    attempts: int
    seconds: dict[str, float] = field(default_factory=dict)
    leaves: int = 1


def partition_name(table: str, score_date: dt.date) -> str:
    """The name of a day's partition, e.g. `risk_scores_p20260630`."""
    return f"{table}_p{score_date:%Y%m%d}"


def date_lock_name(schema: str, table: str, score_date: dt.date) -> str:
    """The advisory lock a write (or the retention drop) of one table and date holds."""
    return f"score:{schema}.{table}:{score_date.isoformat()}"


def _check_table(table: str) -> None:
    if table not in SCORE_TABLES:
        raise ConfigError(f"table must be one of {SCORE_TABLES}, got {table!r}")


def validate_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """Validate and normalise the scores frame (columns, types, nulls, ranges), in its own row order.

    Repeated accounts are found by `sorted_checksum` (and by the partition's primary key)."""
    need = ("account_id", "risk_score", "risk_band", "reason_codes")
    missing = [c for c in need if c not in scores.columns]
    if missing:
        raise ConfigError(f"scores: missing column(s) {missing}; need {list(need)}")
    df = scores.select(
        pl.col("account_id").cast(pl.Utf8),
        pl.col("risk_score").cast(pl.Float64),
        pl.col("risk_band").cast(pl.Utf8),
        pl.col("reason_codes").cast(pl.List(pl.Utf8)),
    )
    nulls = df.null_count().row(0)
    for column, count in zip(need, nulls, strict=True):
        if count:
            row = int(df.with_row_index().filter(pl.col(column).is_null())["index"][0])
            raise ConfigError(f"scores: column {column!r} has {count} null(s), first at row {row}")
    null_code = df.with_row_index().filter(
        pl.col("reason_codes").list.eval(pl.element().is_null()).list.any())
    if null_code.height:
        raise ConfigError(f"scores: column 'reason_codes' has a null code at row {null_code['index'][0]} "
                          f"(account {null_code['account_id'][0]!r})")
    score = pl.col("risk_score")
    bad = df.with_row_index().filter(~score.is_between(0.0, 1.0) | score.is_nan())
    if bad.height:
        raise ConfigError(f"scores: risk_score must be in [0, 1]; row {bad['index'][0]} "
                          f"(account {bad['account_id'][0]!r}) has {bad['risk_score'][0]}")
    if df.height == 0:
        raise ConfigError("scores: no rows; refusing to replace a night's scores with nothing")
    return df


def _hash_strings(digest: hashlib._Hash, values: pa.Array) -> None:
    """Feed a string or binary array's lengths and bytes (not its memory layout) into `digest`."""
    values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values) + 1]
    digest.update(np.diff(offsets).astype("<i8").tobytes())
    digest.update(memoryview(values.buffers()[2])[int(offsets[0]):int(offsets[-1])])


def _short_keys(ids: pa.Array) -> np.ndarray | None:
    """Ids of at most 8 bytes as big-endian integers, zero-padded, whose order is the ids' byte order
    (Postgres text holds no NUL byte, so the padding sorts first like a shorter id); None when an id
    is longer."""
    raw = ids.cast(pa.large_binary())
    n = len(raw)
    offsets = np.frombuffer(raw.buffers()[1], np.int64)[raw.offset:raw.offset + n + 1]
    lengths = np.diff(offsets)
    if n == 0 or lengths.max() > 8:
        return None
    data = raw.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    block = np.zeros((n, 8), np.uint8)
    width = int(lengths.max())
    if lengths.min() == width:
        block[:, :width] = values[offsets[0]:offsets[-1]].reshape(n, width)
    else:
        columns = np.arange(8)
        gather = np.minimum(offsets[:-1, None] + columns, len(values) - 1)
        block = np.where(columns < lengths[:, None], values[gather], 0).astype(np.uint8)
    return block.view(">u8").ravel()


def account_order(rows: pa.Table) -> pa.Array:
    """Row positions of `rows` in account_id byte order (the order of the primary key's COLLATE "C").

    Ids of at most 8 bytes sort as integers, about three times faster than a string sort; repeated
    ids end up next to each other in either case. Arrow in and out: Arrow data is immutable, so a
    worker thread may sort while the caller works (a Polars frame used by two threads at once can
    deadlock)."""
    ids = rows.column("account_id").combine_chunks()
    keys = _short_keys(ids)
    return pc.sort_indices(ids) if keys is None else pa.array(np.argsort(keys))


@dataclass(frozen=True)
class PairFields:
    """Each row's (risk_band, reason_codes) pair as a number into those pairs' COPY fields, encoded
    once: a night has a few dozen distinct pairs, so encoding them per row would repeat the same
    bytes thousands of times. The fields are in byte order, so the numbers do not depend on how
    the pairs were grouped."""

    fields: pa.Array
    pairs: pa.Array


def group_pairs(rows: pl.DataFrame) -> PairFields:
    """The `PairFields` of validated rows. Polars groups the pairs exactly (lists compare element by
    element); call it on the thread that uses the frame, since a Polars frame used by two threads at
    once can deadlock."""
    grouped = (rows.select("risk_band", "reason_codes").with_row_index("row")
               .group_by(["risk_band", "reason_codes"]).agg(pl.col("row")).with_row_index("pair"))
    members = grouped.select("pair", "row").explode("row", empty_as_null=False)
    distinct = grouped.select("risk_band", "reason_codes").to_arrow()
    fields = pc.binary_join_element_wise(
        pgcopy.text_field(distinct.column("risk_band").combine_chunks()),
        pgcopy.text_array_field(distinct.column("reason_codes").combine_chunks()), pgcopy.SEPARATOR)
    by_bytes = pc.sort_indices(fields).to_numpy()
    number = np.empty(len(by_bytes), np.uint32)
    number[by_bytes] = np.arange(len(by_bytes), dtype=np.uint32)
    pairs = np.empty(rows.height, np.uint32)
    pairs[members["row"].to_numpy()] = number[members["pair"].to_numpy()]
    return PairFields(fields.take(pa.array(by_bytes)), pa.array(pairs))


@dataclass(frozen=True)
class SortedRows:
    """A night's `VARYING_COLUMNS` in account order, as the COPY and the checksum read them: account
    ids, scores, and each row's number into `fields` (its band and reasons, encoded)."""

    ids: pa.Array
    scores: np.ndarray
    pair: np.ndarray
    fields: pa.Array


def sort_rows(rows: pa.Table, order: pa.Array, pairs: PairFields) -> SortedRows:
    """The `SortedRows` of validated rows (as Arrow, at least account_id and risk_score), given their
    `account_order` and `group_pairs`."""
    return SortedRows(rows.column("account_id").take(order).combine_chunks(),
                      rows.column("risk_score").take(order).to_numpy(),
                      pairs.pairs.to_numpy()[order.to_numpy()], pairs.fields)


def sort_frame(rows: pl.DataFrame) -> SortedRows:
    """`sort_rows` of a validated frame in one step, for callers that do not pipeline the steps."""
    table = rows.select("account_id", "risk_score").to_arrow()
    return sort_rows(table, account_order(table), group_pairs(rows))


def encode_sorted_rows(rows: SortedRows, start: int = 0, stop: int | None = None) -> pa.Array:
    """Rows `start:stop` as binary COPY records of `VARYING_COLUMNS`, one array value per row (as
    `pgcopy.encode_row_array` makes them, for `pgcopy.rows_block`); Arrow in and out."""
    stop = len(rows.ids) if stop is None else stop
    head, ids = pgcopy.row_with_text_field(len(VARYING_COLUMNS), rows.ids.slice(start, stop - start))
    return pc.binary_join_element_wise(
        head, ids, pgcopy.float8_field(rows.scores[start:stop]),
        rows.fields.take(pa.array(rows.pair[start:stop])), pgcopy.SEPARATOR)


def sorted_checksum(score_date: dt.date, rows: SortedRows, model_version: str) -> str:
    """sha256 over one model version's night: its date, row count and version, the distinct (band,
    reasons) fields, then per row in account order the account id, the score's bits and the
    field's number; raises on a repeated account_id.

    The fields are the bytes the COPY sends, numbered in byte order, so equal rows give equal
    checksums however they were grouped; hashing each row's number instead of its band and
    reasons keeps the hash to a few bytes a row."""
    ids = rows.ids
    repeated = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    if pc.any(repeated).as_py():
        first = pc.index(repeated, True).as_py()
        raise ConfigError(f"scores: account_id {ids[first].as_py()!r} appears more than once")
    digest = hashlib.sha256(f"{CHECKSUM_VERSION}|{score_date.isoformat()}|{len(ids)}|".encode())
    digest.update(pgcopy.text_value(model_version))
    _hash_strings(digest, rows.fields)
    _hash_strings(digest, ids)
    digest.update(rows.scores.astype("<f8").tobytes())
    digest.update(rows.pair.astype("<u4").tobytes())
    return digest.hexdigest()


def scores_checksum(score_date: dt.date, rows: pl.DataFrame) -> str:
    """The checksum of a day's stored rows (as `scores_for_date` reads them): `sorted_checksum` of one
    model version's rows, or, for several versions (a shadow date), sha256 over each version's.

    `scored_at` and `run_id` are left out, so a rerun over unchanged inputs has the same checksum.
    """
    versions = sorted(rows["model_version"].unique().to_list())
    if len(versions) == 1:
        return _version_checksum(score_date, rows, versions[0])
    digest = hashlib.sha256(f"{CHECKSUM_VERSION}-versions|{score_date.isoformat()}|{len(versions)}|".encode())
    for version in versions:
        digest.update(pgcopy.text_value(version))
        digest.update(_version_checksum(score_date, rows, version).encode())
    return digest.hexdigest()


def _version_checksum(score_date: dt.date, rows: pl.DataFrame, version: str) -> str:
    """`sorted_checksum` of the stored rows of one model version."""
    return sorted_checksum(score_date, sort_frame(rows.filter(pl.col("model_version") == version)), version)


def copy_blocks(start: int, stop: int) -> list[tuple[int, int]]:
    """(start, stop) of the COPY blocks of rows `start:stop`: a small first block, so the server starts
    copying early, then blocks of `BLOCK_ROWS`."""
    first = min(stop, start + FIRST_BLOCK_ROWS)
    return [(start, first)] + [(a, min(stop, a + BLOCK_ROWS)) for a in range(first, stop, BLOCK_ROWS)]


@dataclass(frozen=True)
class Leaf:
    """One account range of a night's partition, built as its own table on its own connection:
    rows `start:stop` in account order, accounts from `low` (None: no bound) to before `high`."""

    number: int
    start: int
    stop: int
    low: str | None
    high: str | None

    def staging(self, part: str) -> str:
        """The table's name while it is built, before the swap attaches it."""
        return f"{part}_stage{self.number}"

    def attached(self, part: str) -> str:
        """The table's name once attached under the night's partition."""
        return f"{part}_{self.number}"


def splits(n: int, split_rows: int) -> bool:
    """Whether a night of `n` rows is written as two account-range halves (`split_rows` 0: never)."""
    return bool(split_rows) and n >= max(split_rows, 2)


def plan_leaves(rows: pa.Table, order: pa.Array, split_rows: int) -> list[Leaf]:
    """One leaf for the whole night, or two account-range halves when `splits` says so."""
    n = rows.num_rows
    if not splits(n, split_rows):
        return [Leaf(0, 0, n, None, None)]
    middle = n // 2
    split = rows.column("account_id")[order[middle].as_py()].as_py()
    return [Leaf(0, 0, middle, None, split), Leaf(1, middle, n, split, None)]


def _partitions(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """Names of `table`'s direct partitions (none for a plain table)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = %s AND p.relname = %s ORDER BY c.relname",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows]


def _parent_indexes(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[bool, list[str]]]:
    """(is_primary, columns) of the parent's plain ascending btree indexes, to pre-build on staging."""
    rows = conn.execute(
        "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)"
        " FROM pg_index i"
        " JOIN pg_class p ON p.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " JOIN pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = ic.relam"
        " CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND p.relname = %s AND i.indexprs IS NULL AND i.indpred IS NULL"
        "   AND am.amname = 'btree' AND (i.indisprimary OR NOT i.indisunique)"
        "   AND 0 = ALL (i.indoption::int2[])"
        " GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, i.indexrelid",
        (schema, table),
    ).fetchall()
    return [(bool(r[0]), list(r[1])) for r in rows]


def byte_ordered(locale: str | None, provider: str) -> bool:
    """Whether a collation (its locale and provider: `c` libc, `i` ICU, `b` builtin) orders text by
    its bytes (or code points, the same order in UTF-8), the order in which the write sorts and
    splits account ids. Only then can a night be split at an account: in another order the halves'
    bounds would not hold their rows."""
    return provider == "b" or (provider == "c" and locale in ("C", "POSIX", "C.UTF-8", "C.utf8"))


def _accounts_byte_ordered(conn: psycopg.Connection, schema: str, table: str) -> bool:
    """`byte_ordered` for the collation of `table`'s account_id (the database's when it has none of
    its own: tables created before account ids were COLLATE "C"; before Postgres 15 a database's
    collation is always libc's)."""
    locale, provider = conn.execute(
        "SELECT CASE WHEN c.collname = 'default' THEN d.datcollate ELSE c.collcollate END,"
        "       CASE WHEN c.collname = 'default' THEN coalesce(to_jsonb(d) ->> 'datlocprovider', 'c')"
        "            ELSE c.collprovider::text END"
        " FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
        " JOIN pg_database d ON d.datname = current_database()"
        " WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND a.attname = 'account_id'",
        (schema, table)).fetchone()
    return byte_ordered(locale, str(provider))


def _with_lock_retry(conn: psycopg.Connection, work: Callable[[], T], *, what: str,
                     lock_timeout_ms: int, attempts: int = LOCK_ATTEMPTS) -> tuple[T, int]:
    """Run `work` in one transaction with a bounded lock wait; retry on lock timeouts with backoff."""
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                return work(), attempt
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            wait = min(0.1 * 2 ** (attempt - 1), 2.0)
            log.warning("%s: lock wait over %d ms (attempt %d/%d: %s); retrying in %.1fs", what,
                        lock_timeout_ms, attempt, attempts, first_line(exc), wait)
            if attempt < attempts:
                time.sleep(wait)
    raise TransientDatabaseError(f"{what}: other sessions held conflicting locks through {attempts} "
                                 f"attempts of lock_timeout_ms={lock_timeout_ms}; nothing was changed, "
                                 "retry later")


def _mark_abandoned(conn: psycopg.Connection, schema: str, run_id: uuid.UUID, score_date: dt.date,
                    table: str) -> None:
    """Runs of this table and date still 'running' died mid-write (the caller holds their lock): mark them."""
    conn.execute(
        sql.SQL("UPDATE {} SET status = 'failed', finished_at = now(), details = details || %s::jsonb"
                " WHERE status = 'running' AND score_date = %s AND details->>'table' = %s"
                " AND run_id <> %s").format(sql.Identifier(schema, "pipeline_runs")),
        (json.dumps({"error": f"abandoned: the process ended mid-write; found by run {run_id}"}),
         score_date, table, run_id),
    )


def _record_start(conn: psycopg.Connection, schema: str, run_id: uuid.UUID, flow: str,
                  score_date: dt.date, watermark: dt.datetime | None, model_version: str,
                  model_sha256: str, table: str, leftovers: list[str]) -> None:
    """Record the run as running, close runs of the date abandoned mid-write and drop the staging
    tables they left (the caller holds the date's lock)."""
    conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
    for name in leftovers:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
    _mark_abandoned(conn, schema, run_id, score_date, table)
    conn.execute(
        sql.SQL(
            "INSERT INTO {runs} (run_id, flow, score_date, status, watermark, model_version, model_sha256,"
            " details) VALUES (%s, %s, %s, 'running', %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (run_id) DO UPDATE SET status = 'running', flow = EXCLUDED.flow,"
            " score_date = EXCLUDED.score_date, watermark = EXCLUDED.watermark,"
            " model_version = EXCLUDED.model_version, model_sha256 = EXCLUDED.model_sha256,"
            " finished_at = NULL, details = ({alias}.details - 'error')"
            " || jsonb_strip_nulls(jsonb_build_object('previous_error', {alias}.details->'error'))"
            " || EXCLUDED.details"
        ).format(runs=sql.Identifier(schema, "pipeline_runs"), alias=sql.Identifier("pipeline_runs")),
        (run_id, flow, score_date, watermark, model_version, model_sha256,
         json.dumps({"table": table})),
    )
    conn.commit()


def _record_failure(settings: Settings, run_id: uuid.UUID, error: BaseException) -> None:
    try:
        with connect(settings) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET status = 'failed', finished_at = now(),"
                        " details = details || %s::jsonb WHERE run_id = %s AND status <> 'succeeded'").format(
                    sql.Identifier(settings.db_schema, "pipeline_runs")),
                (json.dumps({"error": stored_error(f"{type(error).__name__}: {error}")}), run_id),
            )
    except (psycopg.Error, RiskflowError) as exc:
        log.warning("could not mark run %s failed: %s", run_id, exc)


def write_scores(settings: Settings, *, score_date: dt.date, scores: pl.DataFrame,
                 model_version: str, model_sha256: str, run_id: uuid.UUID,
                 watermark: dt.datetime | None, table: ScoreTable = "risk_scores",
                 flow: str = "nightly_scoring",
                 fail_after: Literal["staging", "swap"] | None = None,
                 lock_attempts: int = LOCK_ATTEMPTS) -> WriteReport:
    """Replace the scores of `score_date` in `table` atomically and record the run in pipeline_runs.

    For `risk_scores_shadow` only the rows of `model_version` are replaced (other challengers'
    rows for the date are kept); give shadow writes their own `run_id`. Replaced `risk_scores`
    rows go to `risk_scores_audit`. `fail_after` injects a failure (tests only).
    """
    _check_table(table)
    if not model_version:
        raise ConfigError("model_version must be a non-empty string")
    t0 = time.perf_counter()
    df = validate_scores(scores)
    night = _Night(settings, table, partition_name(table, score_date), score_date, model_version, run_id,
                   settings.lock_timeout_ms * lock_attempts, df.height)
    schema, part = settings.db_schema, night.part
    seconds: dict[str, float] = {"prepare": time.perf_counter() - t0}
    with ExitStack() as stack:
        # Two threads besides this one: each thread started while others compute costs this one
        # milliseconds of waiting on 2 cores. One takes the second leaf's connection (`writer_pool`:
        # kept from the last write, or new), groups the pairs and builds that leaf; the other orders
        # the rows (and groups the pairs when there is one leaf), while this thread connects. Only
        # `group_pairs` reads the Polars frame after this: a frame used by two threads can deadlock.
        leaf_worker = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="riskflow-leaf"))
        row_worker = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="riskflow-rows"))
        second = None
        if splits(night.n, settings.write_split_rows):
            second = leaf_worker.submit(writer_pool.take, settings)
            stack.push(partial(_release_second, settings, second))
        rows = df.select("account_id", "risk_score").to_arrow()
        order = row_worker.submit(account_order, rows)
        pairs = (row_worker if second is None else leaf_worker).submit(group_pairs, df)
        ordered = row_worker.submit(lambda: sort_rows(rows, order.result(), pairs.result()))
        digest = row_worker.submit(lambda: sorted_checksum(score_date, ordered.result(), model_version))
        conn = stack.enter_context(writer_pool.writer_connection(settings))
        stack.enter_context(advisory_lock(conn, date_lock_name(schema, table, score_date)))
        _record_start(conn, schema, run_id, flow, score_date, watermark, model_version,
                      model_sha256, table, leftovers=_staging_names(part))
        seconds["connect"] = time.perf_counter() - t0 - seconds["prepare"]
        try:
            t1 = time.perf_counter()
            with conn.transaction():
                indexes = _parent_indexes(conn, schema, table)
                split_rows = settings.write_split_rows if _accounts_byte_ordered(conn, schema, table) else 0
            night = replace(night, indexes=indexes, rows=rows, order=order.result())
            leaves = plan_leaves(night.rows, night.order, split_rows)
            seconds["order_wait"] = time.perf_counter() - t1
            seconds |= _build_leaves(conn, second, leaf_worker, night, ordered, leaves)
            seconds["stage"] = time.perf_counter() - t1
            faults.pause_point("writeback.after_staging")
            if fail_after == "staging":
                raise InjectedFailure(f"injected failure after staging {part}")
            t2 = time.perf_counter()
            checksum = digest.result()
            seconds["checksum_wait"] = time.perf_counter() - t2
            t2 = time.perf_counter()
            replaced, attempts = _with_lock_retry(
                conn,
                lambda: _swap(conn, night, leaves, checksum=checksum, fail=fail_after == "swap"),
                what=f"swap {schema}.{part}", lock_timeout_ms=settings.lock_timeout_ms,
                attempts=lock_attempts,
            )
            seconds["swap"] = time.perf_counter() - t2
        except BaseException as exc:
            _roll_back_and_drop(conn, schema, _staging_names(part))
            _record_failure(settings, run_id, exc)
            raise
    seconds["total"] = time.perf_counter() - t0
    log.info("wrote %d scores to %s.%s (replaced %d) in %.2fs", night.n, schema, part, replaced,
             seconds["total"])
    return WriteReport(table, score_date, run_id, part, night.n, replaced, checksum, attempts,
                       seconds, len(leaves))


@dataclass(frozen=True)
class _Night:
    """What one write builds: `n` validated rows of one table, date and model version; their Arrow
    `rows`, account `order` and the table's `indexes` are filled in once known."""

    settings: Settings
    table: str
    part: str
    score_date: dt.date
    model_version: str
    run_id: uuid.UUID
    lock_wait_ms: int
    n: int
    scored_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    rows: pa.Table | None = None
    order: pa.Array | None = None
    indexes: list[tuple[bool, list[str]]] = field(default_factory=list)


def _staging_names(part: str) -> list[str]:
    """Every table a write of `part` may leave behind when it dies: its leaves while built, and
    `_stage` (the partitioned table the swap builds; before leaves, the one staging table)."""
    return [f"{part}_stage"] + [Leaf(k, 0, 0, None, None).staging(part) for k in range(MAX_LEAVES)]


def _roll_back_and_drop(conn: psycopg.Connection, schema: str, stages: list[str]) -> None:
    """After a failed write: roll back and drop the staging tables, never raising, so the write's own
    error is what the caller sees. On a lost connection they stay for the next write of the date
    (which drops them first) or for retention."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            for stage in stages:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, stage)))
    except psycopg.Error as exc:
        log.warning("could not drop the staging tables of %s.%s: %s", schema, stages[0], first_line(exc))


def _release_second(settings: Settings, connection: Future[psycopg.Connection],
                    exc_type: type[BaseException] | None, *_: object) -> bool:
    """`writer_pool.release` the second leaf's connection as the write ended (an ExitStack exit
    callback); a failed connect was reported where it was used."""
    try:
        conn = connection.result()
    except (psycopg.Error, RiskflowError):
        return False
    writer_pool.release(settings, conn, clean=exc_type is None)
    return False


def _build_leaves(conn: psycopg.Connection, second: Future[psycopg.Connection] | None,
                  leaf_worker: ThreadPoolExecutor, night: _Night, ordered: Future[SortedRows],
                  leaves: list[Leaf]) -> dict[str, float]:
    """Build every leaf at once, the first on `conn` in this thread and the second on `second` in
    `leaf_worker`, then `_assemble` the night's table over them; seconds per step of the first.
    Every builder has finished when this returns or raises, so a failed write can drop what they
    built."""
    if len(leaves) > 1 and second is None:
        raise ConfigError(f"{night.part}: {len(leaves)} leaves but no second connection")
    others = [leaf_worker.submit(lambda leaf=leaf: _build_leaf(second.result(), night, ordered, leaf))
              for leaf in leaves[1:]]
    try:
        seconds = _build_leaf(conn, night, ordered, leaves[0])
        for other in others:
            other.result()
        _assemble(conn, night, leaves)
    except (psycopg.errors.UniqueViolation, psycopg.errors.CheckViolation):
        wait(others)
        sorted_checksum(night.score_date, ordered.result(), night.model_version)
        raise
    except psycopg.errors.LockNotAvailable as exc:
        wait(others)
        raise TransientDatabaseError(
            f"staging {night.settings.db_schema}.{night.part}: another session held a lock on "
            f"{night.settings.db_schema}.{night.table} for over {night.lock_wait_ms} ms (lock_timeout_ms x "
            f"lock attempts); nothing was changed, retry later ({first_line(exc)})") from None
    except BaseException:
        wait(others)
        raise
    return seconds


def _build_leaf(conn: psycopg.Connection, night: _Night, ordered: Future[SortedRows],
                leaf: Leaf) -> dict[str, float]:
    """Create, fill and index one leaf's staging table (committed; nobody reads it yet); seconds per step.

    Lock waits (the parent's, for CREATE TABLE ... LIKE) are bounded by the night's `lock_wait_ms`,
    so a night never hangs behind another session's exclusive lock.

    The leaf's rows' `VARYING_COLUMNS` are sent in account order, encoded one block at a time
    while the server copies the previous block; the night's constants are column defaults while
    the COPY runs, dropped again before the commit. A CHECK constraint holds the rows to the
    leaf's date and account range, so attaching it later skips the validation scan. The first block
    waits for the `SortedRows` (sorted and grouped on a worker thread while the table is created).
    The COPY runs with FREEZE (allowed: the table is created in the same transaction): rows are
    written frozen and all-visible, so neither the index build nor readers set hint bits later. Below
    `PARALLEL_INDEX_ROWS` the index builds without parallel workers, whose start costs more than
    they save on a small heap."""
    schema, table = night.settings.db_schema, night.table
    stage = leaf.staging(night.part)
    stage_id = sql.Identifier(schema, stage)
    constants = {"score_date": night.score_date, "model_version": night.model_version,
                 "scored_at": night.scored_at, "run_id": night.run_id}
    bounds = [sql.SQL("score_date >= {}").format(sql.Literal(night.score_date)),
              sql.SQL("score_date < {}").format(sql.Literal(night.score_date + dt.timedelta(days=1)))]
    if leaf.low is not None:
        bounds.append(sql.SQL("account_id >= {}").format(sql.Literal(leaf.low)))
    if leaf.high is not None:
        bounds.append(sql.SQL("account_id < {}").format(sql.Literal(leaf.high)))
    with conn.transaction():
        t_create = time.perf_counter()
        conn.execute("SELECT set_config('synchronous_commit', 'off', true),"
                     " set_config('lock_timeout', %s, true),"
                     " set_config('max_parallel_maintenance_workers', CASE WHEN %s THEN '0'"
                     " ELSE current_setting('max_parallel_maintenance_workers') END, true)",
                     (f"{night.lock_wait_ms}ms", leaf.stop - leaf.start < PARALLEL_INDEX_ROWS))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                     .format(stage_id, sql.Identifier(schema, table)))
        set_defaults = sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(c), sql.Literal(v))
            for c, v in constants.items())
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}), {}").format(
            stage_id, sql.Identifier(f"{stage}_bound"), sql.SQL(" AND ").join(bounds), set_defaults))
        t0 = time.perf_counter()
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
            stage_id, sql.SQL(", ").join(map(sql.Identifier, VARYING_COLUMNS)))
        with conn.cursor() as cur, cur.copy(copy_sql, writer=QueuedLibpqWriter(cur)) as copy:
            copy.write(pgcopy.HEADER)
            rows = ordered.result()
            for start, stop in copy_blocks(leaf.start, leaf.stop):
                block = encode_sorted_rows(rows, start, stop)
                copy.write(memoryview(pgcopy.rows_block(block)))
            copy.write(pgcopy.TRAILER)
        conn.execute(sql.SQL("ALTER TABLE {} {}").format(stage_id, sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(c)) for c in constants)))
        t1 = time.perf_counter()
        _create_indexes(conn, night.indexes, stage_id)
        t2 = time.perf_counter()
    return {"create": t0 - t_create, "copy": t1 - t0, "index": t2 - t1, "commit": time.perf_counter() - t2}


def _create_indexes(conn: psycopg.Connection, indexes: list[tuple[bool, list[str]]],
                    target: sql.Identifier) -> None:
    """Give `target` the score table's `indexes` (`_parent_indexes`), so ATTACH only links them."""
    for primary, columns in indexes:
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        if primary:
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, cols))
        else:
            conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(target, cols))


def _night_tables(conn: psycopg.Connection, schema: str, part: str) -> list[sql.Identifier]:
    """The tables holding a night's rows: its leaves, or the partition itself when it is a plain table
    (nights written before leaves). The swap reads these, never the night's partitioned table: a
    query on a partitioned table that is itself a partition locks the score table, and two swaps
    holding that lock while each waits to detach its old night would deadlock."""
    return [sql.Identifier(schema, name) for name in _partitions(conn, schema, part) or [part]]


def _assemble(conn: psycopg.Connection, night: _Night, leaves: list[Leaf]) -> None:
    """The night's partitioned table over its built leaves, as `<part>_stage` (committed; nobody reads
    it yet). Its own transaction, before the swap: creating a table LIKE the parent locks the parent
    until commit, and two swaps holding that lock while each waits to detach an old night would
    deadlock."""
    schema, part = night.settings.db_schema, night.part
    new = sql.Identifier(schema, f"{part}_stage")
    with conn.transaction():
        conn.execute("SELECT set_config('synchronous_commit', 'off', true),"
                     " set_config('lock_timeout', %s, true)", (f"{night.lock_wait_ms}ms",))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                             " PARTITION BY RANGE (account_id)").format(
                                 new, sql.Identifier(schema, night.table)))
        _create_indexes(conn, night.indexes, new)
        for leaf in leaves:
            conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                new, sql.Identifier(schema, leaf.staging(part)),
                sql.SQL("MINVALUE") if leaf.low is None else sql.Literal(leaf.low),
                sql.SQL("MAXVALUE") if leaf.high is None else sql.Literal(leaf.high)))


def _swap(conn: psycopg.Connection, night: _Night, leaves: list[Leaf], *, checksum: str, fail: bool) -> int:
    """The one short transaction: audit, keep other versions (shadow), detach+drop old, attach the
    night's table `_assemble` built, rename it and its leaves."""
    schema, table, part = night.settings.db_schema, night.table, night.part
    parent = sql.Identifier(schema, table)
    old = sql.Identifier(schema, part)
    new = sql.Identifier(schema, f"{part}_stage")
    exists = part in _partitions(conn, schema, table)
    replaced = 0
    kept = 0
    if exists:
        cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        scope = sql.SQL("model_version = %s") if table == "risk_scores_shadow" else sql.SQL("true")
        scope_args: tuple[object, ...] = (night.model_version,) if table == "risk_scores_shadow" else ()
        for source in _night_tables(conn, schema, part):
            if table == "risk_scores":
                replaced += conn.execute(
                    sql.SQL("INSERT INTO {} ({}, replaced_by_run) SELECT {}, %s FROM {}").format(
                        sql.Identifier(schema, "risk_scores_audit"), cols, cols, source),
                    (night.run_id,),
                ).rowcount
            else:
                replaced += conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {}").format(source, scope), scope_args
                ).fetchone()[0]
                kept += conn.execute(
                    sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT ({})").format(
                        new, cols, cols, source, scope), scope_args,
                ).rowcount
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, old))
        conn.execute(sql.SQL("DROP TABLE {}").format(old))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        parent, new, sql.Literal(night.score_date), sql.Literal(night.score_date + dt.timedelta(days=1))))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(part)))
    for leaf in leaves:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(schema, leaf.staging(part)), sql.Identifier(leaf.attached(part))))
    _record_night(conn, schema, table, night.score_date, night.model_version, night.run_id, night.n)
    faults.pause_point("writeback.in_swap")
    if fail:
        raise InjectedFailure(f"injected failure during the swap of {schema}.{part}")
    conn.execute(
        sql.SQL("UPDATE {} SET status = 'succeeded', finished_at = now(), row_count = %s,"
                " checksum = %s, details = details || %s::jsonb WHERE run_id = %s").format(
            sql.Identifier(schema, "pipeline_runs")),
        (night.n, checksum, json.dumps({"table": table, "replaced_rows": replaced, "kept_rows": kept}),
         night.run_id),
    )
    return replaced


def _record_night(conn: psycopg.Connection, schema: str, table: str, score_date: dt.date,
                  model_version: str, run_id: uuid.UUID, rows: int) -> None:
    """List the night in scored_nights: a risk_scores night replaces the date's entry, a shadow night
    only its model version's."""
    nights = sql.Identifier(schema, "scored_nights")
    conn.execute(sql.SQL("DELETE FROM {} WHERE score_table = %s AND score_date = %s"
                         " AND (%s OR model_version = %s)").format(nights),
                 (table, score_date, table == "risk_scores", model_version))
    conn.execute(sql.SQL("INSERT INTO {} (score_table, score_date, model_version, run_id, row_count)"
                         " VALUES (%s, %s, %s, %s, %s)").format(nights),
                 (table, score_date, model_version, run_id, rows))


def scores_for_date(settings: Settings, score_date: dt.date, table: ScoreTable = "risk_scores",
                    model_version: str | None = None) -> pl.DataFrame:
    """Every stored score of `score_date` in `table` (only `model_version`'s when given), ordered by
    account (and model version)."""
    _check_table(table)
    select = [sql.SQL("{}::text").format(sql.Identifier(c)) if c == "run_id" else sql.Identifier(c)
              for c in COLUMNS]
    scope = sql.SQL("") if model_version is None else sql.SQL(" AND model_version = %s")
    query = sql.SQL("SELECT {} FROM {} WHERE score_date = %s{} ORDER BY account_id, model_version").format(
        sql.SQL(", ").join(select), sql.Identifier(settings.db_schema, table), scope)
    args: tuple[object, ...] = (score_date,) if model_version is None else (score_date, model_version)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    schema = {"score_date": pl.Date, "account_id": pl.Utf8, "risk_score": pl.Float64,
              "risk_band": pl.Utf8, "model_version": pl.Utf8, "reason_codes": pl.List(pl.Utf8),
              "scored_at": pl.Datetime("us", "UTC"), "run_id": pl.Utf8}
    return pl.DataFrame(rows, schema=schema, orient="row")


def stored_checksum(settings: Settings, score_date: dt.date, table: ScoreTable = "risk_scores",
                    model_version: str | None = None) -> str:
    """The checksum of what is stored for `score_date` now. It equals the writing run's checksum; in
    `risk_scores_shadow`, where several challengers share a date, give the run's `model_version`."""
    return scores_checksum(score_date, scores_for_date(settings, score_date, table, model_version))


@dataclass(frozen=True)
class RetentionReport:
    """What `drop_expired_partitions` did: tables dropped, tables skipped (a writer held the date)
    and their dates, audit rows deleted, and the first date kept."""

    cutoff: dt.date
    dropped: list[str]
    skipped: list[str]
    audit_rows: int
    skipped_days: list[dt.date] = field(default_factory=list)


def _expired_tables(conn: psycopg.Connection, schema: str, table: str,
                    cutoff: dt.date) -> list[tuple[str, dt.date]]:
    """(name, date) of `table`'s day partitions and leftover staging tables dated before `cutoff`."""
    prefix = f"{table}_p"
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND left(c.relname, %s) = %s",
        (schema, len(prefix), prefix),
    ).fetchall()
    found = []
    for (name,) in rows:
        day = _partition_day(table, re.sub(r"_stage\d*$", "", name))
        if day is not None and day < cutoff:
            found.append((name, day))
    return sorted(found, key=lambda item: (item[1], item[0]))


def drop_expired_partitions(settings: Settings, today: dt.date, retention_days: int) -> RetentionReport:
    """Drop the day partitions of both score tables, and staging tables left by killed runs, dated
    before `today - retention_days`, and delete the audit rows of those dates (a date kept because a
    writer held it keeps its audit rows too).

    Each date is dropped under that table and date's write lock, tried once: a date a writer holds
    now is skipped (logged) and dropped by a later run. The DETACH and DROP wait for analysts'
    queries on the partition as the swap does (`lock_timeout` tries with backoff, a few seconds in
    all), and a partition still read after that is skipped the same way."""
    if retention_days < 1:
        raise ConfigError(f"retention_days must be >= 1, got {retention_days}")
    cutoff = today - dt.timedelta(days=retention_days)
    schema = settings.db_schema
    dropped: list[str] = []
    skipped: list[str] = []
    skipped_days: list[dt.date] = []
    with connect(settings) as conn:
        for table in SCORE_TABLES:
            parent = sql.Identifier(schema, table)
            partitions = set(_partitions(conn, schema, table))
            for name, day in _expired_tables(conn, schema, table, cutoff):
                attached = name in partitions

                def drop(name: str = name, attached: bool = attached, parent: sql.Identifier = parent,
                         table: str = table, day: dt.date = day) -> None:
                    if attached:
                        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                            parent, sql.Identifier(schema, name)))
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
                    if attached:
                        conn.execute(sql.SQL("DELETE FROM {} WHERE score_table = %s AND score_date = %s")
                                     .format(sql.Identifier(schema, "scored_nights")), (table, day))

                try:
                    with advisory_lock(conn, date_lock_name(schema, table, day), timeout_s=0):
                        _with_lock_retry(conn, drop, what=f"drop {schema}.{name}",
                                         lock_timeout_ms=settings.lock_timeout_ms)
                except DatabaseError as exc:
                    log.warning("retention: kept %s.%s for now: %s", schema, name, exc)
                    skipped.append(name)
                    skipped_days.append(day)
                    continue
                dropped.append(name)
        audit_rows = conn.execute(
            sql.SQL("DELETE FROM {} WHERE score_date < %s AND score_date <> ALL(%s)").format(
                sql.Identifier(schema, "risk_scores_audit")), (cutoff, sorted(set(skipped_days)))).rowcount
        conn.commit()
    log.info("retention: dropped %d table(s) and %d audit row(s) dated before %s", len(dropped),
             audit_rows, cutoff)
    return RetentionReport(cutoff, dropped, skipped, audit_rows, sorted(set(skipped_days)))


def _partition_day(table: str, name: str) -> dt.date | None:
    prefix = f"{table}_p"
    suffix = name[len(prefix):]
    if not name.startswith(prefix) or len(suffix) != 8 or not suffix.isdigit():
        return None
    try:
        return dt.datetime.strptime(suffix, "%Y%m%d").date()
    except ValueError:
        return None
