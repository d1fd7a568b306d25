"""The nightly summary's readable lines: drift, realised performance and top movers say what they
measured, and say why when there is nothing to measure."""

from __future__ import annotations

import math
from datetime import date

from flows.nightly_scoring import drift_line, movers_table, realised_line, scoring_line


def test_scoring_line_says_which_model_ran_and_in_which_precision() -> None:
    shard = {"lstm_ran": True, "device": "cpu", "precision": "bf16", "batch_size": 4096, "oom_retries": 0}
    assert scoring_line([shard, shard]) == "LSTM on cpu in bf16, batch 4096"
    mixed = [shard, shard | {"precision": "fp32", "oom_retries": 2}]
    assert scoring_line(mixed) == ("LSTM on cpu in bf16 (1 of 2 shards in fp32: their bf16 sample disagreed "
                                   "with fp32), batch 4096, 2 out-of-memory back-offs")
    assert scoring_line([shard | {"lstm_ran": False}]).startswith("LightGBM alone")
    assert scoring_line([]) == "no shard to score"


def test_drift_line_names_the_closest_reference_or_why_there_is_none() -> None:
    assert drift_line(0.0123, "2026-10-28") == "score PSI 0.012 (closest reference: 2026-10-28)"
    assert "no reference distributions" in drift_line(math.nan, "")
    assert drift_line(None, "") == drift_line(math.nan, "")


def test_realised_line_reports_metrics_only_with_matured_positives() -> None:
    served = date(2026, 10, 31)
    measured = {"served_date": served, "accounts": 3858, "positives": 8, "roc_auc": 0.6994,
                "average_precision": 0.1362, "roc_auc_interval": [0.52, 0.85],
                "average_precision_interval": [0.004, 0.41]}
    assert realised_line(measured) == ("AP 0.136 [0.004, 0.410], ROC-AUC 0.699 [0.520, 0.850] of the scores "
                                       "served 2026-10-31 (8 of 3858 accounts positive; 95% bootstrap "
                                       "intervals)")
    none_positive = measured | {"positives": 0, "roc_auc": None, "average_precision": None,
                                "roc_auc_interval": None, "average_precision_interval": None}
    assert realised_line(none_positive).startswith("not measurable: no matured positive among the 3858")
    all_positive = measured | {"positives": 3858, "roc_auc": None, "average_precision": 1.0,
                               "roc_auc_interval": None, "average_precision_interval": None}
    assert realised_line(all_positive).startswith("AP 1.000, ROC-AUC n/a of the scores served 2026-10-31")
    assert realised_line(None).startswith("not yet")


def test_movers_table_shows_both_nights_and_the_signed_change() -> None:
    movers = [{"account_id": "a1", "previous_date": date(2026, 6, 29), "previous_score": 0.12,
               "risk_score": 0.9, "change": 0.78, "previous_band": "low", "risk_band": "high",
               "reason_codes": ["Recent burst of activity", "Amount pattern"]},
              {"account_id": "a4", "previous_date": date(2026, 6, 29), "previous_score": 0.2,
               "risk_score": 0.05, "change": -0.15, "previous_band": "low", "risk_band": "low",
               "reason_codes": []}]
    lines = movers_table(movers).splitlines()
    assert lines[0] == "previous scored night: 2026-06-29"
    assert lines[1].split() == ["account_id", "previous", "tonight", "change", "reasons"]
    assert lines[3].split()[:6] == ["a1", "0.1200", "low", "0.9000", "high", "+0.7800"]
    assert lines[3].endswith("Recent burst of activity; Amount pattern")
    assert lines[4].split() == ["a4", "0.2000", "low", "0.0500", "low", "-0.1500"]
    assert movers_table([]) == "no previous scored night to compare with"
