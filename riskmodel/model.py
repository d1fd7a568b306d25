"""The risk model: an LSTM over each account's event sequence, joined with static features and aggregates.

Read top to bottom: `ModelConfig` says how big everything is; `RiskLSTM.forward` embeds the
categorical event columns (all but very high-cardinality ones such as merchant ids, whose
per-value vectors only memorised the training window), concatenates numeric and time features,
runs the LSTM, reads the output at the LAST REAL step of each left-aligned sequence, joins
static features and standardised aggregates (hidden for a share of the rows while training:
`aggregate_dropout`), and maps the result through a small MLP to one logit per account.
Only torch and numpy are needed, so the model runs on a bare GPU box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from riskmodel.batch import SequenceBatch

INPUT_KEYS = ("num", "cat", "time", "lengths", "static_num", "static_cat", "agg")


# What a manifest without these keys was trained with: an embedding for every event categorical,
# aggregates never hidden.
LEGACY_FIELDS: dict[str, Any] = {"max_embedded_cardinality": 2**62, "aggregate_dropout": 0.0}


@dataclass
class ModelConfig:
    """Shapes and sizes of a `RiskLSTM`; stored in the artifact manifest so a model can be rebuilt."""

    n_num: int
    n_time: int = 4
    cat_cardinalities: list[int] = field(default_factory=list)
    static_cat_cardinalities: list[int] = field(default_factory=list)
    n_static_num: int = 0
    n_agg: int = 0
    hidden: int = 64
    layers: int = 1
    emb_dim: int = 8
    dropout: float = 0.1
    head_hidden: int = 64
    # Event categoricals with more values than this (merchant ids) get no embedding: one vector per
    # merchant memorised the training window's merchants and cost 0.02-0.04 test AP at scale M.
    max_embedded_cardinality: int = 1000
    # Share of training rows whose aggregates are hidden (set to the training mean, a whole row at a
    # time), so the LSTM must learn from the events: with every row's aggregates in view the head
    # leaned on them, early stopping came before the sequence part had learned, and the model ranked
    # no better than an MLP on the aggregates alone. Training only; scoring always sees them.
    aggregate_dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; a manifest from before the embedding cap rebuilds the model it describes."""
        return cls(**{**LEGACY_FIELDS, **data})

    @classmethod
    def for_batch(cls, batch: SequenceBatch, cat_cardinalities: list[int] | None = None,
                  static_cat_cardinalities: list[int] | None = None, **sizes: Any) -> ModelConfig:
        """A config matching `batch`'s column counts; cardinalities default to max id + 1 in the batch.

        Pass the FeatureState's cardinalities in production: ids the model never saw are mapped to
        1 (unseen) at run time, so a too-small vocabulary degrades gracefully rather than crashing.
        """
        def from_data(ids: np.ndarray) -> list[int]:
            if ids.shape[-1] == 0:
                return []
            flat = ids.reshape(-1, ids.shape[-1])
            return [max(2, int(flat[:, j].max(initial=0)) + 1) for j in range(flat.shape[1])]

        return cls(
            n_num=batch.num.shape[2],
            n_time=batch.time.shape[2],
            cat_cardinalities=list(cat_cardinalities if cat_cardinalities is not None
                                   else from_data(batch.cat)),
            static_cat_cardinalities=list(static_cat_cardinalities if static_cat_cardinalities
                                          is not None else from_data(batch.static_cat)),
            n_static_num=batch.static_num.shape[1],
            n_agg=batch.agg.shape[1],
            **sizes,
        )


def embedding_dim(cardinality: int, cap: int) -> int:
    """Embedding width for a vocabulary: grows with its size, capped at `cap`."""
    return max(1, min(cap, (cardinality + 1) // 2))


def last_real_step(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Output at position `lengths - 1` of each left-aligned sequence (N, L, H) -> (N, H).

    Accounts with no events (length 0) get zeros, never a padded position.
    """
    index = (lengths.long() - 1).clamp(min=0)
    picked = outputs.gather(1, index.view(-1, 1, 1).expand(-1, 1, outputs.shape[2])).squeeze(1)
    return picked * (lengths > 0).unsqueeze(1).to(picked.dtype)


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): tames heavy-tailed aggregates such as sums of amounts."""
    return torch.sign(x) * torch.log1p(x.abs())


class RiskLSTM(nn.Module):
    """Embeddings -> LSTM -> last-real-step pooling -> (+ static, aggregates) -> MLP -> one logit."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedded = [j for j, k in enumerate(c.cat_cardinalities) if k <= c.max_embedded_cardinality]
        self.cat_emb = nn.ModuleList(
            nn.Embedding(c.cat_cardinalities[j], embedding_dim(c.cat_cardinalities[j], c.emb_dim),
                         padding_idx=0) for j in self.embedded
        )
        self.static_emb = nn.ModuleList(
            nn.Embedding(k, embedding_dim(k, c.emb_dim), padding_idx=0)
            for k in c.static_cat_cardinalities
        )
        step_width = c.n_num + c.n_time + sum(e.embedding_dim for e in self.cat_emb)
        self.lstm = nn.LSTM(step_width, c.hidden, num_layers=c.layers, batch_first=True,
                            dropout=c.dropout if c.layers > 1 else 0.0)
        head_width = (c.hidden + sum(e.embedding_dim for e in self.static_emb)
                      + c.n_static_num + c.n_agg)
        self.head = nn.Sequential(
            nn.Linear(head_width, c.head_hidden), nn.ReLU(), nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, 1),
        )
        self.register_buffer("agg_mean", torch.zeros(c.n_agg))
        self.register_buffer("agg_std", torch.ones(c.n_agg))
        self.register_buffer("cat_max", torch.tensor([k - 1 for k in c.cat_cardinalities],
                                                     dtype=torch.long))
        self.register_buffer("static_cat_max", torch.tensor(
            [k - 1 for k in c.static_cat_cardinalities], dtype=torch.long))

    def set_agg_stats(self, agg: np.ndarray) -> None:
        """Store mean/std of signed-log1p aggregates (from training data) used to standardise them."""
        z = signed_log1p(torch.as_tensor(np.asarray(agg, dtype=np.float32)))
        if z.shape[0] == 0:
            return
        self.agg_mean.copy_(z.mean(0))
        self.agg_std.copy_(z.std(0, unbiased=False).clamp(min=1e-6))

    @staticmethod
    def _known(ids: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Ids above the vocabulary size become 1 (unseen) instead of indexing out of range."""
        ids = ids.long()
        return torch.where(ids > top, torch.ones_like(ids), ids)

    def forward(self, num: torch.Tensor, cat: torch.Tensor, time: torch.Tensor,
                lengths: torch.Tensor, static_num: torch.Tensor, static_cat: torch.Tensor,
                agg: torch.Tensor) -> torch.Tensor:
        """Logits (N,) for a padded batch; tensors as in `SequenceBatch` (see `batch_tensors`)."""
        cat = self._known(cat, self.cat_max)
        steps = [num, time] + [emb(cat[:, :, j]) for j, emb in zip(self.embedded, self.cat_emb, strict=True)]
        outputs, _ = self.lstm(torch.cat(steps, dim=2))
        pooled = last_real_step(outputs, lengths)
        static_cat = self._known(static_cat, self.static_cat_max)
        agg_z = (signed_log1p(agg) - self.agg_mean) / self.agg_std
        if self.training and self.config.aggregate_dropout > 0:
            shown = torch.rand(agg_z.shape[0], 1, device=agg_z.device) >= self.config.aggregate_dropout
            agg_z = agg_z * shown
        parts = ([pooled] + [emb(static_cat[:, j]) for j, emb in enumerate(self.static_emb)]
                 + [static_num.to(pooled.dtype), agg_z.to(pooled.dtype)])
        return self.head(torch.cat(parts, dim=1)).squeeze(1)


def batch_tensors(batch: SequenceBatch, device: torch.device | str = "cpu",
                  pin: bool = False) -> dict[str, torch.Tensor]:
    """The model inputs of a `SequenceBatch` as tensors on `device` (pinned, non-blocking on CUDA)."""
    out: dict[str, torch.Tensor] = {}
    for key in INPUT_KEYS:
        t = torch.from_numpy(np.ascontiguousarray(getattr(batch, key)))
        if pin:
            t = t.pin_memory()
        out[key] = t.to(device, non_blocking=pin)
    return out


def trimmed_tensors(batch: SequenceBatch, rows: np.ndarray, device: torch.device,
                    pin: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs for `rows`, cut to their longest real length (left-aligned: the rest is padding).

    The LSTM is causal and pooling reads step `length - 1`, so trimming changes no score.
    """
    lengths = batch.lengths[rows]
    steps = max(1, int(lengths.max(initial=1)))
    arrays = {"num": batch.num[rows, :steps], "cat": batch.cat[rows, :steps],
              "time": batch.time[rows, :steps], "lengths": lengths,
              "static_num": batch.static_num[rows], "static_cat": batch.static_cat[rows],
              "agg": batch.agg[rows]}
    out = {}
    for key, value in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        if pin:
            t = t.pin_memory()
        out[key] = t.to(device, non_blocking=pin)
    return out
