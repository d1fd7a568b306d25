"""Bench stage "train": training sequences per second over one epoch (CPU, and CUDA with bf16 when present).

Measured: `train_model` streaming the scale's shards from disk for one epoch (batch 256,
default model: L = 128, hidden 64); the clock stops at the epoch's last optimiser step.
Baseline: the same model trained with batch size 1 for a few hundred steps.
Limit: forward + backward + step of one batch of 256 already in memory, repeated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.model_data import (
    CAT_CARDINALITIES,
    STATIC_CAT_CARDINALITIES,
    accounts,
    random_batch,
    row,
    write_shards,
)
from riskmodel.batch import SequenceBatch
from riskmodel.model import ModelConfig, RiskLSTM, batch_tensors
from riskmodel.train import TrainConfig, train_model

BATCH = 256
NAIVE_STEPS = 200
LIMIT_STEPS = 10


def _config(sample: SequenceBatch) -> ModelConfig:
    return ModelConfig.for_batch(sample, CAT_CARDINALITIES, STATIC_CAT_CARDINALITIES)


def _steps_rate(sample: SequenceBatch, batch_size: int, steps: int, device: torch.device) -> float:
    """Sequences/s of forward+backward+step on batches prepared up front (no data loading)."""
    torch.manual_seed(0)
    net = RiskLSTM(_config(sample)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = []
    for k in range(min(steps, max(1, len(sample) // batch_size))):
        part = sample.subset(np.arange(k * batch_size, (k + 1) * batch_size))
        batches.append((batch_tensors(part, device), torch.from_numpy(part.label).to(device)))
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


def run(scale: str, workdir: Path) -> list[dict]:
    """One epoch of training at the scale per available device; one row per device."""
    n = accounts(scale)
    shards = write_shards(n, workdir / f"train-{scale}")
    valid = random_batch(1024, seed=99)
    sample = random_batch(BATCH * 4, seed=5)
    shard_mb = sum(p.stat().st_size for p in shards) / 2**20
    rows = []
    for name in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        device = torch.device(name)
        marks: dict[str, float] = {}

        def progress(epoch: int, step: int, total: int, metrics: dict, marks: dict = marks) -> None:
            if step == total and "val_ap" not in metrics:
                marks["epoch_end"] = time.perf_counter()

        config = TrainConfig(epochs=1, batch_size=BATCH, device=name, max_train_minutes=30, seed=7)
        started = time.perf_counter()
        result = train_model(shards, [valid], model_config=_config(valid), config=config,
                             on_progress=progress)
        seconds = marks.get("epoch_end", time.perf_counter()) - started
        baseline = _steps_rate(sample, 1, NAIVE_STEPS, device)
        limit = _steps_rate(sample, BATCH, LIMIT_STEPS, device)
        weights_mb = sum(p.numel() * p.element_size() for p in result.model.state_dict().values()) / 2**20
        rows.append(row("train", scale, result.sequences_seen, seconds, baseline, limit, weights_mb,
                        {"device": name, "precision": "bf16" if name == "cuda" else "fp32",
                         "batch_size": BATCH, "seq_len": valid.seq_len, "hidden": 64,
                         "threads": torch.get_num_threads(), "shards_mb": round(shard_mb, 1),
                         "baseline": f"batch size 1, {NAIVE_STEPS} steps",
                         "limit": f"forward+backward+step of one in-memory batch, {LIMIT_STEPS} steps"}))
    return rows
