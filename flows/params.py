"""Typed flow parameters: pydantic models whose descriptions become the Prefect UI's run forms."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FIRST_DATE = date(1970, 1, 1)
LAST_DATE = date(2999, 12, 31)
MAX_SEED = 2**31 - 1  # LightGBM takes a C int

class RetrainParams(BaseModel):
    """What a retrain uses: the training window, the model's shape, the budget, the promote policy."""

    model_config = ConfigDict(extra="forbid")

    as_of: date | None = Field(
        None, ge=FIRST_DATE, le=LAST_DATE,
        description="Labels known up to this date (default: yesterday in the business zone).",
    )
    train_days: int = Field(
        120, ge=14, le=3650, description="Days of history whose cutoffs feed training and evaluation."
    )
    cutoff_every_days: int = Field(
        7, ge=1, le=90,
        description="Days between snapshots: the LSTM's training ones, validation and test.")
    horizon_days: int | None = Field(
        None, ge=1, le=3650, description="Prediction horizon H in days (default: the spec's)."
    )
    epochs: int = Field(
        20, ge=1, le=500,
        description="Most training epochs; early stopping on validation AP or the time budget usually ends "
                    "training first.")
    hidden_size: int = Field(64, ge=4, le=2048, description="LSTM hidden size.")
    max_embedded_cardinality: int = Field(
        1000, ge=2, le=10**9,
        description="Event categoricals with more values than this (merchant ids) get no embedding.")
    aggregate_dropout: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="Share of training rows whose aggregates the LSTM does not see (set to the training "
        "mean), so it learns from the events too; scoring always sees them.")
    ema_decay: float = Field(
        0.999, ge=0.0, lt=1.0,
        description="Largest decay of the moving average of the LSTM's weights that validation judges "
        "and the registry keeps (0 = the raw weights); it warms up as (1+t)/(10+t) over steps t.")
    max_pos_weight: float = Field(
        10.0, ge=1.0, le=1e6,
        description="Most weight a positive training row gets in the loss (the weight is negatives per "
        "positive in the training snapshots, capped here); calibration on validation undoes the shift.")
    max_train_minutes: float = Field(
        16.0, gt=0, le=24 * 60,
        description="Time budget for each LSTM's training; the challenger and the order ablation "
                    "train at the same time, a process (and a CPU core) each.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Random seed; same data and seed give the same model.")
    promote_policy: Literal["if_better", "always", "never"] = Field(
        "if_better", description="Promote the challenger if it beats the champion, always, or never."
    )
    min_ap_margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Average-precision margin a challenger must win by."
    )
    negative_keep: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Share of negative training rows kept (all positives kept; evaluation rows untouched).")
    baseline_cutoff_every_days: int = Field(
        3, ge=1, le=90,
        description="Days between the LightGBM baseline's training snapshots (denser than the LSTM's: "
                    "each fraud is seen from several days before it).")
    baseline_negative_keep: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Share of negative rows kept in the baseline's training snapshots.")
    run_ablation: bool = Field(True, description="Also train the order-shuffled ablation model.")
    blend_baseline: bool = Field(
        True, description="Serve the LSTM blended with the LightGBM baseline (validation-standardised "
                          "log-odds, weighted on validation); off serves the LSTM alone.")


class ScoreParams(BaseModel):
    """What a nightly scoring run scores and where."""

    model_config = ConfigDict(extra="forbid")

    score_date: date | None = Field(
        None, ge=FIRST_DATE, le=LAST_DATE,
        description="Business date D to score (uses transactions before D+1; default yesterday).",
    )
    device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Inference device (default: the RISKFLOW_DEVICE setting).")
    shadow: bool = Field(True, description="Also score an unpromoted challenger into risk_scores_shadow.")
    extract: bool = Field(True, description="Run the incremental extract first.")


class BackfillParams(BaseModel):
    """A range of dates to (re)score."""

    model_config = ConfigDict(extra="forbid")

    start: date = Field(ge=FIRST_DATE, le=LAST_DATE, description="First date to score (inclusive).")
    end: date = Field(ge=FIRST_DATE, le=LAST_DATE, description="Last date to score (inclusive).")
    force: bool = Field(False, description="Rescore dates already scored by the current champion.")
    max_parallel: int = Field(2, ge=1, le=32, description="Dates scored at the same time.")

    @model_validator(mode="after")
    def _ordered(self) -> BackfillParams:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if (self.end - self.start).days > 3660:
            raise ValueError("a backfill covers at most 10 years")
        return self
