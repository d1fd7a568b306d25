"""Bench stage "write": nightly scores written to Postgres per second, on an embedded server.

Measured: `riskmodel.writeback.write_scores` for a new night (validation, checksum, binary COPY
into the staging leaves, two connections at once when the night has `RISKFLOW_WRITE_SPLIT_ROWS`
rows or more, their indexes, the swap and the pipeline_runs and scored_nights records), best of
15: 3 in each of 5 fresh processes (their peak RSS is the row's), in steady state: after a tiny
night and one full night on other dates, whose connections they reuse and whose memory the
process has grown, as in a backfill or a nightly run that extracted and scored before writing.
Each process is followed by 3 rounds of the limit below (best of 15), so that on a shared machine
both are sampled as often and at the same moments. Details add the processes' first full write,
and a write with no connection kept.
Baseline: SQLAlchemy Core `conn.execute(insert(table), rows)` with default engine settings into a
plain table of the same columns and primary key. Limit: one raw `COPY ... FROM STDIN (FORMAT
BINARY)` of the same rows, already encoded, into an empty table without indexes. Details add a
rerun (swap with audit) against delete-and-insert of the same night, and the psycopg
`write_row` COPY loop.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from bench.common import END_DATE, SEED, bench_row, in_child, scale_of
from riskmodel import pgcopy, writer_pool
from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from riskmodel.writeback import (
    COLUMNS,
    VARYING_COLUMNS,
    encode_sorted_rows,
    sort_frame,
    validate_scores,
    write_scores,
)

REPEATS = 5
STEADY_WRITES = 3
REASONS = ["Amount pattern", "Merchant / category", "Country / channel change", "Transaction timing",
           "Recent burst of activity"]
COPY_TYPES = ["date", "text", "float8", "text", "text", "text[]", "timestamptz", "uuid"]


def prepare_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """The write's validation, rows sorted by account: the baselines send the same rows in key order."""
    return validate_scores(scores).sort("account_id", multithreaded=False)


def encode_copy_block(df: pl.DataFrame, score_date: dt.date, model_version: str,
                      scored_at: dt.datetime, run_id: uuid.UUID) -> pa.Buffer:
    """Prepared rows as one binary COPY data block of all `COLUMNS` (no header or trailer): what a
    plain COPY of a night's rows sends, the raw-COPY baseline."""
    n = df.height
    table = df.to_arrow()
    return pgcopy.encode_rows([
        pgcopy.constant_field(pgcopy.date_value(score_date), n),
        pgcopy.text_field(table.column("account_id").combine_chunks()),
        pgcopy.float8_field(df["risk_score"].to_numpy()),
        pgcopy.text_field(table.column("risk_band").combine_chunks()),
        pgcopy.constant_field(pgcopy.text_value(model_version), n),
        pgcopy.text_array_field(table.column("reason_codes").combine_chunks()),
        pgcopy.constant_field(pgcopy.timestamptz_value(scored_at), n),
        pgcopy.constant_field(pgcopy.uuid_value(run_id), n),
    ])


def scores_frame(n: int, seed: int = SEED) -> pl.DataFrame:
    """`n` accounts with random scores, bands and up to three reasons for medium/high bands."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(1.2, 12.0, n)
    bands = np.where(scores >= 0.3, "high", np.where(scores >= 0.1, "medium", "low"))
    picks = rng.integers(0, len(REASONS), (n, 3))
    reasons = [[] if b == "low" else [REASONS[k] for k in dict.fromkeys(p)]
               for b, p in zip(bands, picks, strict=True)]
    return pl.DataFrame({"account_id": rng.permutation(np.arange(1_000_000, 1_000_000 + n)).astype(str),
                         "risk_score": scores, "risk_band": bands, "reason_codes": reasons})


def _server_settings(workdir: Path) -> tuple[Settings, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    base = server.get_uri()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_write WITH (FORCE)")
        conn.execute("CREATE DATABASE bench_write")
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = "bench_write"
    settings = Settings(database_url=psycopg.conninfo.make_conninfo(**info), home=workdir / "home")
    init_database(settings, load_spec(DEMO_SPEC), demo_source=True)
    return settings, server


def _plain_table(conn: psycopg.Connection, schema: str, name: str, *, primary_key: bool) -> sql.Identifier:
    ident = sql.Identifier(schema, name)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
        ident, sql.Identifier(schema, "risk_scores")))
    if primary_key:
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (account_id, score_date)").format(ident))
    conn.commit()
    return ident


def _python_rows(frame: pl.DataFrame, day: dt.date, run_id: uuid.UUID) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    return [{"score_date": day, "account_id": r["account_id"], "risk_score": r["risk_score"],
             "risk_band": r["risk_band"], "model_version": "bench", "reason_codes": r["reason_codes"],
             "scored_at": now, "run_id": run_id} for r in frame.iter_rows(named=True)]


def _baseline(settings: Settings, rows: list[dict[str, Any]]) -> float:
    """SQLAlchemy Core executemany with default engine settings; seconds."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import ARRAY, UUID

    with connect(settings) as conn:
        _plain_table(conn, settings.db_schema, "bench_baseline", primary_key=True)
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: connect(settings))
    table = sa.Table("bench_baseline", sa.MetaData(), sa.Column("score_date", sa.Date),
                     sa.Column("account_id", sa.Text), sa.Column("risk_score", sa.Float),
                     sa.Column("risk_band", sa.Text), sa.Column("model_version", sa.Text),
                     sa.Column("reason_codes", ARRAY(sa.Text)),
                     sa.Column("scored_at", sa.DateTime(timezone=True)), sa.Column("run_id", UUID),
                     schema=settings.db_schema)
    try:
        with engine.connect() as conn:
            started = time.perf_counter()
            conn.execute(sa.insert(table), rows)
            conn.commit()
            return time.perf_counter() - started
    finally:
        engine.dispose()


def _limit(settings: Settings, block: Any, *, indexed: bool = False) -> float:
    """One raw binary COPY of already-encoded rows into an empty table; seconds. With `indexed`,
    the partition's primary key is built after it (what a queryable night costs at least, on one
    connection)."""
    with connect(settings) as conn:
        ident = _plain_table(conn, settings.db_schema, "bench_limit", primary_key=False)
        started = time.perf_counter()
        copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(ident)
        with conn.cursor() as cur, cur.copy(copy_sql) as cp:
            cp.write(pgcopy.HEADER)
            cp.write(memoryview(block))
            cp.write(pgcopy.TRAILER)
        if indexed:
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (account_id, score_date)").format(ident))
        conn.commit()
        return time.perf_counter() - started


def _limit_varying(settings: Settings, block: Any, day: dt.date) -> float:
    """One raw binary COPY of the varying columns only (already encoded, as write_scores sends them)
    into an empty unindexed table whose constant columns are defaults; seconds."""
    with connect(settings) as conn:
        ident = _plain_table(conn, settings.db_schema, "bench_limit_varying", primary_key=False)
        conn.execute(sql.SQL("ALTER TABLE {} ALTER score_date SET DEFAULT {}, ALTER model_version SET DEFAULT"
                             " 'bench', ALTER scored_at SET DEFAULT {}, ALTER run_id SET DEFAULT {}").format(
                         ident, sql.Literal(day), sql.Literal(dt.datetime.now(dt.UTC)),
                         sql.Literal(uuid.uuid4())))
        conn.commit()
        started = time.perf_counter()
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, VARYING_COLUMNS)))
        with conn.cursor() as cur, cur.copy(copy_sql) as cp:
            cp.write(pgcopy.HEADER)
            cp.write(memoryview(block))
            cp.write(pgcopy.TRAILER)
        conn.commit()
        return time.perf_counter() - started


def _write_row_copy(settings: Settings, rows: list[dict[str, Any]]) -> float:
    """psycopg binary COPY with `set_types` and one `write_row` per row; seconds."""
    with connect(settings) as conn:
        ident = _plain_table(conn, settings.db_schema, "bench_write_row", primary_key=False)
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                ident, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as cp:
            cp.set_types(COPY_TYPES)
            for r in rows:
                cp.write_row(tuple(r[c] for c in COLUMNS))
        conn.commit()
        return time.perf_counter() - started


def _delete_insert(settings: Settings, frame: pl.DataFrame, day: dt.date) -> float:
    """The alternative to the swap for a rerun: COPY to a temp table, then DELETE + INSERT; seconds."""
    prepared = prepare_scores(frame)
    run_id = uuid.uuid4()
    block = encode_copy_block(prepared, day, "bench", dt.datetime.now(dt.UTC), run_id)
    with connect(settings) as conn:
        started = time.perf_counter()
        schema = settings.db_schema
        target = sql.Identifier(schema, "risk_scores")
        cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        conn.execute(sql.SQL("CREATE TEMP TABLE bench_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP")
                     .format(target))
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY bench_stage ({}) FROM STDIN (FORMAT BINARY)")
                                            .format(cols)) as cp:
            cp.write(pgcopy.HEADER)
            cp.write(memoryview(block))
            cp.write(pgcopy.TRAILER)
        conn.execute(sql.SQL("INSERT INTO {} ({}, replaced_by_run) SELECT {}, %s FROM {}"
                             " WHERE score_date = %s").format(
                         sql.Identifier(schema, "risk_scores_audit"), cols, cols, target), (run_id, day))
        conn.execute(sql.SQL("DELETE FROM {} WHERE score_date = %s").format(target), (day,))
        conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM bench_stage").format(target, cols, cols))
        conn.commit()
        return time.perf_counter() - started


def _write(settings: Settings, frame: pl.DataFrame, day: dt.date) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    report = write_scores(settings, score_date=day, scores=frame, model_version="bench",
                          model_sha256="0" * 64, run_id=uuid.uuid4(), watermark=None)
    return time.perf_counter() - started, report.seconds | {"leaves": report.leaves}


def _measured_write(url: str, home: str, n: int, day: dt.date) -> tuple[list[dict[str, float]], float, float]:
    """In a fresh process: warm up on a tiny night, then write full nights: the process's first (its
    memory not yet grown), `STEADY_WRITES` measured ones (steady state: connections kept and memory
    reused, as in a backfill or a nightly run that extracted and scored before writing), and one
    with no connection kept. Returns the measured writes' stages and the other two's seconds.
    Every night is a new date: `day` and days 60 or more before it, apart from other processes'."""
    settings = Settings(database_url=url, home=Path(home))
    frame = scores_frame(n)
    _write(settings, frame.head(50), day - dt.timedelta(days=60))
    first = _write(settings, frame, day - dt.timedelta(days=120))[0]
    steady = [_write(settings, frame, day - dt.timedelta(days=0 if k == 0 else 240 + 60 * k))[1]
              for k in range(STEADY_WRITES)]
    writer_pool.close_idle()
    return steady, first, _write(settings, frame, day - dt.timedelta(days=180))[0]


def run(scale: str, workdir: Path) -> list[dict]:
    """Write one night of scores for the scale's accounts; one row (new night), details for reruns."""
    n = scale_of(scale).accounts
    workdir.mkdir(parents=True, exist_ok=True)
    settings, server = _server_settings(workdir)
    try:
        frame = scores_frame(n)
        rows = _python_rows(frame, END_DATE, uuid.uuid4())
        prepared = prepare_scores(frame)
        block = encode_copy_block(prepared, END_DATE, "bench", dt.datetime.now(dt.UTC), uuid.uuid4())
        _write(settings, frame.head(100), END_DATE - dt.timedelta(days=30))
        url = settings.database_url.get_secret_value()
        runs, limits = [], []
        for k in range(REPEATS):
            day = END_DATE - dt.timedelta(days=k)
            runs.append(in_child(_measured_write, url, str(settings.home), n, day))
            limits.extend(_limit(settings, block) for _ in range(STEADY_WRITES))
        stages = min((s for r in runs for s in r[0][0]), key=lambda t: t["total"])
        first, fresh = min(r[0][1] for r in runs), min(r[0][2] for r in runs)
        seconds, peak_rss = stages["total"], max(r[2] for r in runs)
        reruns = [_write(settings, frame, END_DATE)[0] for _ in range(REPEATS)]
        delete_insert = [_delete_insert(settings, frame, END_DATE - dt.timedelta(days=1))
                         for _ in range(REPEATS)]
        baseline = _baseline(settings, rows)
        limit = min(limits)
        limit_indexed = min(_limit(settings, block, indexed=True) for _ in range(REPEATS))
        varying = pgcopy.rows_block(encode_sorted_rows(sort_frame(prepared)))
        limit_varying = min(_limit_varying(settings, varying, END_DATE) for _ in range(REPEATS))
        write_row = min(_write_row_copy(settings, rows) for _ in range(REPEATS))
    finally:
        server.cleanup()
    details = {
        "stage_seconds": {k: round(v, 4) for k, v in stages.items()},
        "first_write_of_process_s": round(first, 4),
        "ratio_first_write": round(limit / first, 3),
        "fresh_connections_s": round(fresh, 4),
        "ratio_fresh_connections": round(limit / fresh, 3),
        "rerun_swap_with_audit_s": round(min(reruns), 4),
        "rerun_delete_insert_with_audit_s": round(min(delete_insert), 4),
        "baseline_sqlalchemy_s": round(baseline, 4),
        "limit_copy_prebuilt_s": round(limit, 4),
        "limit_copy_prebuilt_plus_key_s": round(limit_indexed, 4),
        "ratio_vs_copy_plus_key": round(limit_indexed / seconds, 3),
        "limit_copy_varying_columns_s": round(limit_varying, 4),
        "ratio_vs_copy_varying_columns": round(limit_varying / seconds, 3),
        "copy_write_row_s": round(write_row, 4),
        "copy_write_row_rows_per_s": round(n / write_row, 1),
    }
    return [bench_row(
        "write", scale, rows=n, seconds=seconds, peak_rss_mb=peak_rss, output_mb=block.size / 2**20,
        baseline="SQLAlchemy Core conn.execute(insert(t), rows), default engine, plain table with PK",
        baseline_rate=n / baseline,
        limit="one raw COPY FROM STDIN (FORMAT BINARY) of pre-encoded rows into an empty unindexed table",
        limit_rate=n / limit, details=details)]
