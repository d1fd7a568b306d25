"""The sequence builder: one code path from lake rows to `SequenceBatch` shards, for scoring and training.

For a cutoff date D (local, settings.tz) the builder takes events with ts < D+1 (local
midnight), keeps accounts with an event in the last `lookback_days`, and puts each account's
last `max_seq_len` events, oldest first, into left-aligned padded arrays. Everything is Polars
expressions and NumPy scatter; nothing loops over accounts or rows. Events older than
`history_days(spec)` before D+1 are not read (that bounds both sequences and aggregates).
Output is sharded by a stable hash of the account id.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from riskmodel import aggregates as ag
from riskmodel.ablation import order_generator, permute_within
from riskmodel.batch import TIME_FEATURES, SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.features import FIRST_ID, PAD_ID, FeatureState, encode, normalise
from riskmodel.quality import local_midnight
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

log = logging.getLogger("riskflow.sequences")

ACC = "_acc"
HOUR, DOW = "_hour", "_dow"
HOME = "_home"
TIME_SCALE = float(np.log1p(24.0 * 366))
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Time features of local hour 0..23 and ISO weekday 1..7, computed once by Polars (so the float32
# rounding is Polars'); the prepared frame keeps the small integers and rows look their value up.
_HOUR_VALUE = (pl.Series(range(24)).cast(pl.Float32) / 23.0).to_numpy()
_DOW_VALUE = ((pl.Series(range(8)).cast(pl.Float32) - 1.0) / 6.0).to_numpy()


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


def shard_subset(shards: Iterable[int], n_shards: int) -> list[int]:
    """The shard numbers `shards`, sorted without repeats; a number outside 0..n_shards-1 is refused."""
    wanted = sorted({int(k) for k in shards})
    bad = [k for k in wanted if not 0 <= k < n_shards]
    if bad:
        raise ConfigError(f"shards: {bad} outside 0..{n_shards - 1} (RISKFLOW_N_SHARDS={n_shards})")
    return wanted


def in_shards(ids: pl.Expr, n_shards: int, shards: Collection[int]) -> pl.Expr:
    """True where the account id in `ids` hashes to one of `shards` (same hash as `shard_of`).

    Elementwise, so a streaming scan filtered by it drops other shards' rows batch by batch, before
    they are collected: a task that builds 1/n of the shards holds about 1/n of the rows."""
    wanted = np.zeros(n_shards, bool)
    wanted[list(shards)] = True

    def member(batch: pl.Series) -> pl.Series:
        return pl.Series(wanted[shard_of(batch.to_numpy(), n_shards)], dtype=pl.Boolean)

    return ids.map_batches(member, return_dtype=pl.Boolean, is_elementwise=True)


@dataclass
class Prepared:
    """Events encoded for one FeatureState, sorted by (shard, account, time), plus static features.

    Shard k is rows `bounds[k] .. bounds[k+1]` of `frame`, so `shard_rows(k)` is a zero-copy slice."""

    frame: pl.DataFrame
    static: pl.DataFrame
    n_shards: int
    names: dict[str, list[str]]
    roles: dict[str, int]
    bounds: np.ndarray

    def shard_rows(self, k: int) -> pl.DataFrame:
        """Rows of shard `k` sorted by (account, time, txn id)."""
        lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
        return self.frame.slice(lo, hi - lo)


def _shard_order(ids: np.ndarray, shard: np.ndarray) -> pl.Series:
    """Stable row order by (shard, account): a stable sort by account (lake partitions arrive as
    account-sorted runs, which the merge sort exploits), then a stable radix sort by shard."""
    if ids.dtype.kind in "iuf":
        by_account = np.argsort(ids, kind="stable")
    else:
        by_account = np.argsort(pl.Series(ids).rank("dense").to_numpy(), kind="stable")
    index_type = np.uint32 if ids.size < 2**32 else np.int64
    by_account = by_account.astype(index_type)
    by_shard = np.argsort(shard.astype(np.int16)[by_account], kind="stable")
    return pl.Series(by_account[by_shard])


def _gather_columns(columns: list[pl.Series], order: pl.Series) -> pl.DataFrame:
    """The columns reordered by `order` as one contiguous frame; consumes `columns`.

    Each source column is dropped from the list (and freed) once its reordered copy exists, so
    the peak holds one frame plus one column rather than two frames."""
    out: list[pl.Series] = []
    while columns:
        out.append(columns.pop(0).rechunk().gather(order))
    return pl.DataFrame(out)


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


def _channel_flags(spec: FeatureSpec, state: FeatureState) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Online / ATM flag expressions: (on the lake rows, on the encoded rows).

    When the channel vocabulary knows every flag value, the flags come from the encoded channel
    ids (no second pass over the strings); otherwise from the channel text, as the spec says."""
    tx = spec.transactions
    if not tx.channel:
        return [], []
    wanted = {ag.ONLINE: tx.online_values, ag.ATM: tx.atm_values}
    vocab = state.vocab.get(tx.channel, []) if tx.channel in state.event_cat else []
    if vocab and all(v in vocab for values in wanted.values() for v in values):
        ids = pl.col(f"_c{state.event_cat.index(tx.channel)}").cast(pl.Int32)
        known = {name: pl.Series([vocab.index(v) + FIRST_ID for v in values], dtype=pl.Int32)
                 for name, values in wanted.items()}
        return [], [ids.is_in(codes.implode()).alias(name) for name, codes in known.items()]
    text = pl.col(tx.channel)
    return [text.is_in(values).fill_null(False).alias(name) for name, values in wanted.items()], []


def _id_dtype(vocab: list[str]) -> type[pl.DataType]:
    """The narrowest unsigned type holding a vocabulary's ids (the prepared frame is the builder's peak)."""
    return pl.UInt16 if len(vocab) + 2 <= np.iinfo(np.uint16).max else pl.Int32


def prepare(events: pl.LazyFrame | pl.DataFrame, spec: FeatureSpec, state: FeatureState, tz: ZoneInfo,
            n_shards: int, accounts: pl.DataFrame | None = None, *, time_ordered: bool = False) -> Prepared:
    """Encode lake rows (categories to ids, numbers normalised, local hour/day, flags), sorted by shard.

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
        local.dt.hour().cast(pl.UInt8).alias(HOUR),
        local.dt.weekday().cast(pl.UInt8).alias(DOW),
        amount.alias(ag.AMOUNT),
        (amount <= tx.tiny_amount).alias(ag.TINY),
    ]
    exprs += [normalise(pl.col(c), state.stats[c]).alias(f"_n{i}") for i, c in enumerate(state.event_num)]
    exprs += [encode(pl.col(c), state.vocab[c], missing=1).cast(_id_dtype(state.vocab[c])).alias(f"_c{i}")
              for i, c in enumerate(state.event_cat)]
    if not time_ordered:
        exprs.append(pl.col(tx.id).alias("_id"))
    text_flags, id_flags = _channel_flags(spec, state)
    exprs += text_flags
    roles = {name: state.event_cat.index(col) for col, name in
             ((tx.category, ag.CATEGORY), (tx.merchant, ag.MERCHANT), (tx.country, ag.COUNTRY)) if col}
    static = _static_table(spec, state, accounts)
    frame = lazy.select(exprs).with_columns(id_flags).collect(engine="streaming")
    if not time_ordered:
        frame = frame.sort([ag.TS, "_id"]).drop("_id")
    ids = frame[ACC].to_numpy()
    shard = shard_of(ids, n_shards)
    bounds = np.r_[0, np.cumsum(np.bincount(shard, minlength=n_shards))]
    order = _shard_order(ids, shard)
    del ids, shard
    columns = frame.get_columns()
    del frame
    frame = _gather_columns(columns, order)
    names = {"num": list(state.event_num), "cat": list(state.event_cat), "time": list(TIME_FEATURES),
             "static_num": list(state.static_num), "static_cat": list(state.static_cat)}
    return Prepared(frame, static, n_shards, names, roles, bounds)


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


def _scatter(target: np.ndarray, dest: np.ndarray, columns: list[np.ndarray]) -> None:
    """Write per-row columns into a padded (N, L, F) array at flat positions `dest` (account * L + step)."""
    if columns:
        target.reshape(-1, target.shape[2])[dest] = np.stack(columns, axis=1)


def build_shard(prep: Prepared, rows: pl.DataFrame, spec: FeatureSpec, cutoff: date, active_us: int,
                end_us: int, order_rng: np.random.Generator | None = None) -> SequenceBatch:
    """Padded arrays for one shard's rows of one cutoff window (rows sorted by account, time).

    Accounts without an event since `active_us` are left out; the rest keep their last L rows.
    With `order_rng`, each account's attributes are shuffled across those rows first, for the
    sequences and the aggregates alike (the order ablation, see `riskmodel.ablation`)."""
    idx = rows[ACC].rle_id().cast(pl.Int64).to_numpy()
    ts = rows[ag.TS].to_numpy()
    firsts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if idx.size else np.zeros(0, np.int64)
    lasts = np.r_[firsts[1:], idx.size] - 1 if idx.size else firsts
    active = ts[lasts] >= active_us
    selected: np.ndarray | None = None
    if not active.all():
        selected = active[idx]
        idx = (np.cumsum(active) - 1)[idx[selected]]
        ts = ts[selected]
        firsts = firsts[active]

    def column(name: str) -> np.ndarray:
        values = rows[name].to_numpy()
        return values if selected is None else values[selected]

    n, seq_len = firsts.size, spec.max_seq_len
    counts = np.bincount(idx, minlength=n)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    drop = np.maximum(counts - seq_len, 0)
    rank = np.arange(idx.size) - starts[idx]
    kept = np.flatnonzero(rank >= drop[idx])
    a = idx[kept]
    dest = a * seq_len + rank[kept] - drop[a]
    source: np.ndarray | None = None
    if order_rng is not None:
        source = np.arange(idx.size)
        source[kept] = kept[permute_within(a, order_rng)]

    def attribute(name: str) -> np.ndarray:
        values = column(name)
        return values if source is None else values[source]

    gap_h = np.where(rank[kept] == 0, 0, ts[kept] - ts[np.maximum(kept - 1, 0)]) / 3.6e9
    age_h = (end_us - ts[kept]) / 3.6e9
    names = prep.names
    batch = SequenceBatch.empty(n, seq_len, len(names["num"]), len(names["cat"]), len(TIME_FEATURES),
                                len(names["static_num"]), len(names["static_cat"]), 0)
    cat_cols = [attribute(f"_c{j}") for j in range(len(names["cat"]))]
    _scatter(batch.num, dest, [attribute(f"_n{j}")[kept] for j in range(len(names["num"]))])
    _scatter(batch.cat, dest, [c[kept] for c in cat_cols])
    _scatter(batch.time, dest, [np.log1p(np.maximum(gap_h, 0.0)) / TIME_SCALE,
                                np.log1p(np.maximum(age_h, 0.0)) / TIME_SCALE,
                                _HOUR_VALUE[column(HOUR)[kept]], _DOW_VALUE[column(DOW)[kept]]])
    batch.lengths[:] = np.minimum(counts, seq_len)
    account_ids = rows[ACC].gather(firsts)
    batch.account_id = account_ids.to_numpy()
    batch.static_num, batch.static_cat, home = _static_arrays(prep, account_ids)
    cats = {role: cat_cols[j] for role, j in prep.roles.items()}
    flags = {f: attribute(f) for f in (ag.ONLINE, ag.ATM) if f in rows.columns}
    if home is not None and ag.COUNTRY in cats:
        home_rows = home[idx]
        flags[ag.FOREIGN] = (home_rows != PAD_ID) & (cats[ag.COUNTRY] != home_rows)
    batch.agg, agg_names = ag.compute_aggregates(idx, ts, attribute(ag.AMOUNT), attribute(ag.TINY), flags,
                                                 cats, n, end_us)
    batch.cutoff = np.full(n, np.datetime64(cutoff, "D"))
    batch.names = {**prep.names, "agg": agg_names}
    return batch


def iter_cutoff(prep: Prepared, spec: FeatureSpec, cutoff: date, tz: ZoneInfo,
                exclude: pl.Series | None = None, shards: Iterable[int] | None = None,
                order_seed: int | None = None) -> Iterator[SequenceBatch]:
    """SequenceBatches of cutoff D, shard 0, 1, ... in turn (or the numbers in `shards`), leaving out
    `exclude` accounts; with `order_seed`, order-ablated (see `riskmodel.ablation`)."""
    start_us, active_us, end_us = cutoff_bounds(spec, cutoff, tz)
    for k in range(prep.n_shards) if shards is None else shards:
        rows = prep.shard_rows(k)
        ts = rows[ag.TS]
        if len(rows) and (ts.min() < start_us or ts.max() >= end_us):
            rows = rows.filter((pl.col(ag.TS) >= start_us) & (pl.col(ag.TS) < end_us))
        if exclude is not None and len(exclude):
            rows = rows.filter(~pl.col(ACC).is_in(exclude.implode()))
        rng = None if order_seed is None else order_generator(order_seed, cutoff.toordinal(), k)
        yield build_shard(prep, rows, spec, cutoff, active_us, end_us, rng)


def build_cutoff(prep: Prepared, spec: FeatureSpec, cutoff: date, tz: ZoneInfo,
                 exclude: pl.Series | None = None, order_seed: int | None = None) -> list[SequenceBatch]:
    """One SequenceBatch per shard (index = shard number) for cutoff D, leaving out `exclude` accounts;
    with `order_seed`, order-ablated."""
    return list(iter_cutoff(prep, spec, cutoff, tz, exclude, order_seed=order_seed))


def write_batch(batch: SequenceBatch, path: Path) -> Path:
    """Save a batch beside `path` and rename it into place (readers never see half a shard)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    batch.save(tmp)
    tmp.replace(path)
    return path


def load_prepared(settings: Settings, spec: FeatureSpec, state: FeatureState, first: date,
                  last: date, shards: Collection[int] | None = None) -> Prepared:
    """Prepare lake events for cutoffs from `first` to `last` (reads their whole history window).

    With `shards`, only those shards' accounts are kept, filtered as the lake is read; the other
    shards are then empty."""
    from riskmodel.lake import scan_transactions
    from riskmodel.sources import ACCOUNT, read_accounts

    start = first + timedelta(days=1 - history_days(spec))
    events = scan_transactions(settings, start, last)
    accounts = read_accounts(settings, spec)
    if shards is not None:
        events = events.filter(in_shards(pl.col(spec.transactions.account_id), settings.n_shards, shards))
        if accounts is not None:
            accounts = accounts.filter(in_shards(pl.col(ACCOUNT), settings.n_shards, shards))
    return prepare(events, spec, state, settings.tz, settings.n_shards, accounts, time_ordered=True)


def write_shards(batches: Iterable[SequenceBatch], out_dir: Path, prefix: str,
                 shards: Sequence[int] | None = None) -> list[Path]:
    """Write non-empty shard batches as `{prefix}-shard-NNNN.npz` as they come; removes stale ones.

    `shards` numbers the batches (default 0, 1, ...) and limits the stale files removed to those
    shards', so builds of disjoint shards can share `out_dir`."""
    numbers: Iterable[int] = itertools.count() if shards is None else shards
    paths = [write_batch(b, out_dir / f"{prefix}-shard-{k:04d}.npz")
             for b, k in zip(batches, numbers, strict=False) if len(b)]
    if shards is None:
        candidates = set(out_dir.glob(f"{prefix}-shard-*.npz"))
    else:
        candidates = {p for k in shards if (p := out_dir / f"{prefix}-shard-{k:04d}.npz").exists()}
    for stale in candidates - set(paths):
        stale.unlink()
    return paths


def build_scoring_shards(settings: Settings, spec: FeatureSpec, state: FeatureState, score_date: date,
                         out_dir: Path, shards: Iterable[int] | None = None) -> list[Path]:
    """Shards of every account active at `score_date`, ready for the model (`label` is None).

    `shards` builds only those shard numbers (reading only their accounts' rows), so disjoint
    subsets can be built by separate processes into one `out_dir`; the files equal a full build's."""
    subset = None if shards is None else shard_subset(shards, settings.n_shards)
    prep = load_prepared(settings, spec, state, score_date, score_date, subset)
    paths = write_shards(iter_cutoff(prep, spec, score_date, settings.tz, shards=subset), Path(out_dir),
                         f"score-{score_date.isoformat()}", subset)
    log.info("sequences %s: %d shards written to %s", score_date, len(paths), out_dir)
    return paths
