"""Bench stage "score": inference sequences per second (CPU in fp32, CPU in bf16 where the CPU
computes bf16 natively, and CUDA when present).

Measured: `score_logits` over every account of the scale (batches of 4096, inference mode).
Baseline: the same model called on one account at a time (a naive per-account loop).
Limit: the pure model forward over the same length-sorted chunks, preloaded as tensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import bench_row, in_child, scale_of
from bench.train import CAT_CARDINALITIES, STATIC_CAT_CARDINALITIES, random_batch
from riskmodel.batch import SequenceBatch
from riskmodel.model import ModelConfig, RiskLSTM, batch_tensors
from riskmodel.score import (
    ScoreReport,
    cpu_bf16_supported,
    default_batch_size,
    resolve_precision,
    score_logits,
    trimmed_tensors,
)

NAIVE_ACCOUNTS = 300
REPEATS = {"S": 3, "M": 1}  # best of N: the bench machine is shared


def _model(sample: SequenceBatch) -> RiskLSTM:
    torch.manual_seed(7)
    net = RiskLSTM(ModelConfig.for_batch(sample, CAT_CARDINALITIES, STATIC_CAT_CARDINALITIES))
    net.set_agg_stats(sample.agg)
    return net.eval()


def _naive_rate(net: RiskLSTM, batch: SequenceBatch, device: torch.device) -> float:
    n = min(NAIVE_ACCOUNTS, len(batch))
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            net(**batch_tensors(batch.subset(np.array([i])), device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - started)


def _limit_rate(net: RiskLSTM, batch: SequenceBatch, device: torch.device, bf16: bool, size: int) -> float:
    """Pure forward over the same length-sorted, trimmed chunks of `size`, already tensors on the device."""
    order = np.argsort(batch.lengths, kind="stable")
    chunks = [trimmed_tensors(batch, order[lo:lo + size], device) for lo in range(0, len(batch), size)]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        net(**chunks[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for t in chunks:
            net(**t)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(batch) / (time.perf_counter() - started)


def _measure(n: int, device_name: str, repeats: int, threads: int, precision: str) -> dict[str, Any]:
    """In the child process: score all `n` accounts (best of `repeats`), then baseline and limit."""
    if threads:
        torch.set_num_threads(threads)
    batch = SequenceBatch.concat([random_batch(min(25_000, n - lo), 7 + k)
                                  for k, lo in enumerate(range(0, n, 25_000))])
    net = _model(batch.subset(np.arange(min(2048, n))))
    device = torch.device(device_name)
    size = default_batch_size(device)
    net.to(device)
    report = ScoreReport(device=device_name, precision="", batch_size=size)
    score_logits(net, batch.subset(np.arange(min(size, n))), device=device_name, precision=precision)
    seconds, limit = float("inf"), 0.0
    bf16 = resolve_precision(precision, device) == "bf16"
    for _ in range(repeats):
        started = time.perf_counter()
        score_logits(net, batch, device=device_name, precision=precision, report=report)
        seconds = min(seconds, time.perf_counter() - started)
        limit = max(limit, _limit_rate(net, batch, device, bf16=bf16, size=size))
    return {"seconds": seconds, "limit": limit, "baseline": _naive_rate(net, batch, device),
            "precision": report.precision, "bf16_max_abs_diff": report.bf16_max_abs_diff,
            "batch_size": report.batch_size,
            "threads": torch.get_num_threads(), "seq_len": batch.seq_len,
            "weights_mb": sum(p.numel() * p.element_size() for p in net.state_dict().values()) / 2**20}


def run(scale: str, workdir: Path) -> list[dict]:
    """Score every account of the scale: CPU in fp32 with torch's default threads and with one, CPU
    in bf16 where it is native, then CUDA."""
    n = scale_of(scale).accounts
    rows = []
    runs = ([("cpu", 0, "fp32"), ("cpu", 1, "fp32")] + ([("cpu", 0, "bf16")] if cpu_bf16_supported() else [])
            + ([("cuda", 0, "auto")] if torch.cuda.is_available() else []))
    for name, threads, precision in runs:
        m, _, peak = in_child(_measure, n, name, REPEATS[scale], threads, precision)
        rows.append(bench_row(
            "score", scale, rows=n, seconds=m["seconds"], peak_rss_mb=peak, output_mb=m["weights_mb"],
            baseline=f"same model called on one account at a time ({NAIVE_ACCOUNTS} accounts)",
            baseline_rate=m["baseline"],
            limit="pure model forward over the same length-sorted chunks preloaded as tensors",
            limit_rate=m["limit"],
            details={"device": name, "precision": m["precision"], "batch_size": m["batch_size"],
                     "seq_len": m["seq_len"], "threads": m["threads"],
                     "bf16_max_abs_diff": m["bf16_max_abs_diff"],
                     "baseline_seq_per_s": round(m["baseline"], 1), "limit_seq_per_s": round(m["limit"], 1)}))
    return rows
