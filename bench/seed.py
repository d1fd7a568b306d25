"""Benchmark stage "seed": generate + load the synthetic bank, next to executemany and raw COPY.

rows = transactions generated and loaded, end to end (generation, binary COPY of all four
tables, index builds). Baseline: per-row `executemany` INSERT of the first 20k of the same
transactions; limit: raw psycopg COPY BINARY of those rows' ready-made bytes into an unindexed
table (what Postgres ingests here when the client costs nothing).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from psycopg import sql

from bench.common import END_DATE, SEED, bench_row, bench_settings, in_child, scale_of
from riskmodel.db import connect
from riskmodel.schema import init_database
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import load_spec
from riskmodel.synthetic import TXN_COLUMNS, generate_bank, load_bank, pattern_counts, transaction_slots
from riskmodel.synthetic_copy import binary_payload

SAMPLE = 20_000
TEMP = "bench_seed_txns"


def _seed(settings: Settings, accounts: int, days: int, payload_path: str) -> dict[str, Any]:
    """The measured work (in a child process): generate and load; also save the sample's COPY bytes."""
    started = time.perf_counter()
    bank = generate_bank(accounts=accounts, days=days, end_date=END_DATE, seed=SEED)
    generated = time.perf_counter() - started
    rows, _ = load_bank(settings, bank, progress=True)
    cols, slots = transaction_slots(bank)
    pathlib.Path(payload_path).write_bytes(binary_payload(cols, min(SAMPLE, len(bank.txns)), slots))
    return {"generate_s": round(generated, 3), "rows": rows, "patterns": pattern_counts(bank)}


def _sample_rate(settings: Settings, payload: bytes, rows: list[tuple], *, per_row: bool) -> float:
    """Rows per second loading the sample into a fresh unindexed temp table."""
    with connect(settings, admin=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE bank.transactions)").format(sql.Identifier(TEMP)))
        started = time.perf_counter()
        if per_row:
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(
                sql.Identifier(TEMP)), rows)
        else:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in TXN_COLUMNS)
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    sql.Identifier(TEMP), cols)) as copy:
                copy.write(payload)
        conn.commit()
        return len(rows) / (time.perf_counter() - started)


def run(scale: str, workdir: pathlib.Path) -> list[dict]:
    """Seed a bank of `scale` in its own embedded database; compare with executemany and raw COPY."""
    size = scale_of(scale)
    settings = bench_settings(scale, pathlib.Path(workdir) / "seed-stage")
    init_database(settings, load_spec(DEMO_SPEC), demo_source=True)
    payload_path = settings.home / "sample.copy"
    result, seconds, rss = in_child(_seed, settings, size.accounts, size.days, str(payload_path))
    payload = payload_path.read_bytes()
    with connect(settings, admin=True) as conn:
        sample = conn.execute(sql.SQL("SELECT {} FROM bank.transactions ORDER BY txn_id LIMIT %s").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in TXN_COLUMNS)), (SAMPLE,)).fetchall()
        size_mb = conn.execute("SELECT pg_total_relation_size('bank.transactions')").fetchone()[0] / 2**20
    baseline = _sample_rate(settings, payload, sample, per_row=True)
    limit = _sample_rate(settings, payload, sample, per_row=False)
    return [bench_row("seed", scale, rows=result["rows"]["transactions"], seconds=seconds, peak_rss_mb=rss,
                      output_mb=size_mb, baseline=f"executemany INSERT of {len(sample)} rows",
                      baseline_rate=baseline, limit=f"raw COPY BINARY of the same {len(sample)} rows",
                      limit_rate=limit, details={**result, "baseline_rows_per_s": round(baseline),
                                                 "limit_rows_per_s": round(limit)})]
