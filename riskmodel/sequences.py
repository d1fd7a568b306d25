"""The sequence builder: one code path from lake rows to `SequenceBatch` shards, for scoring and training.

For a cutoff date D (local, settings.tz) the builder takes events with ts < D+1 (local
midnight), keeps accounts with an event in the last `lookback_days`, and puts each account's
last `max_seq_len` events, oldest first, into left-aligned padded arrays. Everything is Polars
expressions and NumPy scatter; nothing loops over accounts or rows. Events older than
`history_days(spec)` before D+1 are not read (that bounds both sequences and aggregates).
Output is sharded by a stable hash of the account id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from riskmodel import aggregates as ag
from riskmodel.batch import TIME_FEATURES, SequenceBatch
from riskmodel.features import PAD_ID, FeatureState, encode, normalise
from riskmodel.quality import local_midnight
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

log = logging.getLogger("riskflow.sequences")

ACC = "_acc"
SHARD = "_shard"
HOUR, DOW = "_hour", "_dow"
HOME = "_home"
TIME_SCALE = float(np.log1p(24.0 * 366))
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def history_days(spec: FeatureSpec) -> int:
    """Days of events before D+1 the builder reads: the lookback, and the aggregates' 180 days."""
    return max(ag.HISTORY_DAYS, spec.lookback_days)


def stable_hash(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of account ids that is the same in every process and version (splitmix64 / FNV-1a)."""
    with np.errstate(over="ignore"):
        if ids.dtype.kind in "iu":
            x = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return x ^ (x >> np.uint64(31))
        raw = np.char.encode(ids.astype(str), "utf-8")
        width = max(raw.dtype.itemsize, 1)
        mat = np.frombuffer(raw.tobytes(), np.uint8).reshape(len(raw), width) if len(raw) else \
            np.zeros((0, width), np.uint8)
        lengths = np.char.str_len(raw) if len(raw) else np.zeros(0, np.int64)
        h = np.full(len(raw), 0xCBF29CE484222325, np.uint64)
        for j in range(width):
            mixed = (h ^ mat[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
            h = np.where(lengths > j, mixed, h)
        return h & _M64


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard number (int32) of each account id."""
    return (stable_hash(ids) % np.uint64(n_shards)).astype(np.int32)


@dataclass
class Prepared:
    """Events encoded for one FeatureState (with their shard), plus static features.

    `shard_rows(k)` sorts one shard at a time, so scoring holds one sorted shard in memory;
    with `keep_sorted` (many cutoffs over the same events) sorted shards are kept for reuse."""

    frame: pl.DataFrame
    static: pl.DataFrame
    n_shards: int
    names: dict[str, list[str]]
    roles: dict[str, int]
    keep_sorted: bool = False
    _sorted: dict[int, pl.DataFrame] = field(default_factory=dict, repr=False)
    _order: pl.Series | None = field(default=None, repr=False)
    _bounds: np.ndarray | None = field(default=None, repr=False)

    def shard_rows(self, k: int) -> pl.DataFrame:
        """Rows of shard `k` sorted by (account, time, txn id).

        One stable arg-sort by (shard, account) of the time-ordered rows, then one gather per shard."""
        if k in self._sorted:
            return self._sorted[k]
        if self._order is None:
            self._order = _shard_order(self.frame)
            shards = self.frame[SHARD].gather(self._order).to_numpy()
            self._bounds = np.searchsorted(shards, np.arange(self.n_shards + 1), side="left")
        assert self._bounds is not None
        lo, hi = int(self._bounds[k]), int(self._bounds[k + 1])
        rows = self.frame[self._order.slice(lo, hi - lo)]
        if self.keep_sorted:
            self._sorted[k] = rows
        return rows


def _shard_order(frame: pl.DataFrame) -> pl.Series:
    """Stable arg-sort by (shard, account) through one Int64 key (a multi-key stable sort is far slower)."""
    acc = frame[ACC]
    if acc.dtype.is_integer() and len(acc) and int(acc.max()) - int(acc.min()) < 2**40:
        code = acc.cast(pl.Int64) - int(acc.min())
    else:
        code = acc.rank("dense").cast(pl.Int64)
    span = int(code.max() or 0) + 1
    key = frame[SHARD].cast(pl.Int64) * span + code
    return pl.DataFrame({"key": key}).select(pl.arg_sort_by("key", maintain_order=True)).to_series()


def _static_table(spec: FeatureSpec, state: FeatureState, accounts: pl.DataFrame | None) -> pl.DataFrame:
    if accounts is None or spec.accounts is None:
        return pl.DataFrame({ACC: []})
    exprs = [pl.col("account_id").alias(ACC)]
    exprs += [normalise(pl.col(c), state.static_stats[c]).alias(f"_s{i}")
              for i, c in enumerate(state.static_num)]
    exprs += [encode(pl.col(c), state.static_vocab[c], missing=PAD_ID).alias(f"_t{i}")
              for i, c in enumerate(state.static_cat)]
    country = spec.transactions.country
    if spec.accounts.home_country and country:
        exprs.append(encode(pl.col(spec.accounts.home_country), state.vocab[country], missing=PAD_ID)
                     .alias(HOME))
    return accounts.select(exprs)


def prepare(events: pl.LazyFrame | pl.DataFrame, spec: FeatureSpec, state: FeatureState, tz: ZoneInfo,
            n_shards: int, accounts: pl.DataFrame | None = None, *, keep_sorted: bool = False,
            time_ordered: bool = False) -> Prepared:
    """Encode lake rows (categories to ids, numbers normalised, local hour/day, flags) with their shard.

    `time_ordered` promises every account's rows already come in (ts, txn id) order (lake
    partitions do: read in date order, each sorted by account, ts, id); otherwise rows are sorted."""
    state.check_spec(spec)
    tx = spec.transactions
    lazy = events.lazy()
    local = pl.col(tx.timestamp).dt.convert_time_zone(tz.key)
    amount = pl.col(tx.amount).cast(pl.Float64)
    exprs: list[pl.Expr] = [
        pl.col(tx.account_id).alias(ACC),
        pl.col(tx.timestamp).dt.convert_time_zone("UTC").dt.epoch("us").alias(ag.TS),
        pl.col(tx.id).alias("_id"),
        (local.dt.hour().cast(pl.Float32) / 23.0).alias(HOUR),
        ((local.dt.weekday().cast(pl.Float32) - 1.0) / 6.0).alias(DOW),
        amount.alias(ag.AMOUNT),
        (amount <= tx.tiny_amount).alias(ag.TINY),
    ]
    exprs += [normalise(pl.col(c), state.stats[c]).alias(f"_n{i}") for i, c in enumerate(state.event_num)]
    exprs += [encode(pl.col(c), state.vocab[c], missing=1).alias(f"_c{i}")
              for i, c in enumerate(state.event_cat)]
    if tx.channel:
        exprs += [pl.col(tx.channel).is_in(tx.online_values).fill_null(False).alias(ag.ONLINE),
                  pl.col(tx.channel).is_in(tx.atm_values).fill_null(False).alias(ag.ATM)]
    roles = {name: state.event_cat.index(col) for col, name in
             ((tx.category, ag.CATEGORY), (tx.merchant, ag.MERCHANT), (tx.country, ag.COUNTRY)) if col}
    static = _static_table(spec, state, accounts)
    frame = lazy.select(exprs).collect(engine="streaming").rechunk()
    if not time_ordered:
        frame = frame.sort([ag.TS, "_id"])
    frame = frame.drop("_id")
    ids = frame[ACC].to_numpy()
    frame = frame.with_columns(pl.Series(SHARD, shard_of(ids, n_shards)))
    names = {"num": list(state.event_num), "cat": list(state.event_cat), "time": list(TIME_FEATURES),
             "static_num": list(state.static_num), "static_cat": list(state.static_cat)}
    return Prepared(frame, static, n_shards, names, roles, keep_sorted)


def cutoff_bounds(spec: FeatureSpec, cutoff: date, tz: ZoneInfo) -> tuple[int, int, int]:
    """(history start, activity start, end) of cutoff D in UTC microseconds; end is local midnight D+1."""
    end = local_midnight(cutoff + timedelta(days=1), tz)
    to_us = 1_000_000
    start = local_midnight(cutoff + timedelta(days=1 - history_days(spec)), tz)
    active = local_midnight(cutoff + timedelta(days=1 - spec.lookback_days), tz)
    return (int(start.timestamp()) * to_us, int(active.timestamp()) * to_us, int(end.timestamp()) * to_us)


def _static_arrays(prep: Prepared,
                   account_ids: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Static numeric and categorical arrays of these accounts, and their home-country ids (or None)."""
    n, n_num, n_cat = len(account_ids), len(prep.names["static_num"]), len(prep.names["static_cat"])
    if prep.static.is_empty():
        home = np.zeros(n, np.int32) if HOME in prep.static.columns else None
        return np.zeros((n, n_num), np.float32), np.zeros((n, n_cat), np.int32), home
    joined = pl.DataFrame({ACC: account_ids}).join(prep.static, on=ACC, how="left", maintain_order="left")
    nums = joined.select([pl.col(f"_s{i}").fill_null(0.0) for i in range(n_num)]).to_numpy()
    cats = joined.select([pl.col(f"_t{i}").fill_null(PAD_ID) for i in range(n_cat)]).to_numpy()
    home = joined[HOME].fill_null(PAD_ID).to_numpy() if HOME in joined.columns else None
    return nums.astype(np.float32).reshape(n, n_num), cats.astype(np.int32).reshape(n, n_cat), home


def build_shard(prep: Prepared, rows: pl.DataFrame, spec: FeatureSpec, cutoff: date, active_us: int,
                end_us: int) -> SequenceBatch:
    """Padded arrays for one shard's rows of one cutoff window (rows sorted by account, time)."""
    rows = rows.with_columns(pl.col(ACC).rle_id().cast(pl.Int64).alias(ag.ACC))
    idx = rows[ag.ACC].to_numpy()
    ts = rows[ag.TS].to_numpy()
    n_all = int(idx[-1]) + 1 if idx.size else 0
    last = np.zeros(n_all, np.int64)
    if idx.size:
        ends = np.flatnonzero(np.r_[idx[1:] != idx[:-1], True])
        last[idx[ends]] = ts[ends]
    active = last >= active_us
    if not active.all():
        rows = rows.filter(pl.Series(active[idx]))
        rows = rows.with_columns(pl.col(ACC).rle_id().cast(pl.Int64).alias(ag.ACC))
        idx = rows[ag.ACC].to_numpy()
        ts = rows[ag.TS].to_numpy()
    n = int(idx[-1]) + 1 if idx.size else 0
    seq_len = spec.max_seq_len
    counts = np.bincount(idx, minlength=n)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(idx.size) - starts[idx]
    drop = np.maximum(counts - seq_len, 0)
    keep = rank >= drop[idx]
    pos = (rank - drop[idx])[keep]
    a = idx[keep]
    first = rank == 0
    gap_h = np.where(first, 0, ts - np.r_[ts[:1], ts[:-1]]) / 3.6e9
    age_h = (end_us - ts) / 3.6e9
    names = prep.names
    batch = SequenceBatch.empty(n, seq_len, len(names["num"]), len(names["cat"]), len(TIME_FEATURES),
                                len(names["static_num"]), len(names["static_cat"]), 0)
    for j in range(len(prep.names["num"])):
        batch.num[a, pos, j] = rows[f"_n{j}"].to_numpy()[keep]
    for j in range(len(prep.names["cat"])):
        batch.cat[a, pos, j] = rows[f"_c{j}"].to_numpy()[keep]
    time_cols = (np.log1p(np.maximum(gap_h, 0.0)) / TIME_SCALE, np.log1p(np.maximum(age_h, 0.0)) / TIME_SCALE,
                 rows[HOUR].to_numpy(), rows[DOW].to_numpy())
    for j, values in enumerate(time_cols):
        batch.time[a, pos, j] = values[keep]
    batch.lengths[:] = np.minimum(counts, seq_len)
    account_ids = rows[ACC].gather(starts) if n else rows[ACC].head(0)
    batch.account_id = account_ids.to_numpy()
    batch.static_num, batch.static_cat, home = _static_arrays(prep, account_ids)
    cats = {role: rows[f"_c{j}"].to_numpy() for role, j in prep.roles.items()}
    flags = {f: rows[f].to_numpy() for f in (ag.ONLINE, ag.ATM) if f in rows.columns}
    if home is not None and ag.COUNTRY in cats:
        home_rows = home[idx]
        flags[ag.FOREIGN] = (home_rows != PAD_ID) & (cats[ag.COUNTRY] != home_rows)
    batch.agg, agg_names = ag.compute_aggregates(idx, ts, rows[ag.AMOUNT].to_numpy(),
                                                 rows[ag.TINY].to_numpy(), flags, cats, n, end_us)
    batch.cutoff = np.full(n, np.datetime64(cutoff, "D"))
    batch.names = {**prep.names, "agg": agg_names}
    return batch


def iter_cutoff(prep: Prepared, spec: FeatureSpec, cutoff: date, tz: ZoneInfo,
                exclude: pl.Series | None = None) -> Iterator[SequenceBatch]:
    """SequenceBatches of cutoff D, shard 0, 1, ... in turn, leaving out `exclude` accounts."""
    start_us, active_us, end_us = cutoff_bounds(spec, cutoff, tz)
    for k in range(prep.n_shards):
        rows = prep.shard_rows(k)
        ts = rows[ag.TS]
        if len(rows) and (ts.min() < start_us or ts.max() >= end_us):
            rows = rows.filter((pl.col(ag.TS) >= start_us) & (pl.col(ag.TS) < end_us))
        if exclude is not None and len(exclude):
            rows = rows.filter(~pl.col(ACC).is_in(exclude.implode()))
        yield build_shard(prep, rows, spec, cutoff, active_us, end_us)


def build_cutoff(prep: Prepared, spec: FeatureSpec, cutoff: date, tz: ZoneInfo,
                 exclude: pl.Series | None = None) -> list[SequenceBatch]:
    """One SequenceBatch per shard (index = shard number) for cutoff D, leaving out `exclude` accounts."""
    return list(iter_cutoff(prep, spec, cutoff, tz, exclude))


def write_batch(batch: SequenceBatch, path: Path) -> Path:
    """Save a batch beside `path` and rename it into place (readers never see half a shard)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    batch.save(tmp)
    tmp.replace(path)
    return path


def load_prepared(settings: Settings, spec: FeatureSpec, state: FeatureState, first: date,
                  last: date) -> Prepared:
    """Prepare lake events for cutoffs from `first` to `last` (reads their whole history window)."""
    from riskmodel.lake import scan_transactions
    from riskmodel.sources import read_accounts

    start = first + timedelta(days=1 - history_days(spec))
    events = scan_transactions(settings, start, last)
    return prepare(events, spec, state, settings.tz, settings.n_shards, read_accounts(settings, spec),
                   keep_sorted=first != last, time_ordered=True)


def write_shards(batches: Iterable[SequenceBatch], out_dir: Path, prefix: str) -> list[Path]:
    """Write non-empty shard batches as `{prefix}-shard-NNNN.npz` as they come; removes stale ones."""
    paths = [write_batch(b, out_dir / f"{prefix}-shard-{k:04d}.npz") for k, b in enumerate(batches) if len(b)]
    for stale in set(out_dir.glob(f"{prefix}-shard-*.npz")) - set(paths):
        stale.unlink()
    return paths


def build_scoring_shards(settings: Settings, spec: FeatureSpec, state: FeatureState, score_date: date,
                         out_dir: Path) -> list[Path]:
    """Shards of every account active at `score_date`, ready for the model (`label` is None)."""
    prep = load_prepared(settings, spec, state, score_date, score_date)
    paths = write_shards(iter_cutoff(prep, spec, score_date, settings.tz), Path(out_dir),
                         f"score-{score_date.isoformat()}")
    log.info("sequences %s: %d shards written to %s", score_date, len(paths), out_dir)
    return paths
