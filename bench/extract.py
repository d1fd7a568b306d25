"""Benchmark stage `extract`: full-history extract into an empty lake.

Baseline: `pandas.read_sql` of the same query through a default SQLAlchemy engine, on a
1M-row subsample. Limit: `COPY (same query) TO STDOUT (FORMAT BINARY)` drained by psycopg.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.common import END_DATE, bench_row, dir_mb, in_child, seeded_bank
from riskmodel.settings import DEMO_SPEC, Settings

SUBSAMPLE = 1_000_000
PARAMS = {"lo": "-infinity", "hi": "infinity"}


def _spec():
    from riskmodel.spec import load_spec

    return load_spec(DEMO_SPEC)


def full_extract(settings: Settings) -> tuple[int, float]:
    """Extract the whole history into an empty lake; returns (rows written, seconds)."""
    from riskmodel.lake import extract

    report = extract(settings, _spec(), END_DATE, full=True)
    return report.rows_written, report.seconds


def _set_params(conn: Any) -> None:
    for name, value in PARAMS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (f"riskflow.p_{name}", value))


def copy_binary(settings: Settings) -> tuple[int, float]:
    """Drain COPY (extract query) TO STDOUT (FORMAT BINARY) through psycopg; returns (rows, seconds)."""
    from riskmodel.db import connect
    from riskmodel.lake import extract_query

    query = extract_query(_spec().transactions)
    with connect(settings) as conn:
        _set_params(conn)
        with conn.cursor() as cur:
            started = time.perf_counter()
            drained = 0
            with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
                for block in copy:
                    drained += len(block)
            seconds = time.perf_counter() - started
            if not drained:
                return 0, seconds
            cur.execute(sql.SQL("SELECT count(*) FROM ({}) q").format(query))
            return int(cur.fetchone()[0]), seconds


def pandas_read_sql(settings: Settings, limit: int) -> tuple[int, float]:
    """pandas.read_sql of the extract query (first `limit` rows) through a default SQLAlchemy engine."""
    import pandas as pd
    import sqlalchemy as sa

    from riskmodel.db import sqlalchemy_url
    from riskmodel.lake import extract_query

    engine = sa.create_engine(sqlalchemy_url(settings.database_url.get_secret_value()))
    query = sql.SQL("SELECT * FROM ({}) q LIMIT {}").format(extract_query(_spec().transactions),
                                                            sql.Literal(int(limit))).as_string(None)
    with engine.connect() as conn:
        for name, value in PARAMS.items():
            conn.execute(sa.text("SELECT set_config(:n, :v, false)"), {"n": f"riskflow.p_{name}", "v": value})
        started = time.perf_counter()
        frame = pd.read_sql(sa.text(query), conn)
        seconds = time.perf_counter() - started
    engine.dispose()
    return len(frame), seconds


def run(scale: str, workdir: Path) -> list[dict[str, Any]]:
    """Seed (once), then time the extract, its baseline and its limit, each in its own process."""
    settings = seeded_bank(scale, workdir)
    from riskmodel.db import connect

    shutil.rmtree(Path(settings.lake) / "transactions", ignore_errors=True)
    with connect(settings) as conn:
        conn.execute(sql.SQL("DELETE FROM {}").format(
            sql.Identifier(settings.db_schema, "extract_watermarks")))
    (limit_rows, limit_s), _, _ = in_child(copy_binary, settings)
    (rows, seconds), _, rss = in_child(full_extract, settings)
    (base_rows, base_s), _, _ = in_child(pandas_read_sql, settings, SUBSAMPLE)
    return [bench_row("extract", scale, rows=rows, seconds=seconds, peak_rss_mb=rss,
                      output_mb=dir_mb(Path(settings.lake) / "transactions"),
                      baseline=f"pandas.read_sql via SQLAlchemy, {base_rows} rows",
                      baseline_rate=base_rows / base_s, limit="psycopg COPY BINARY drain of the same query",
                      limit_rate=limit_rows / limit_s,
                      details={"limit_rows": limit_rows, "limit_seconds": round(limit_s, 3),
                               "baseline_seconds": round(base_s, 3)})]
