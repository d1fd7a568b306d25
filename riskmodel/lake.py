"""Incremental extract of source transactions into a hive-partitioned Parquet lake, local or object store.

Layout: `{lake}/transactions/txn_date=YYYY-MM-DD/part-0.parquet`, `txn_date` being the local
business date (settings.tz) of `ts`; timestamps are stored in UTC, NUMERIC columns as float64.
The lake is a folder or any fsspec URL (`s3://bucket/prefix` through s3fs; see riskmodel.storage).
Each run re-reads the days from `late_days` before the watermark on (late postings) and
appends new days. Rows are sorted by every column and written with fixed Parquet options, so a
rerun over an unchanged source gives identical bytes. One extract at a time per lake: a Postgres
advisory lock spans the run.

Streaming, in bounded memory: the window is read as COPY BINARY streams (ADBC record batches),
one per range of RANGE_DAYS local dates when the source's timestamp is indexed, all in one
snapshot (riskmodel.source_stream), in a background thread that keeps the COPY flowing. Rows
are regrouped by date through a KeySpill (memory up to a budget, Arrow IPC spill files beyond
it); when a range ends its dates are complete, so they are sorted, quality-checked (duplicate
ids across groups through SeenIds) and written as staged Parquet files while the next range
streams. Peak memory is about one range plus the prefetched chunks (without a timestamp index:
the spill budget). Only when the whole batch passed the bad-row threshold are the staged
partitions committed, so a failed run changes no partition.

Every local date from the lake's first to the last extracted one has a partition: a date the
source holds no rows for gets an empty one, so a missing partition always means a lost one.
The database records the lake's first and last extracted dates (`extract_watermarks`), so an
extract that finds dates missing between them (a partial restore, a deleted folder, an expired
object, the oldest partitions included) warns and reads the source again from the earliest.

Commit, per partition, never exposing half of one:
- local folder: staged under `transactions/_staging/<run>/` in the lake itself, fsynced, then
  renamed over `part-0.parquet` (atomic on one filesystem);
- object store: staged in a local scratch folder, then uploaded with one PUT to the committed
  key `part-0.parquet` (S3 replaces an object atomically: readers see the old or the new
  object whole; s3fs uses a single PUT below 2 x its 50 MB block size, multipart above,
  which is equally atomic at completion). Nothing but committed keys is ever written to the store.
A crash before a partition's commit leaves its old version readable; a staging folder left by a
crash is removed by the next run. Readers list only `txn_date=*/part-0.parquet`. On an object
store they read through a pyarrow dataset over the fsspec filesystem (any fsspec URL works the
same way); s3fs sends each ranged GET with `If-Match: <ETag>`, so a reader racing a replacement
fails loudly (and can retry) instead of mixing two versions of a partition.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time as clock
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from psycopg import sql

from riskmodel import quality
from riskmodel.clock import not_after_today
from riskmodel.db import advisory_lock, connect
from riskmodel.errors import ConfigError, DataQualityError
from riskmodel.seen_ids import SeenIds
from riskmodel.settings import Settings
from riskmodel.source_stream import extract_query as extract_query
from riskmodel.source_stream import plan_ranges, prefetch, stream_ranges
from riskmodel.spec import FeatureSpec, TransactionsSpec
from riskmodel.spill import KeySpill
from riskmodel.storage import LakeStore, check_store_writable, lake_key, lake_store, redact_lake

log = logging.getLogger("riskflow.lake")

TABLE = "transactions"
PART_FILE = "part-0.parquet"
TXN_DATE = "txn_date"
STAGING = "_staging"
PARQUET_OPTIONS: dict[str, object] = {"compression": "zstd", "compression_level": 1, "statistics": True,
                                      "row_group_size": 1 << 20}
SPILL_BUDGET_BYTES = 256 << 20
GROUP_ROWS = 500_000
RANGE_DAYS = 7
PREFETCH_CHUNKS = 4

BeforeRename = Callable[[date, Path], None]


@dataclass
class ExtractReport:
    """What one extract did: the dates rewritten, those left without rows, rows kept and quarantined,
    the watermark, and the dates found missing (lost) and read again."""

    run_id: uuid.UUID
    run_date: date
    source: str
    read_from: date | None
    rows_read: int
    rows_written: int
    dates_written: list[date] = field(default_factory=list)
    dates_empty: list[date] = field(default_factory=list)
    dates_missing: list[date] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)
    watermark: datetime | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary for the CLI and flow artifacts."""
        return {"run_id": str(self.run_id), "run_date": self.run_date, "source": self.source,
                "read_from": self.read_from, "rows_read": self.rows_read,
                "rows_written": self.rows_written, "dates_written": len(self.dates_written),
                "dates_empty": len(self.dates_empty), "dates_missing": len(self.dates_missing),
                "quarantined": self.quarantined,
                "watermark": self.watermark, "seconds": round(self.seconds, 3)}


@dataclass
class _Staged:
    """The checked batch, its partitions staged but not yet committed."""

    files: dict[date, Path] = field(default_factory=dict)
    bad: list[pl.DataFrame] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(quality.RULES, 0))
    good_rows: int = 0
    watermark: datetime | None = None
    empty: pl.DataFrame | None = None


def lake_root(settings: Settings) -> Path:
    """The lake as a local folder; ConfigError for an object-store lake (use `riskmodel.storage`)."""
    store = lake_store(settings)
    if not store.local:
        raise ConfigError(f"lake_url {store.url}: not a local folder")
    return Path(store.root)


def _partition_key(store: LakeStore, day: date) -> str:
    return store.path(TABLE, f"{TXN_DATE}={day.isoformat()}", PART_FILE)


def partition_path(settings: Settings, day: date) -> Path:
    """The Parquet file holding local date `day` in a local lake."""
    return lake_root(settings) / TABLE / f"{TXN_DATE}={day.isoformat()}" / PART_FILE


def partition_url(settings: Settings, day: date) -> str:
    """Where local date `day` lives in any lake: a path, or a URL with the store's protocol."""
    store = lake_store(settings)
    key = _partition_key(store, day)
    return key if store.local else store.fs.unstrip_protocol(key)


def check_writable(settings: Settings) -> None:
    """Fail early, with a ConfigError naming the (redacted) lake URL, when the lake cannot be written."""
    check_store_writable(settings, lake_store(settings))


def _dates(store: LakeStore) -> list[date]:
    if store.local:
        base = Path(store.root) / TABLE
        found = [str(p) for p in base.glob(f"{TXN_DATE}=*/{PART_FILE}")] if base.is_dir() else []
    else:
        store.fs.invalidate_cache(store.path(TABLE))
        found = store.fs.glob(store.path(TABLE, f"{TXN_DATE}=*", PART_FILE))
    return sorted(date.fromisoformat(f.rsplit("/", 2)[-2].split("=", 1)[1]) for f in found)


def lake_dates(settings: Settings) -> list[date]:
    """Dates that have a partition in the lake, ascending."""
    return _dates(lake_store(settings))


def scan_transactions(settings: Settings, start: date, end: date) -> pl.LazyFrame:
    """Lazy frame of lake rows with local dates in [start, end], with a `txn_date` Date column last.
    ConfigError when the lake ends before `end` (not extracted yet) or a date between the window's
    first and last partitions has none (lost).

    Partitions come in date order, each in its stored (account, ts) order. A local lake is read by
    Polars directly; an object store through a pyarrow dataset over the fsspec filesystem, so any
    fsspec URL with its storage options works the same way."""
    store = lake_store(settings)
    dates = [d for d in _dates(store) if start <= d <= end]
    if not dates:
        raise ConfigError(f"lake {store.url}: no partitions between {start} and {end}; "
                          f"run `riskflow extract --date {end}` first (`--full` re-reads all history)")
    if dates[-1] < end:
        raise ConfigError(f"lake {store.url}: the last partition is {dates[-1]}, before {end}; "
                          f"run `riskflow extract --date {end}` first")
    lost = missing_dates(dates, dates[-1])
    if lost:
        raise ConfigError(f"lake {store.url}: no partition for {len(lost)} dates between {dates[0]} and "
                          f"{dates[-1]} ({_listed(lost)}); "
                          f"run `riskflow extract --date {end}`, which reads missing dates again")
    files = [_partition_key(store, d) for d in dates]
    if store.local:
        return pl.scan_parquet(files, hive_partitioning=True, hive_schema={TXN_DATE: pl.Date})
    partitioning = ds.partitioning(pa.schema([(TXN_DATE, pa.date32())]), flavor="hive")
    dataset = ds.dataset(files, filesystem=store.fs, format="parquet", partitioning=partitioning,
                         partition_base_dir=store.path(TABLE))
    return pl.scan_pyarrow_dataset(dataset)


def sort_day(rows: pl.DataFrame, tx: TransactionsSpec) -> pl.DataFrame:
    """One date's rows in (account, ts, id) order, and by every column where those tie (deterministic).

    Null keys sort last. Sorting date by date is cheaper than one sort of many dates by date first,
    and without nulls in the keys Polars' plain multi-key sort (same order) is about 3x faster."""
    keys = [tx.account_id, tx.timestamp, tx.id]
    rows = rows.sort(keys, nulls_last=any(rows[k].null_count() for k in keys))
    ties = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]).fill_null(False)
    if rows.select(ties.any()).item():
        rows = rows.sort(keys + [c for c in rows.columns if c not in keys], nulls_last=True)
    return rows


def _date_groups(spill: KeySpill, tx: TransactionsSpec, min_rows: int, *,
                 final: bool) -> Iterator[pl.DataFrame]:
    """Dates from the spill, ascending, each sorted, a few at a time (>= min_rows rows).

    The null date (null timestamps) waits for the `final` call, so it always comes last."""
    held: list[pl.DataFrame] = []
    rows = 0
    for day in spill.keys():
        if day is None and not final:
            continue
        held.append(sort_day(spill.take(day), tx))
        rows += held[-1].height
        if rows >= min_rows:
            yield pl.concat(held)
            held, rows = [], 0
    if held:
        yield pl.concat(held)


@dataclass(frozen=True)
class _Mark:
    """The lake's row in extract_watermarks: source watermark, last and first extracted local dates
    (`first` is None for rows written before riskflow recorded it)."""

    watermark: datetime
    last_date: date
    first_date: date | None


def _first_date_recorded(conn, settings: Settings) -> bool:
    """Whether extract_watermarks has its first_date column (databases from before it lack it until
    `riskflow db init` runs again; the extract then works as before, without head-loss detection)."""
    return bool(conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'extract_watermarks' AND column_name = 'first_date')",
        (settings.db_schema,)).fetchone()[0])


def _watermark(conn, settings: Settings, source: str, recorded: bool) -> _Mark | None:
    first = sql.SQL("first_date") if recorded else sql.SQL("NULL::date")
    table = sql.Identifier(settings.db_schema, "extract_watermarks")
    query = sql.SQL("SELECT watermark, last_date, {} FROM {} WHERE lake = %s AND source = %s")
    row = conn.execute(query.format(first, table), (lake_key(settings), source)).fetchone()
    return _Mark(*row) if row else None


def lake_watermark(settings: Settings, spec: FeatureSpec) -> datetime | None:
    """The source watermark the lake holds now (None before the first extract): what a run that
    scores from the lake without extracting first read."""
    with connect(settings) as conn:
        mark = _watermark(conn, settings, spec.transactions.qualified, _first_date_recorded(conn, settings))
    return mark.watermark if mark else None


def _set_watermark(conn, settings: Settings, source: str, mark: _Mark, rebuilt: bool,
                   recorded: bool) -> None:
    """Record the run's watermark and last date (never moving back); the first date is kept unless
    this run rebuilt the lake from all history (or none was recorded yet). Without the first_date
    column (`recorded` false) only the watermark and last date are written."""
    t = sql.Identifier("extract_watermarks")
    first = sql.SQL(", first_date = CASE WHEN %(rebuilt)s THEN EXCLUDED.first_date "
                    "ELSE COALESCE({t}.first_date, EXCLUDED.first_date) END").format(t=t)
    conn.execute(sql.SQL(
        "INSERT INTO {table} (lake, source, watermark, last_date{column}) "
        "VALUES (%(lake)s, %(source)s, %(watermark)s, %(last)s{value}) "
        "ON CONFLICT (lake, source) DO UPDATE SET watermark = GREATEST(EXCLUDED.watermark, {t}.watermark), "
        "last_date = GREATEST(EXCLUDED.last_date, {t}.last_date){first}, updated_at = now()"
    ).format(table=sql.Identifier(settings.db_schema, "extract_watermarks"), t=t,
             column=sql.SQL(", first_date" if recorded else ""),
             value=sql.SQL(", %(first)s" if recorded else ""), first=first if recorded else sql.SQL("")),
        {"lake": lake_key(settings), "source": source, "watermark": mark.watermark, "last": mark.last_date,
         "first": mark.first_date, "rebuilt": rebuilt})


def _staging_dir(store: LakeStore, scratch: Path, run_id: uuid.UUID) -> Path:
    if store.local:
        return Path(store.root) / TABLE / STAGING / run_id.hex
    return scratch / "stage"


def _stage(rows: pl.DataFrame, folder: Path, day: date, fsync: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{TXN_DATE}={day.isoformat()}.parquet.tmp"
    rows.rechunk().write_parquet(path, **PARQUET_OPTIONS)  # type: ignore[arg-type]
    if fsync:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    return path


class _Stager:
    """Sorts, quality-checks and stages dates group by group, remembering ids across groups.

    A good row whose id was met in an earlier group (good or bad) is a duplicate: check_batch
    finds repeats inside a group, SeenIds across them, so the batch keeps the rule's
    first-occurrence semantics whatever the grouping."""

    def __init__(self, tx: TransactionsSpec, future: datetime, folder: Path, fsync: bool) -> None:
        self.tx, self.future, self.folder, self.fsync = tx, future, folder, fsync
        self.staged = _Staged()
        self.seen = SeenIds()

    def stage(self, groups: Iterator[pl.DataFrame]) -> None:
        """Check and stage each group of whole dates."""
        for group in groups:
            self._stage_group(group)

    def _stage_group(self, group: pl.DataFrame) -> None:
        tx, staged = self.tx, self.staged
        checked = quality.check_batch(group, tx, self.future)
        good, bad = checked.good, checked.bad
        before = self.seen.update(group[tx.id])
        if before.any():
            earlier = group[tx.id].filter(before)
            repeat = good[tx.id].is_in(earlier.implode()).fill_null(False)
            reason = pl.lit(f"{tx.id} seen earlier in this batch").alias("reason")
            again = good.filter(repeat).with_columns(pl.lit("duplicate_txn_id").alias("rule"), reason)
            bad, good = pl.concat([bad, again]), good.filter(~repeat)
        for rule, n in bad.group_by("rule").len().iter_rows():
            staged.counts[rule] += int(n)
        if bad.height:
            staged.bad.append(bad)
        if good.is_empty():
            return
        staged.good_rows += good.height
        latest = good[tx.timestamp].max()
        staged.watermark = latest if staged.watermark is None else max(staged.watermark, latest)
        bounds = good.select(pl.col(TXN_DATE).rle().struct.unnest())
        data, offset = good.drop(TXN_DATE), 0
        if staged.empty is None:
            staged.empty = data.clear()
        for day, length in zip(bounds["value"].to_list(), bounds["len"].to_list(), strict=True):
            staged.files[day] = _stage(data.slice(offset, length), self.folder, day, self.fsync)
            offset += length


def missing_dates(present: list[date], last: date, first: date | None = None) -> list[date]:
    """Dates from `first` (default: the first of `present`, ascending) to `last` without a partition."""
    if not present:
        return []
    have = set(present)
    start = present[0] if first is None else min(first, present[0])
    return [d for d in _days(start, last) if d not in have]


def _listed(days: list[date], shown: int = 5) -> str:
    return ", ".join(d.isoformat() for d in days[:shown]) + (" ..." if len(days) > shown else "")


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def _empty_partition(store: LakeStore, staged: _Staged, present: list[date]) -> pl.DataFrame | None:
    """A zero-row frame with the lake's columns: from this run's rows, else a partition already there."""
    if staged.empty is not None or not present:
        return staged.empty
    key = _partition_key(store, present[-1])
    schema = pq.read_schema(key, filesystem=None if store.local else store.fs)
    frame = pl.from_arrow(schema.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _commit(store: LakeStore, day: date, staged: Path) -> None:
    """Move a staged (already fsynced) partition into place; on a local lake the rename is made
    durable too, before the database's watermark moves past the day."""
    key = _partition_key(store, day)
    if store.local:
        folder = Path(key).parent
        new = not folder.is_dir()
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(staged, key)
        _fsync_dir(folder)
        if new:
            _fsync_dir(folder.parent)
        return
    store.fs.put_file(str(staged), key)
    staged.unlink()


def _fsync_dir(folder: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clean_staging(store: LakeStore) -> None:
    if not store.local:
        return
    base = Path(store.root) / TABLE
    shutil.rmtree(base / STAGING, ignore_errors=True)
    if base.is_dir():
        for stale in base.glob(f"{TXN_DATE}=*/.{PART_FILE}.*.tmp"):
            stale.unlink(missing_ok=True)


def _store_error(settings: Settings, store: LakeStore, exc: Exception) -> ConfigError:
    return ConfigError(f"lake {store.url}: writing failed: {type(exc).__name__}: "
                       f"{redact_lake(settings, str(exc))[:300]}")


def extract(settings: Settings, spec: FeatureSpec, run_date: date, *, full: bool = False,
            before_rename: BeforeRename | None = None, lock_timeout_s: float = 600.0) -> ExtractReport:
    """Bring the lake up to local date `run_date`: quality-check, quarantine, rewrite changed days.
    Source rows stamped on later dates are left for later runs (a rerun in the day sees the same
    window), except rows stamped in the future, which are read and quarantined. A lake found empty
    while the database keeps a watermark is rebuilt from all history up to the later of `run_date`
    and the watermark's date (the report's `run_date` says which).

    `before_rename(day, staged_file)` runs just before each partition is committed (tests use it
    to simulate a crash there)."""
    not_after_today("run_date", run_date, settings.tz)
    started = clock.perf_counter()
    store = lake_store(settings)
    check_store_writable(settings, store)
    tx, tz = spec.transactions, settings.tz
    source = tx.qualified
    run_id = uuid.uuid4()
    with (connect(settings) as conn,
          advisory_lock(conn, f"extract:{lake_key(settings)}", timeout_s=lock_timeout_s),
          tempfile.TemporaryDirectory(prefix="riskflow-extract-") as scratch_dir):
        scratch = Path(scratch_dir)
        _clean_staging(store)
        recorded = _first_date_recorded(conn, settings)
        if not recorded:
            log.warning("extract %s: %s.extract_watermarks has no first_date column (a database from an "
                        "older riskflow): lost oldest partitions go unnoticed until `riskflow db init` "
                        "adds it", source, settings.db_schema)
        mark = None if full else _watermark(conn, settings, source, recorded)
        present = _dates(store)
        lost = missing_dates(present, mark.last_date, mark.first_date) if mark is not None else []
        if mark is not None and not present:
            run_date = max(run_date, mark.last_date)
            log.warning("extract %s -> %s: the lake holds no partition but the database has a watermark "
                        "(%s; lake emptied or moved, or a source with no rows): extracting all history "
                        "to %s again", source, store.url, mark.watermark, run_date)
            mark = None
        elif lost:
            run_date = max(run_date, mark.last_date)
            log.warning("extract %s -> %s: %d dates between the lake's first date (%s) and %s have no "
                        "partition (lost, or days without rows from before riskflow wrote empty ones): "
                        "%s; reading the source again from %s to %s", source, store.url, len(lost),
                        mark.first_date or present[0], mark.last_date, _listed(lost), lost[0], run_date)
        if mark is None:
            first_day = None
        else:
            first_day = min(mark.last_date + timedelta(days=1), run_date) - timedelta(days=settings.late_days)
            first_day = min([first_day, *lost[:1]])
        lo = quality.local_midnight(first_day, tz) if first_day else None
        hi = quality.local_midnight(run_date + timedelta(days=1), tz)
        future = quality.future_cutoff()
        spill = KeySpill(scratch / "spill", TXN_DATE, SPILL_BUDGET_BYTES)
        stager = _Stager(tx, future, _staging_dir(store, scratch, run_id), fsync=store.local)
        ranges = plan_ranges(conn, settings, tx, lo, hi, RANGE_DAYS, max(hi, future))
        conn.commit()
        for chunk in prefetch(stream_ranges(settings, tx, ranges), PREFETCH_CHUNKS):
            if chunk is None:
                stager.stage(_date_groups(spill, tx, GROUP_ROWS, final=False))
            else:
                spill.add(chunk)
        stager.stage(_date_groups(spill, tx, GROUP_ROWS, final=True))
        staged, folder = stager.staged, stager.folder
        bad = pl.concat(staged.bad) if staged.bad else pl.DataFrame()
        added = quality.quarantine(conn, settings.db_schema, run_id, source, tx, bad, tz)
        conn.commit()
        if bad.height:
            log.warning("extract %s: quarantined %s (%d new rows in the quarantine table)", source,
                        {k: v for k, v in staged.counts.items() if v}, sum(added.values()))
        undated_known = staged.counts["null_timestamp"] - added["null_timestamp"]
        try:
            quality.enforce_threshold(quality.QualityResult(pl.DataFrame(), bad, staged.counts, spill.rows),
                                      settings.max_bad_fraction, source, undated_known)
        except DataQualityError:
            _clean_staging(store)
            raise
        report = ExtractReport(run_id, run_date, source, first_day, spill.rows, staged.good_rows,
                               quarantined=staged.counts, dates_missing=lost)
        days = sorted(staged.files)
        start = first_day if first_day is not None else (days[0] if days else run_date)
        empty = _empty_partition(store, staged, present)
        if empty is not None:
            for day in _days(start, run_date):
                if day not in staged.files:
                    staged.files[day] = _stage(empty, folder, day, store.local)
                    report.dates_empty.append(day)
        try:
            for day in sorted(staged.files):
                if before_rename is not None:
                    before_rename(day, staged.files[day])
                _commit(store, day, staged.files[day])
                if day not in report.dates_empty:
                    report.dates_written.append(day)
        except OSError as exc:
            raise _store_error(settings, store, exc) from None
        if store.local:
            shutil.rmtree(folder, ignore_errors=True)
        report.watermark = staged.watermark
        watermark = report.watermark or (mark.watermark if mark else quality.local_midnight(start, tz))
        lake_first = min([start, *present[:1]]) if mark is not None else start
        _set_watermark(conn, settings, source, _Mark(watermark, run_date, lake_first), rebuilt=mark is None,
                       recorded=recorded)
        conn.commit()
    report.seconds = clock.perf_counter() - started
    log.info("extract %s -> %s: %d rows read, %d written to %d dates in %.2fs", source, store.url,
             report.rows_read, report.rows_written, len(report.dates_written), report.seconds)
    return report


def reset_lake(settings: Settings) -> None:
    """Forget the lake (partitions and watermark) so the next extract reads the whole source again.

    Used after the source was replaced wholesale, e.g. a re-seeded demo bank.
    """
    store = lake_store(settings)
    with connect(settings) as conn, advisory_lock(conn, f"extract:{lake_key(settings)}"):
        base = store.path(TABLE)
        if store.local:
            shutil.rmtree(base, ignore_errors=True)
        elif store.fs.exists(base):
            store.fs.rm(base, recursive=True)
        conn.execute(sql.SQL("DELETE FROM {} WHERE lake = %s").format(
            sql.Identifier(settings.db_schema, "extract_watermarks")), (lake_key(settings),))
        conn.commit()
