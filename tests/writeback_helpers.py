"""Small score frames and a subprocess entry point for the write-back tests."""

from __future__ import annotations

import datetime as dt
import sys
import uuid

import numpy as np
import polars as pl

REASON_SETS = [[], ["amount_pattern"], ["timing", 'merchant "q", {x}'], ["país", "a\\b", "recent_burst"]]


def score_frame(n: int, seed: int) -> pl.DataFrame:
    """`n` accounts with random scores, bands and awkward reason strings (quotes, braces, unicode)."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    bands = np.where(scores > 0.8, "high", np.where(scores > 0.5, "medium", "low"))
    order = rng.permutation(n)
    return pl.DataFrame({
        "account_id": [f"acct{i:05d}" for i in order],
        "risk_score": scores,
        "risk_band": bands,
        "reason_codes": [REASON_SETS[int(i) % len(REASON_SETS)] for i in rng.integers(0, 4, n)],
    })


def main(argv: list[str]) -> None:
    """Write one date's scores: `database_url home date seed`."""
    from riskmodel.settings import Settings
    from riskmodel.writeback import write_scores

    url, home, day, seed = argv
    settings = Settings(database_url=url, home=home)
    write_scores(settings, score_date=dt.date.fromisoformat(day), scores=score_frame(2000, int(seed)),
                 model_version=f"v{seed}", model_sha256="a" * 64, run_id=uuid.uuid4(), watermark=None)


if __name__ == "__main__":
    main(sys.argv[1:])
