"""Random SequenceBatch data of the demo spec's shape for the train and score benches (no database).

Throughput of the model does not depend on the values, only on the shapes: L = 128 events,
the demo spec's four categorical event columns, two static columns of each kind and a dozen
aggregates, with realistic length spread (many short histories, some full ones).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np

from riskmodel.batch import SequenceBatch

SCALES = {"S": 5_000, "M": 100_000}
SEQ_LEN = 128
CAT_CARDINALITIES = [300, 6, 60, 2000]
STATIC_CAT_CARDINALITIES = [6, 60]
N_AGG = 12


def accounts(scale: str) -> int:
    """Accounts at a bench scale ("S" or "M")."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} must be one of {', '.join(SCALES)}")
    return SCALES[scale]


def random_batch(n: int, seed: int, seq_len: int = SEQ_LEN, pos_rate: float = 0.02) -> SequenceBatch:
    """`n` accounts of random, correctly shaped and padded features with labels."""
    rng = np.random.default_rng(seed)
    b = SequenceBatch.empty(n=n, seq_len=seq_len, n_num=1, n_cat=len(CAT_CARDINALITIES), n_time=4,
                            n_static_num=2, n_static_cat=len(STATIC_CAT_CARDINALITIES), n_agg=N_AGG)
    b.lengths[:] = np.minimum(seq_len, rng.geometric(1 / 60, n)).astype(np.int32)
    real = np.arange(seq_len)[None, :] < b.lengths[:, None]
    b.num[:] = np.where(real[:, :, None], rng.standard_normal(b.num.shape, np.float32), 0)
    b.time[:] = np.where(real[:, :, None], rng.standard_normal(b.time.shape, np.float32), 0)
    for j, k in enumerate(CAT_CARDINALITIES):
        b.cat[:, :, j] = np.where(real, rng.integers(1, k, (n, seq_len)), 0)
    b.static_num[:] = rng.standard_normal(b.static_num.shape, np.float32)
    for j, k in enumerate(STATIC_CAT_CARDINALITIES):
        b.static_cat[:, j] = rng.integers(1, k, n)
    b.agg[:] = rng.lognormal(3, 2, b.agg.shape).astype(np.float32)
    b.label = (rng.random(n) < pos_rate).astype(np.float32)
    return b


def write_shards(n: int, workdir: Path, shard_rows: int = 25_000, seed: int = 7) -> list[Path]:
    """Write `n` random accounts as .npz shards of at most `shard_rows`; returns their paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, lo in enumerate(range(0, n, shard_rows)):
        path = workdir / f"bench-shard-{k:03d}.npz"
        random_batch(min(shard_rows, n - lo), seed + k).save(path)
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def row(stage: str, scale: str, rows: int, seconds: float, baseline: float, limit: float,
        output_mb: float, details: dict) -> dict:
    """One bench row in the shared format; baseline and limit are in rows per second."""
    rate = rows / seconds if seconds > 0 else float("inf")
    return {"stage": stage, "scale": scale, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_s": round(rate, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "output_mb": round(output_mb, 3), "baseline": round(baseline, 1),
            "baseline_ratio": round(rate / baseline, 2) if baseline else None,
            "limit": round(limit, 1), "limit_ratio": round(rate / limit, 3) if limit else None,
            "details": details}
