"""Benchmark stage `sequences`: scoring shards for every active account at the end date.

Rows are accounts; the builder runs with the default `n_shards` (what the nightly flow uses).
Baseline: pandas `groupby('account_id').apply` building each account's
padded arrays, on a 10k-account subsample. Limit: one `numpy.copy` of the output arrays.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import END_DATE, bench_row, bench_settings, dir_mb, in_child, seeded_bank
from riskmodel.settings import DEMO_SPEC, Settings

SUBSAMPLE_ACCOUNTS = 10_000


def _spec():
    from riskmodel.spec import load_spec

    return load_spec(DEMO_SPEC)


def _state(state_path: Path):
    from riskmodel.features import FeatureState

    return FeatureState.from_dict(json.loads(state_path.read_text()))


def build(settings: Settings, state_path: Path, out_dir: Path) -> tuple[int, float]:
    """Build the scoring shards; returns (accounts, seconds)."""
    import riskmodel.lake
    import riskmodel.sources  # noqa: F401  (imported before the clock starts)
    from riskmodel.batch import SequenceBatch
    from riskmodel.sequences import build_scoring_shards

    spec, state = _spec(), _state(state_path)
    started = time.perf_counter()
    paths = build_scoring_shards(settings, spec, state, END_DATE, out_dir)
    seconds = time.perf_counter() - started
    return sum(len(SequenceBatch.load(p).lengths) for p in paths), seconds


def pandas_baseline(settings: Settings, state_path: Path) -> tuple[int, float]:
    """groupby('account_id').apply building padded arrays for the first 10k accounts; (accounts, s)."""
    import pandas as pd
    import polars as pl

    from riskmodel.lake import scan_transactions
    from riskmodel.sequences import history_days

    spec, state = _spec(), _state(state_path)
    tx = spec.transactions
    start = END_DATE + timedelta(days=1 - history_days(spec))
    lazy = scan_transactions(settings, start, END_DATE)
    ids = lazy.select(pl.col(tx.account_id).unique().sort().head(SUBSAMPLE_ACCOUNTS)).collect()[tx.account_id]
    frame = lazy.filter(pl.col(tx.account_id).is_in(ids.implode())).collect().to_pandas()
    seq_len, stats = spec.max_seq_len, state.stats[tx.amount]
    vocabs = {c: {v: i + 2 for i, v in enumerate(state.vocab[c])} for c in tx.categorical}
    end = pd.Timestamp(END_DATE + timedelta(days=1), tz="UTC")

    def pad(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        g = group.sort_values([tx.timestamp, tx.id]).tail(seq_len)
        n = len(g)
        num = np.zeros((seq_len, 1), np.float32)
        amount = g[tx.amount].to_numpy()
        num[:n, 0] = (np.sign(amount) * np.log1p(np.abs(amount)) - stats.mean) / stats.std
        cat = np.zeros((seq_len, len(tx.categorical)), np.int32)
        for j, c in enumerate(tx.categorical):
            cat[:n, j] = [vocabs[c].get(v, 1) for v in g[c]]
        tm = np.zeros((seq_len, 4), np.float32)
        ts = g[tx.timestamp]
        tm[:n, 0] = np.log1p(ts.diff().dt.total_seconds().fillna(0).to_numpy() / 3600)
        tm[:n, 1] = np.log1p((end - ts).dt.total_seconds().to_numpy() / 3600)
        tm[:n, 2] = ts.dt.hour.to_numpy() / 23
        tm[:n, 3] = ts.dt.dayofweek.to_numpy() / 6
        return num, cat, tm, n

    started = time.perf_counter()
    out = frame.groupby(tx.account_id).apply(pad, include_groups=False)
    return len(out), time.perf_counter() - started


def copy_limit(paths: list[Path]) -> tuple[int, float]:
    """One numpy.copy of every output array (already in memory); returns (accounts, seconds)."""
    from riskmodel.batch import SequenceBatch

    batches = [SequenceBatch.load(p) for p in paths]
    arrays = [getattr(b, n) for b in batches for n in ("num", "cat", "time", "lengths", "static_num",
                                                       "static_cat", "agg")]
    started = time.perf_counter()
    copies = [np.copy(a) for a in arrays]
    seconds = time.perf_counter() - started
    assert len(copies) == len(arrays)
    return sum(len(b) for b in batches), seconds


def prepare_lake(settings: Settings, workdir: Path) -> Path:
    """Extract the lake (if missing) and fit a FeatureState over the whole window; returns its JSON path."""
    from riskmodel.lake import extract, lake_dates
    from riskmodel.sequences import history_days
    from riskmodel.snapshots import fit_feature_state

    spec = _spec()
    if END_DATE not in lake_dates(settings):
        extract(settings, spec, END_DATE, full=True)
    state_path = settings.home / "bench-feature-state.json"
    if not state_path.exists():
        start = max(lake_dates(settings)[0], END_DATE + timedelta(days=1 - history_days(spec)))
        state = fit_feature_state(settings, spec, start, END_DATE)
        state_path.write_text(json.dumps(state.to_dict()))
    return state_path


def run(scale: str, workdir: Path) -> list[dict[str, Any]]:
    """Seed and extract (once), then time the builder, its baseline and its limit in separate processes."""
    seeded_bank(scale, workdir)
    settings = bench_settings(scale, workdir)
    state_path = prepare_lake(settings, workdir)
    out_dir = Path(workdir) / f"sequences-{scale}"
    shutil.rmtree(out_dir, ignore_errors=True)
    (rows, seconds), _, rss = in_child(build, settings, state_path, out_dir)
    paths = sorted(out_dir.glob("*.npz"))
    (copy_rows, copy_s), _, _ = in_child(copy_limit, paths)
    (base_rows, base_s), _, _ = in_child(pandas_baseline, settings, state_path)
    output_mb = dir_mb(out_dir, "*.npz")
    return [bench_row("sequences", scale, rows=rows, seconds=seconds, peak_rss_mb=rss, output_mb=output_mb,
                      baseline=f"pandas groupby.apply, {base_rows} accounts",
                      baseline_rate=base_rows / base_s,
                      limit="numpy.copy of the output arrays", limit_rate=copy_rows / copy_s,
                      details={"shards": len(paths), "rss_over_output": round(rss / output_mb, 2)
                               if output_mb else None, "baseline_seconds": round(base_s, 3)})]
