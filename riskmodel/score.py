"""Batch inference: device choice, `torch.inference_mode`, large batches, back-off on CUDA OOM, bf16.

Precision "auto" runs the forward under bf16 autocast on CUDA (with pinned, non-blocking copies)
and in fp32 on the CPU; "bf16" uses bf16 autocast on the CPU too, where the CPU computes bf16
natively (AVX512-BF16 or AMX; elsewhere it falls back to fp32, logged); "fp32" never autocasts.
Under bf16 a sample is re-scored in fp32 and, if the two disagree by more than `bf16_tolerance`
in probability, everything the call scores (a nightly shard) is scored in fp32 instead (logged).
When the GPU runs out of memory the batch size is halved and the same rows are retried; a row's
score does not depend on the batch size beyond float rounding (about 1e-7 in the logit in fp32 on
the CPU). `oom_hook(batch_size)` is called before every forward so tests can inject OOMs.
One loaded model may score several shards at once from threads (the nightly's thread runner):
it is moved to its device once, never while another thread runs it (`ready_on`).
Needs only torch and numpy: it runs on a bare GPU box.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from riskmodel.batch import SequenceBatch
from riskmodel.errors import ConfigError
from riskmodel.model import RiskLSTM, trimmed_tensors

if TYPE_CHECKING:
    from riskmodel.registry import LoadedModel

log = logging.getLogger("riskflow.score")

OomHook = Callable[[int], None]
PRECISIONS = ("auto", "fp32", "bf16")
# Accounts per forward when none is set. On the CPU a chunk's per-step gate activations
# (1024 x 4 x hidden floats) stay in cache: 1024 scored a real M shard 17% faster than 4096 on
# 2 cores (512 the same as 1024); a GPU wants the larger batch.
DEFAULT_BATCH_SIZE = {"cpu": 1024, "cuda": 4096}
_PLACING = threading.Lock()


@dataclass
class ScoreReport:
    """How a scoring call ran: device, precision, final batch size, OOM back-offs, bf16 check, and
    whether the network ran at all (a blend that gives it weight 0 serves LightGBM alone)."""

    device: str
    precision: str
    batch_size: int
    oom_retries: int = 0
    bf16_max_abs_diff: float | None = None
    lstm_ran: bool = True


def choose_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA if available else CPU; "cuda" without a GPU is a configuration error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device {device!r} must be 'auto', 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but torch sees no CUDA device")
    return torch.device(device)


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively through oneDNN (AVX512-BF16 or AMX); emulated bf16
    is slower than fp32, so it is never worth asking for there."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32" for the `precision` setting on `device` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"score_precision={precision!r} must be one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
        _warn_no_cpu_bf16()
        return "fp32"
    return precision


@functools.cache
def _warn_no_cpu_bf16() -> None:
    """Say once per process that CPU bf16 was asked for and fp32 is used instead."""
    log.warning("score_precision='bf16' but this CPU has no native bf16 (AVX512-BF16 or AMX); "
                "scoring in fp32")


def default_batch_size(device: torch.device) -> int:
    """Accounts per forward on `device` when the caller sets none (`DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE["cuda"])


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for torch (0 keeps torch's default)."""
    if threads < 0:
        raise ConfigError(f"torch_threads={threads} must be >= 0")
    if threads:
        torch.set_num_threads(threads)


def _on(param: torch.Tensor, device: torch.device) -> bool:
    """Whether `param` lives on `device` ("cuda" matches any CUDA index)."""
    return param.device.type == device.type and device.index in (None, param.device.index)


def ready_on(net: RiskLSTM, device: torch.device) -> None:
    """Put `net` in eval mode on `device`, moving it only when it is elsewhere. `Module.to` rebuilds
    an LSTM's flat-weight list even when nothing moves, and a forward running in another thread
    then fails ("zip() argument 2 is longer than argument 1"); so a model already there is left be."""
    with _PLACING:
        if net.training:
            net.eval()
        if not all(_on(p, device) for p in net.parameters()):
            net.to(device)


def _run(net: RiskLSTM, batch: SequenceBatch, device: torch.device, batch_size: int, bf16: bool,
         oom_hook: OomHook | None, report: ScoreReport) -> np.ndarray:
    """Logits for all rows, in length-sorted chunks; halves the chunk on CUDA out-of-memory and retries."""
    out = np.empty(len(batch), dtype=np.float32)
    order = np.argsort(batch.lengths, kind="stable")
    cuda = device.type == "cuda"
    lo, size = 0, batch_size
    while lo < len(batch):
        hi = min(lo + size, len(batch))
        try:
            if oom_hook is not None:
                oom_hook(hi - lo)
            t = trimmed_tensors(batch, order[lo:hi], device, pin=cuda)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out[order[lo:hi]] = net(**t).float().cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            if hi - lo <= 1:
                raise
            size = max(1, (hi - lo) // 2)
            report.oom_retries += 1
            log.warning("out of memory at batch size %d; retrying with %d", hi - lo, size)
            if cuda:
                torch.cuda.empty_cache()
            continue
        lo = hi
    report.batch_size = size
    return out


def score_logits(net: RiskLSTM, batch: SequenceBatch, *, device: str = "auto", batch_size: int | None = None,
                 precision: str = "auto", bf16_sample: int = 256, bf16_tolerance: float = 0.02,
                 oom_hook: OomHook | None = None, threads: int = 0,
                 report: ScoreReport | None = None) -> np.ndarray:
    """Raw logits (float32) of `net` for every account in `batch`, in row order; under bf16 the first
    `bf16_sample` rows are checked against fp32 (0: no check); `batch_size` None is the device's
    default."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    set_threads(threads)
    dev = choose_device(device)
    batch_size = batch_size or default_batch_size(dev)
    use_bf16 = resolve_precision(precision, dev) == "bf16"
    rep = report or ScoreReport(device=str(dev), precision="bf16" if use_bf16 else "fp32",
                                batch_size=batch_size)
    rep.device, rep.precision = str(dev), "bf16" if use_bf16 else "fp32"
    ready_on(net, dev)
    with torch.inference_mode():
        logits = _run(net, batch, dev, batch_size, use_bf16, oom_hook, rep)
        if use_bf16 and len(batch) and bf16_sample > 0:
            n = min(bf16_sample, len(batch))
            exact = _run(net, batch.subset(np.arange(n)), dev, batch_size, False, oom_hook, rep)
            diff = float(np.max(np.abs(1 / (1 + np.exp(-exact)) - 1 / (1 + np.exp(-logits[:n])))))
            rep.bf16_max_abs_diff = diff
            if diff > bf16_tolerance:
                log.warning("bf16 scores differ from fp32 by %.4f (> %.4f) on a sample; "
                            "scoring in fp32", diff, bf16_tolerance)
                rep.precision = "fp32"
                logits = _run(net, batch, dev, batch_size, False, oom_hook, rep)
    return logits


def score_batch(model: LoadedModel, batch: SequenceBatch, *, device: str = "auto",
                batch_size: int | None = None, oom_hook: OomHook | None = None, threads: int = 0,
                precision: str = "auto", bf16_sample: int = 256,
                report: ScoreReport | None = None) -> np.ndarray:
    """Calibrated probabilities (float64) of a registered model (blended with LightGBM when it is a
    blend) for every account in `batch`; the network is skipped when the blend does not use it.
    `bf16_sample` rows are checked against fp32 under bf16 (0: none, for a precision already checked)."""
    if report is not None:
        report.lstm_ran = model.runs_lstm
    return model.calibrator.apply(model.predict_logits(batch, device=device, batch_size=batch_size,
                                                       oom_hook=oom_hook, threads=threads,
                                                       precision=precision, bf16_sample=bf16_sample,
                                                       report=report))
