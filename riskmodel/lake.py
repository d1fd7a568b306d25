"""Incremental extract of source transactions into a hive-partitioned Parquet lake.

Layout: `{lake}/transactions/txn_date=YYYY-MM-DD/part-0.parquet`, `txn_date` being the local
business date (settings.tz) of `ts`; timestamps are stored in UTC, NUMERIC columns as float64.
Each run re-reads the days from `late_days` before the watermark on (late postings) and
appends new days. A partition is one file, written aside as a hidden temporary and renamed
over the old one, so readers never see half a partition. Rows are sorted by every column and
written with fixed Parquet options, so a rerun over an unchanged source gives identical bytes.
One extract at a time per lake: a Postgres advisory lock spans the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time as clock
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
from psycopg import sql

from riskmodel import quality
from riskmodel.db import advisory_lock, connect
from riskmodel.errors import ConfigError
from riskmodel.pgread import adbc_connection, param, read_arrow
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec, TransactionsSpec

log = logging.getLogger("riskflow.lake")

TABLE = "transactions"
PART_FILE = "part-0.parquet"
TXN_DATE = "txn_date"
PARQUET_OPTIONS: dict[str, object] = {"compression": "zstd", "compression_level": 1, "statistics": True,
                                      "row_group_size": 1 << 20}

BeforeRename = Callable[[date, Path], None]


@dataclass
class ExtractReport:
    """What one extract did: the dates rewritten or removed, rows kept and quarantined, the watermark."""

    run_id: uuid.UUID
    run_date: date
    source: str
    read_from: date | None
    rows_read: int
    rows_written: int
    dates_written: list[date] = field(default_factory=list)
    dates_removed: list[date] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)
    watermark: datetime | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary for the CLI and flow artifacts."""
        return {"run_id": str(self.run_id), "run_date": self.run_date, "source": self.source,
                "read_from": self.read_from, "rows_read": self.rows_read,
                "rows_written": self.rows_written, "dates_written": len(self.dates_written),
                "dates_removed": len(self.dates_removed), "quarantined": self.quarantined,
                "watermark": self.watermark, "seconds": round(self.seconds, 3)}


def lake_root(settings: Settings) -> Path:
    """The lake as a local folder (object-store URLs are not supported by this writer)."""
    if "://" in settings.lake and not settings.lake.startswith("file://"):
        raise ConfigError(f"lake_url {settings.lake!r}: only local folders are supported by the extract")
    return Path(settings.lake.removeprefix("file://"))


def partition_path(settings: Settings, day: date) -> Path:
    """The Parquet file holding local date `day`."""
    return lake_root(settings) / TABLE / f"{TXN_DATE}={day.isoformat()}" / PART_FILE


def lake_dates(settings: Settings) -> list[date]:
    """Dates that have a partition in the lake, ascending."""
    base = lake_root(settings) / TABLE
    if not base.is_dir():
        return []
    return sorted(date.fromisoformat(p.parent.name.split("=", 1)[1])
                  for p in base.glob(f"{TXN_DATE}=*/{PART_FILE}"))


def scan_transactions(settings: Settings, start: date, end: date) -> pl.LazyFrame:
    """Lazy frame of lake rows with local dates in [start, end], with a `txn_date` Date column."""
    files = [partition_path(settings, d) for d in lake_dates(settings) if start <= d <= end]
    if not files:
        raise ConfigError(f"lake {settings.lake}: no partitions between {start} and {end}; "
                          f"run `riskflow extract --date {end}` first")
    return pl.scan_parquet([str(f) for f in files], hive_partitioning=True,
                           hive_schema={TXN_DATE: pl.Date})


def extract_query(tx: TransactionsSpec) -> sql.Composed:
    """SELECT of the spec's columns (NUMERIC as float8, categories as text) from `lo` to `hi`."""
    ident = sql.Identifier
    cols = [ident(tx.id), ident(tx.account_id), ident(tx.timestamp),
            sql.SQL("{}::float8 AS {}").format(ident(tx.amount), ident(tx.amount))]
    cols += [sql.SQL("{}::float8 AS {}").format(ident(c), ident(c)) for c in tx.numeric]
    cols += [sql.SQL("{}::text AS {}").format(ident(c), ident(c)) for c in tx.categorical]
    ts = ident(tx.timestamp)
    return sql.SQL("SELECT {cols} FROM {table} WHERE {ts} IS NULL OR ({ts} >= {lo} AND {ts} < {hi})").format(
        cols=sql.SQL(", ").join(cols), table=ident(tx.db_schema, tx.table), ts=ts,
        lo=param("lo", "timestamptz"), hi=param("hi", "timestamptz"))


def read_window(settings: Settings, tx: TransactionsSpec, lo: datetime | None,
                hi: datetime | None) -> pl.DataFrame:
    """Source rows with `lo <= ts < hi` (None = unbounded) plus null-timestamp rows, UTC, with `txn_date`.

    Sorted by (txn_date, account, ts, id), and by every column where those tie, so that the
    order (and which copy of a duplicate is kept) is deterministic; each date is one slice."""
    params = {"lo": lo.isoformat() if lo else "-infinity", "hi": hi.isoformat() if hi else "infinity"}
    with adbc_connection(settings) as conn:
        frame = pl.from_arrow(read_arrow(conn, extract_query(tx), params), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    ts = pl.col(tx.timestamp).dt.convert_time_zone("UTC")
    frame = frame.with_columns(ts, ts.dt.convert_time_zone(settings.tz.key).dt.date().alias(TXN_DATE))
    keys = [TXN_DATE, tx.account_id, tx.timestamp, tx.id]
    frame = frame.sort(keys, nulls_last=True)
    ties = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]).fill_null(False)
    if frame.select(ties.any()).item():
        frame = frame.sort(keys + [c for c in frame.columns if c not in keys], nulls_last=True)
    return frame


def _watermark(conn, settings: Settings, source: str) -> tuple[datetime, date] | None:
    row = conn.execute(
        sql.SQL("SELECT watermark, last_date FROM {} WHERE lake = %s AND source = %s").format(
            sql.Identifier(settings.db_schema, "extract_watermarks")), (settings.lake, source)).fetchone()
    return (row[0], row[1]) if row else None


def _set_watermark(conn, settings: Settings, source: str, watermark: datetime, last_date: date) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (lake, source, watermark, last_date) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (lake, source) DO UPDATE SET watermark = GREATEST(EXCLUDED.watermark, {t}.watermark), "
        "last_date = GREATEST(EXCLUDED.last_date, {t}.last_date), updated_at = now()"
    ).format(sql.Identifier(settings.db_schema, "extract_watermarks"),
             t=sql.Identifier("extract_watermarks")),
        (settings.lake, source, watermark, last_date))


def write_partition(settings: Settings, day: date, rows: pl.DataFrame, run_id: uuid.UUID,
                    before_rename: BeforeRename | None = None) -> Path:
    """Write one date's rows to a hidden temporary file beside the partition, then rename it into place."""
    final = partition_path(settings, day)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{PART_FILE}.{run_id.hex}.tmp"
    rows.write_parquet(tmp, **PARQUET_OPTIONS)  # type: ignore[arg-type]
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    if before_rename is not None:
        before_rename(day, tmp)
    os.replace(tmp, final)
    return final


def _remove_partition(settings: Settings, day: date) -> None:
    path = partition_path(settings, day)
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _clean_temporaries(settings: Settings) -> None:
    base = lake_root(settings) / TABLE
    if base.is_dir():
        for stale in base.glob(f"{TXN_DATE}=*/.{PART_FILE}.*.tmp"):
            stale.unlink(missing_ok=True)


def extract(settings: Settings, spec: FeatureSpec, run_date: date, *, full: bool = False,
            before_rename: BeforeRename | None = None, lock_timeout_s: float = 600.0) -> ExtractReport:
    """Bring the lake up to local date `run_date`: quality-check, quarantine, rewrite changed days."""
    started = clock.perf_counter()
    tx, tz = spec.transactions, settings.tz
    source = tx.qualified
    run_id = uuid.uuid4()
    with connect(settings) as conn, advisory_lock(conn, f"extract:{settings.lake}", timeout_s=lock_timeout_s):
        _clean_temporaries(settings)
        mark = None if full else _watermark(conn, settings, source)
        backfill = mark is not None and run_date < mark[1]
        if mark is None:
            first_day = None
        else:
            first_day = min(mark[1] + timedelta(days=1), run_date) - timedelta(days=settings.late_days)
        lo = quality.local_midnight(first_day, tz) if first_day else None
        hi = quality.local_midnight(run_date + timedelta(days=1), tz) if backfill else None
        frame = read_window(settings, tx, lo, hi)
        checked = quality.check_batch(frame, tx, run_date, tz)
        added = quality.quarantine(conn, settings.db_schema, run_id, source, tx, checked.bad, tz)
        conn.commit()
        if checked.bad.height:
            log.warning("extract %s: quarantined %s (%d new rows in the quarantine table)", source,
                        {k: v for k, v in checked.counts.items() if v}, sum(added.values()))
        undated_known = checked.counts["null_timestamp"] - added["null_timestamp"]
        quality.enforce_threshold(checked, settings.max_bad_fraction, source, undated_known)
        good = checked.good
        report = ExtractReport(run_id, run_date, source, first_day, frame.height, good.height,
                               quarantined=checked.counts)
        del frame, checked
        bounds = good.select(pl.col(TXN_DATE).rle().struct.unnest())
        days = bounds["value"].to_list()
        start = first_day if first_day is not None else (days[0] if days else run_date)
        offset = 0
        data = good.drop(TXN_DATE)
        for day, length in zip(days, bounds["len"].to_list(), strict=True):
            write_partition(settings, day, data.slice(offset, length), run_id, before_rename)
            report.dates_written.append(day)
            offset += length
        present = set(days)
        for day in lake_dates(settings):
            if start <= day <= run_date and day not in present:
                _remove_partition(settings, day)
                report.dates_removed.append(day)
        report.dates_written.sort()
        if good.height:
            report.watermark = good[tx.timestamp].max()  # type: ignore[assignment]
        watermark = report.watermark or (mark[0] if mark else quality.local_midnight(start, tz))
        _set_watermark(conn, settings, source, watermark, run_date)
        conn.commit()
    report.seconds = clock.perf_counter() - started
    log.info("extract %s -> %s: %d rows read, %d written to %d dates in %.2fs", source, settings.lake,
             report.rows_read, report.rows_written, len(report.dates_written), report.seconds)
    return report


def reset_lake(settings: Settings) -> None:
    """Forget the lake (partitions and watermark) so the next extract reads the whole source again.

    Used after the source was replaced wholesale, e.g. a re-seeded demo bank.
    """
    with connect(settings) as conn, advisory_lock(conn, f"extract:{settings.lake}"):
        shutil.rmtree(lake_root(settings) / TABLE, ignore_errors=True)
        conn.execute(sql.SQL("DELETE FROM {} WHERE lake = %s").format(
            sql.Identifier(settings.db_schema, "extract_watermarks")), (settings.lake,))
        conn.commit()
