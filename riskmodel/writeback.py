"""Atomic write-back of one night's scores: binary COPY into a staging table, then a partition swap.

The staging table is built as the day's future partition (same columns and indexes, plus a
CHECK constraint matching the partition bound so ATTACH skips its validation scan). Only the
columns that vary per account travel in the COPY; the night's constants (date, model version,
scoring time, run id) are the staging table's column defaults while it is filled. The rows are
validated first; a worker thread finds their account order while this thread connects and
creates the staging table, then checks for repeated accounts and computes the checksum while
the server copies and indexes. The rows are sent in account byte order (the primary key's
COLLATE "C" order), so the index build sorts presorted input. The run record and the staging
table commit asynchronously: the swap's synchronous commit flushes them with itself, and a crash
before it loses nothing that was served. One short
transaction then copies the rows being replaced into the audit table, detaches and drops the
old partition and attaches the new one, and records the run in pipeline_runs. Lock waits in
that transaction are bounded by `lock_timeout` and retried a bounded number of times, so
analysts' queries are never cancelled and never queue behind the writer for long. A run that
dies at any point leaves the previous contents of the date as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from riskmodel import faults, pgcopy
from riskmodel.db import advisory_lock, connect, redact
from riskmodel.errors import ConfigError, DatabaseError, RiskflowError, TransientDatabaseError, first_line
from riskmodel.settings import Settings

log = logging.getLogger("riskflow.writeback")

ScoreTable = Literal["risk_scores", "risk_scores_shadow"]
SCORE_TABLES: tuple[str, ...] = ("risk_scores", "risk_scores_shadow")
COLUMNS = ("score_date", "account_id", "risk_score", "risk_band", "model_version", "reason_codes",
           "scored_at", "run_id")
VARYING_COLUMNS = ("account_id", "risk_score", "risk_band", "reason_codes")
LOCK_ATTEMPTS = 8
BLOCK_ROWS = 16_384
PARALLEL_INDEX_ROWS = 1_000_000
T = TypeVar("T")


class InjectedFailure(RiskflowError):
    """Raised on purpose by `write_scores(fail_after=...)` so tests can prove a crash is harmless."""


@dataclass(frozen=True)
class WriteReport:
    """What `write_scores` did: rows written and replaced, the checksum, lock attempts, timings."""

    table: str
    score_date: dt.date
    run_id: uuid.UUID
    partition: str
    rows: int
    replaced_rows: int
    checksum: str
    attempts: int
    seconds: dict[str, float] = field(default_factory=dict)


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
    """Feed a string array's lengths and bytes (not its memory layout) into `digest`."""
    values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values) + 1]
    digest.update(np.diff(offsets).astype("<i8").tobytes())
    digest.update(memoryview(values.buffers()[2])[int(offsets[0]):int(offsets[-1])])


def scores_checksum(score_date: dt.date, rows: pl.DataFrame) -> str:
    """sha256 over a day's rows (account, score bits, band, model version, reasons), in account order.

    `scored_at` and `run_id` are left out, so a rerun over unchanged inputs has the same checksum.
    """
    df = rows.select("account_id", "risk_score", "risk_band", "model_version", "reason_codes")
    ids = df["account_id"]
    if not ids.is_sorted() or (ids == ids.shift(1)).any():
        df = df.sort("account_id", "model_version", multithreaded=False)
    table = df.to_arrow()
    return _digest(score_date, table, table.column("model_version").combine_chunks())


def _digest(score_date: dt.date, table: pa.Table, model_version: pa.Array | str) -> str:
    """The checksum of rows already in account order; `model_version` is a column or one for all rows."""
    n = table.num_rows
    digest = hashlib.sha256(f"riskflow-scores-v1|{score_date.isoformat()}|{n}|".encode())
    for name in ("account_id", "risk_band"):
        _hash_strings(digest, table.column(name).combine_chunks())
    if isinstance(model_version, str):
        raw = model_version.encode()
        digest.update(np.full(n, len(raw), "<i8").tobytes())
        digest.update(raw * n)
    else:
        _hash_strings(digest, model_version)
    digest.update(table.column("risk_score").to_numpy().astype("<f8").tobytes())
    reasons = table.column("reason_codes").combine_chunks().cast(pa.large_list(pa.large_binary()))
    digest.update(pc.list_value_length(reasons).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    _hash_strings(digest, reasons.flatten())
    return digest.hexdigest()


def account_order(rows: pa.Table) -> pa.Array:
    """Row positions of `rows` in account_id byte order (the order of the primary key's COLLATE "C").

    Arrow in and out: Arrow data is immutable, so a worker thread may sort while the caller encodes
    (a Polars frame used by two threads at once can deadlock)."""
    return pc.sort_indices(rows.column("account_id"))


def sorted_checksum(score_date: dt.date, rows: pa.Table, model_version: str,
                    order: pa.Array | None = None) -> str:
    """`scores_checksum` of validated rows (as Arrow) of one model version; raises on a repeated account_id.

    `order` is `account_order(rows)` when the caller has it already."""
    table = rows.take(account_order(rows) if order is None else order)
    ids = table.column("account_id").combine_chunks()
    repeated = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    if pc.any(repeated).as_py():
        first = pc.index(repeated, True).as_py()
        raise ConfigError(f"scores: account_id {ids[first].as_py()!r} appears more than once")
    return _digest(score_date, table, model_version)


def encode_varying_rows(rows: pa.Table) -> pa.Array:
    """Validated rows' `VARYING_COLUMNS` as binary COPY records, one array value per row (see
    `pgcopy.encode_row_array`); Arrow in and out, so a worker thread may encode."""
    return pgcopy.encode_row_array([
        pgcopy.text_field(rows.column("account_id").combine_chunks()),
        pgcopy.float8_field(rows.column("risk_score").to_numpy()),
        pgcopy.text_field(rows.column("risk_band").combine_chunks()),
        pgcopy.text_array_field(rows.column("reason_codes").combine_chunks()),
    ])


def _partitions(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
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
                  model_sha256: str, table: str) -> None:
    conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
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
                (json.dumps({"error": redact(f"{type(error).__name__}: {error}")[:500]}), run_id),
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
    schema = settings.db_schema
    part = partition_name(table, score_date)
    stage = f"{part}_stage"
    seconds: dict[str, float] = {"prepare": time.perf_counter() - t0}
    lock_wait_ms = settings.lock_timeout_ms * lock_attempts
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="riskflow-write"))
        rows = df.to_arrow()
        order = pool.submit(account_order, rows)
        encoded = pool.submit(encode_varying_rows, rows)
        digest = pool.submit(lambda: sorted_checksum(score_date, rows, model_version, order.result()))
        conn = stack.enter_context(connect(settings))
        stack.enter_context(advisory_lock(conn, date_lock_name(schema, table, score_date)))
        _record_start(conn, schema, run_id, flow, score_date, watermark, model_version,
                      model_sha256, table)
        try:
            t1 = time.perf_counter()
            try:
                seconds |= _build_stage(conn, settings, df.height, order, encoded, table=table, stage=stage,
                                        score_date=score_date, model_version=model_version, run_id=run_id,
                                        lock_wait_ms=lock_wait_ms)
            except psycopg.errors.UniqueViolation:
                digest.result()
                raise
            except psycopg.errors.LockNotAvailable as exc:
                raise TransientDatabaseError(
                    f"staging {schema}.{stage}: another session held a lock on {schema}.{table} for over "
                    f"{lock_wait_ms} ms (lock_timeout_ms x lock attempts); "
                    f"nothing was changed, retry later ({first_line(exc)})") from None
            seconds["stage"] = time.perf_counter() - t1
            faults.pause_point("writeback.after_staging")
            if fail_after == "staging":
                raise InjectedFailure(f"injected failure after staging {stage}")
            t2 = time.perf_counter()
            checksum = digest.result()
            seconds["checksum_wait"] = time.perf_counter() - t2
            t2 = time.perf_counter()
            replaced, attempts = _with_lock_retry(
                conn,
                lambda: _swap(conn, schema, table=table, part=part, stage=stage,
                              score_date=score_date, model_version=model_version, run_id=run_id,
                              rows=df.height, checksum=checksum, fail=fail_after == "swap"),
                what=f"swap {schema}.{part}", lock_timeout_ms=settings.lock_timeout_ms,
                attempts=lock_attempts,
            )
            seconds["swap"] = time.perf_counter() - t2
        except BaseException as exc:
            _roll_back_and_drop(conn, schema, stage)
            _record_failure(settings, run_id, exc)
            raise
    seconds["total"] = time.perf_counter() - t0
    log.info("wrote %d scores to %s.%s (replaced %d) in %.2fs", df.height, schema, part, replaced,
             seconds["total"])
    return WriteReport(table, score_date, run_id, part, df.height, replaced, checksum, attempts,
                       seconds)


def _roll_back_and_drop(conn: psycopg.Connection, schema: str, stage: str) -> None:
    """After a failed write: roll back and drop the staging table, never raising, so the write's own
    error is what the caller sees. On a lost connection the table stays for the next write of the date
    (which drops it first) or for retention."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, stage)))
    except psycopg.Error as exc:
        log.warning("could not drop staging table %s.%s: %s", schema, stage, first_line(exc))


def _build_stage(conn: psycopg.Connection, settings: Settings, n: int, order: Future[pa.Array],
                 encoded: Future[pa.Array], *, table: str, stage: str, score_date: dt.date,
                 model_version: str, run_id: uuid.UUID, lock_wait_ms: int) -> dict[str, float]:
    """Create, fill and index the staging table (committed; nobody reads it yet); seconds per step.

    Lock waits (the parent's, for CREATE TABLE ... LIKE) are bounded by `lock_wait_ms`, so a night
    never hangs behind another session's exclusive lock.

    The `n` `encoded` rows (`VARYING_COLUMNS` only) are sent in `order`, both made on worker threads
    while the table is created, in blocks of `BLOCK_ROWS`; the night's constants are column
    defaults while the COPY runs, dropped again before the commit. The COPY runs with FREEZE
    (allowed: the table is created in the same transaction): rows are written frozen and
    all-visible, so neither the index build nor readers set hint bits later. Below
    `PARALLEL_INDEX_ROWS` the index builds without parallel workers, whose start costs more than
    they save on a small heap."""
    schema = settings.db_schema
    stage_id = sql.Identifier(schema, stage)
    next_day = score_date + dt.timedelta(days=1)
    constants = {"score_date": score_date, "model_version": model_version,
                 "scored_at": dt.datetime.now(dt.UTC), "run_id": run_id}
    with conn.transaction():
        t_create = time.perf_counter()
        conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_wait_ms}ms",))
        if n < PARALLEL_INDEX_ROWS:
            conn.execute("SELECT set_config('max_parallel_maintenance_workers', '0', true)")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage_id))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                     .format(stage_id, sql.Identifier(schema, table)))
        set_defaults = sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(c), sql.Literal(v))
            for c, v in constants.items())
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {}"
                             " CHECK (score_date >= {} AND score_date < {}), {}")
                     .format(stage_id, sql.Identifier(f"{stage}_bound"), sql.Literal(score_date),
                             sql.Literal(next_day), set_defaults))
        t_wait = time.perf_counter()
        positions, records = order.result(), encoded.result()
        t0 = time.perf_counter()
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
            stage_id, sql.SQL(", ").join(map(sql.Identifier, VARYING_COLUMNS)))
        with conn.cursor() as cur, cur.copy(copy_sql, writer=QueuedLibpqWriter(cur)) as copy:
            copy.write(pgcopy.HEADER)
            for start in range(0, n, BLOCK_ROWS):
                block = pc.take(records, positions.slice(start, BLOCK_ROWS))
                copy.write(memoryview(pgcopy.rows_block(block)))
            copy.write(pgcopy.TRAILER)
        conn.execute(sql.SQL("ALTER TABLE {} {}").format(stage_id, sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(c)) for c in constants)))
        t1 = time.perf_counter()
        for primary, columns in _parent_indexes(conn, schema, table):
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            if primary:
                conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(stage_id, cols))
            else:
                conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(stage_id, cols))
        t2 = time.perf_counter()
    return {"create": t_wait - t_create, "order_wait": t0 - t_wait, "copy": t1 - t0, "index": t2 - t1,
            "commit": time.perf_counter() - t2}


def _swap(conn: psycopg.Connection, schema: str, *, table: str, part: str, stage: str,
          score_date: dt.date, model_version: str, run_id: uuid.UUID, rows: int, checksum: str,
          fail: bool) -> int:
    """The one short transaction: audit, keep other versions (shadow), detach+drop old, attach new."""
    parent = sql.Identifier(schema, table)
    old = sql.Identifier(schema, part)
    stage_id = sql.Identifier(schema, stage)
    exists = part in _partitions(conn, schema, table)
    replaced = 0
    kept = 0
    if exists:
        cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        scope = sql.SQL("model_version = %s") if table == "risk_scores_shadow" else sql.SQL("true")
        scope_args: tuple[object, ...] = (model_version,) if table == "risk_scores_shadow" else ()
        if table == "risk_scores":
            replaced = conn.execute(
                sql.SQL("INSERT INTO {} ({}, replaced_by_run) SELECT {}, %s FROM {}").format(
                    sql.Identifier(schema, "risk_scores_audit"), cols, cols, old),
                (run_id,),
            ).rowcount
        else:
            replaced = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(old, scope), scope_args
            ).fetchone()[0]
            kept = conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT ({})").format(
                    stage_id, cols, cols, old, scope), scope_args,
            ).rowcount
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, old))
        conn.execute(sql.SQL("DROP TABLE {}").format(old))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        parent, stage_id, sql.Literal(score_date), sql.Literal(score_date + dt.timedelta(days=1))))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(stage_id, sql.Identifier(part)))
    faults.pause_point("writeback.in_swap")
    if fail:
        raise InjectedFailure(f"injected failure during the swap of {schema}.{part}")
    conn.execute(
        sql.SQL("UPDATE {} SET status = 'succeeded', finished_at = now(), row_count = %s,"
                " checksum = %s, details = details || %s::jsonb WHERE run_id = %s").format(
            sql.Identifier(schema, "pipeline_runs")),
        (rows, checksum, json.dumps({"table": table, "replaced_rows": replaced, "kept_rows": kept}),
         run_id),
    )
    return replaced


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
        day = _partition_day(table, name.removesuffix("_stage"))
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

                def drop(name: str = name, attached: bool = attached,
                         parent: sql.Identifier = parent) -> None:
                    if attached:
                        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                            parent, sql.Identifier(schema, name)))
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))

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
