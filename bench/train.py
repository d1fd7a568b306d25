"""Bench stage "train": training sequences per second over one epoch (CPU, and CUDA with bf16 when present).

Measured: `train_model` streaming the scale's shards from disk for one epoch (batch 256,
default model: L = 128, hidden 64, the retrain's weight average); the clock stops at the epoch's
last optimiser step.
Baseline: the same model trained with batch size 1 for a few hundred steps.
Limit: forward + backward + step on length-sorted, trimmed batches of 256 already in memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import bench_row, in_child, scale_of
from flows.params import RetrainParams
from riskmodel.batch import SequenceBatch
from riskmodel.model import ModelConfig, RiskLSTM, trimmed_tensors
from riskmodel.train import TrainConfig, train_model

BATCH = 256
SEQ_LEN = 128  # random data of the demo spec's shapes: throughput depends on shapes only
CAT_CARDINALITIES = [300, 6, 60, 2000]
STATIC_CAT_CARDINALITIES = [6, 60]
N_AGG = 12


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

NAIVE_STEPS = 200
LIMIT_STEPS = 10


def _config(sample: SequenceBatch) -> ModelConfig:
    return ModelConfig.for_batch(sample, CAT_CARDINALITIES, STATIC_CAT_CARDINALITIES)


def _steps_rate(sample: SequenceBatch, batch_size: int, steps: int, device: torch.device) -> float:
    """Sequences/s of forward+backward+step on length-sorted batches prepared up front (no data loading).

    The batches are spread evenly over the length distribution of `sample`.
    """
    torch.manual_seed(0)
    net = RiskLSTM(_config(sample)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = []
    order = np.argsort(sample.lengths, kind="stable")
    n_chunks = max(1, len(sample) // batch_size)
    for k in np.unique(np.linspace(0, n_chunks - 1, min(steps, n_chunks)).round().astype(int)):
        rows = order[k * batch_size:(k + 1) * batch_size]
        labels = torch.from_numpy(sample.label[rows]).to(device)
        batches.append((trimmed_tensors(sample, rows, device), labels))
    cuda = device.type == "cuda"

    def step(t: dict, y: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = net(**t)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(*batches[0])
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for k in range(steps):
        step(*batches[k % len(batches)])
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def _measure(shards: list[Path], device_name: str, threads: int) -> dict[str, Any]:
    """In the child process: one epoch from the shards, then the baseline and limit rates."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    valid = random_batch(1024, seed=99)
    marks: dict[str, float] = {}

    def progress(epoch: int, step: int, total: int, metrics: dict[str, float]) -> None:
        if step == total and "val_ap" not in metrics:
            marks["epoch_end"] = time.perf_counter()

    config = TrainConfig(epochs=1, batch_size=BATCH, device=device_name, max_train_minutes=60, seed=7,
                         threads=threads, ema_decay=RetrainParams().ema_decay)
    sample = random_batch(BATCH * 4, seed=5)
    _steps_rate(sample, BATCH, 1, device)  # warm-up: lazy imports of the optimiser stack stay off the clock
    started = time.perf_counter()
    result = train_model(shards, [valid], model_config=_config(valid), config=config, on_progress=progress)
    return {"seconds": marks.get("epoch_end", time.perf_counter()) - started,
            "sequences": result.sequences_seen,
            "baseline": _steps_rate(sample, 1, NAIVE_STEPS, device),
            "limit": _steps_rate(sample, BATCH, LIMIT_STEPS, device),
            "threads": torch.get_num_threads(),
            "weights_mb": sum(p.numel() * p.element_size()
                              for p in result.model.state_dict().values()) / 2**20}


def run(scale: str, workdir: Path) -> list[dict]:
    """One epoch of training at the scale: CPU with torch's default threads and with one, then CUDA."""
    n = scale_of(scale).accounts
    shards = write_shards(n, Path(workdir) / f"train-shards-{scale}")
    shard_mb = sum(p.stat().st_size for p in shards) / 2**20
    rows = []
    runs = [("cpu", 0), ("cpu", 1)] + ([("cuda", 0)] if torch.cuda.is_available() else [])
    for name, threads in runs:
        m, _, peak = in_child(_measure, shards, name, threads)
        rows.append(bench_row(
            "train", scale, rows=m["sequences"], seconds=m["seconds"], peak_rss_mb=peak,
            output_mb=m["weights_mb"], baseline=f"same model, batch size 1 ({NAIVE_STEPS} steps)",
            baseline_rate=m["baseline"],
            limit=f"forward+backward+step on length-sorted in-memory batches of {BATCH}",
            limit_rate=m["limit"],
            details={"device": name, "precision": "bf16" if name == "cuda" else "fp32",
                     "batch_size": BATCH, "seq_len": SEQ_LEN, "hidden": 64,
                     "threads": m["threads"], "shards_mb": round(shard_mb, 1),
                     "baseline_seq_per_s": round(m["baseline"], 1),
                     "limit_seq_per_s": round(m["limit"], 1)}))
    return rows
