"""Monitoring: PSI near 0 for the same population and large for a shifted one, per feature group too;
band changes; realised performance only from matured, reported labels of the served date."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from riskmodel.batch import SequenceBatch
from riskmodel.db import connect
from riskmodel.metrics import roc_auc
from riskmodel.monitor import (
    MAX_NIGHTS,
    MIN_NIGHT_ROWS,
    MIN_TRAINING_NIGHT_ROWS,
    TRAINING_NIGHT,
    WINDOW,
    Drift,
    add_training_nights,
    band_changes,
    categorical_fractions,
    concat_values,
    drift,
    feature_values,
    label_window,
    monitor,
    population_rows,
    psi,
    realised_performance,
    reference_distributions,
    reference_from_values,
    reference_rows,
)
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec
from riskmodel.writeback import write_scores
from tasks.training import drift_reference

NAMES = {"num": ["amount"], "cat": ["mcc", "channel", "country", "merchant_id"],
         "time": ["log_gap", "log_age", "hour", "dow"], "static_num": ["credit_limit"],
         "static_cat": ["segment"], "agg": ["amount_sum_7d", "amount_count_1d", "new_countries_90d"]}


def _population(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, SequenceBatch]:
    rng = np.random.default_rng(seed)
    b = SequenceBatch.empty(n=n, seq_len=8, n_num=1, n_cat=4, n_time=4, n_static_num=1,
                            n_static_cat=1, n_agg=3)
    b.lengths[:] = rng.integers(1, 9, n)
    real = np.arange(8)[None, :] < b.lengths[:, None]
    b.num[..., 0] = rng.normal(shift, 1, (n, 8)) * real
    b.cat[:] = rng.integers(2, 12, (n, 8, 4)) * real[..., None]
    b.time[:] = rng.normal(size=(n, 8, 4)) * real[..., None]
    b.static_num[:, 0] = rng.normal(size=n)
    b.static_cat[:, 0] = rng.integers(2, 6, n)
    b.agg[:] = rng.gamma(2.0, 1.0, (n, 3))
    b.agg[:, 0] += 3 * shift
    b.names = NAMES
    scores = np.clip(rng.beta(2, 8 - 5 * min(shift, 1.0), n), 0, 1)
    return scores, b


def test_psi_is_small_for_the_same_population_and_large_for_a_shifted_one() -> None:
    ref_scores, ref_batch = _population(20_000, seed=1)
    reference = json.loads(json.dumps(reference_distributions(ref_scores, ref_batch)))
    scores, batch = _population(20_000, seed=2)
    same = monitor_drift(reference, scores, batch)
    assert same.score_psi < 0.01 and max(g["psi"] for g in same.groups.values()) < 0.02
    shifted_scores, shifted_batch = _population(20_000, seed=3, shift=1.0)
    shifted = monitor_drift(reference, shifted_scores, shifted_batch)
    assert shifted.score_psi > 0.25
    assert shifted.groups["amount_pattern"]["psi"] > 0.25
    assert shifted.groups["merchant_category"]["psi"] < 0.02
    halves = [feature_values(ref_batch.subset(np.arange(k, 20_000, 2))) for k in (0, 1)]
    joined = reference_from_values(ref_scores, concat_values(halves), ref_batch.names)
    column = "agg:amount_sum_7d"
    assert joined["columns"][column]["edges"] == reference["columns"][column]["edges"]
    assert set(shifted.groups) == {"amount_pattern", "merchant_category", "country_channel", "timing",
                               "recent_burst", "static_profile"}


def monitor_drift(reference: dict, scores: np.ndarray, batch: SequenceBatch) -> Drift:
    return drift(reference, scores, feature_values(batch))


def _nights(parts: list[tuple[np.ndarray, SequenceBatch]],
            first: dt.date) -> tuple[np.ndarray, SequenceBatch]:
    """The populations of `parts` as consecutive weekly nights from `first`, in one batch."""
    for k, (_, batch) in enumerate(parts):
        batch.cutoff[:] = np.datetime64(first + dt.timedelta(days=7 * k))
    return np.concatenate([s for s, _ in parts]), SequenceBatch.concat([b for _, b in parts])


def test_a_cycle_seen_in_the_reference_nights_is_not_drift_but_a_new_shift_is() -> None:
    first = dt.date(2026, 5, 18)
    ref_scores, ref_batch = _nights([_population(3000, seed=6), _population(3000, seed=7, shift=1.0),
                                     _population(MIN_NIGHT_ROWS - 1, seed=8, shift=2.0)], first)
    reference = json.loads(json.dumps(reference_distributions(ref_scores, ref_batch)))
    pay_day = str(first + dt.timedelta(days=7))
    column = reference["columns"]["agg:amount_sum_7d"]
    assert set(column["nights"]) == {str(first), pay_day}
    assert set(reference["score"]["nights"]) == {str(first), pay_day}
    tonight_scores, tonight = _population(3000, seed=9, shift=1.0)
    found = monitor_drift(reference, tonight_scores, tonight)
    assert found.score_psi < 0.05 and found.score_reference == pay_day
    assert found.groups["amount_pattern"]["psi"] < 0.05
    assert found.groups["amount_pattern"]["reference"] == pay_day
    assert max(g["psi"] for g in found.groups.values()) < 0.05
    window_only = {"score": {k: reference["score"][k] for k in ("edges", "fractions")},
                   "columns": {k: {n: v for n, v in c.items() if n != "nights"}
                               for k, c in reference["columns"].items()},
                   "groups": reference["groups"]}
    pooled = monitor_drift(window_only, tonight_scores, tonight)
    assert pooled.groups["amount_pattern"]["psi"] > 0.25 and pooled.score_reference == WINDOW
    new_scores, new = _population(3000, seed=10, shift=2.0)
    moved = monitor_drift(reference, new_scores, new)
    assert moved.groups["amount_pattern"]["psi"] > 0.25
    assert moved.groups["merchant_category"]["psi"] < 0.05
    one_night = reference_distributions(*_population(3000, seed=11))
    assert "nights" not in one_night["score"] and "nights" not in one_night["columns"]["agg:amount_sum_7d"]


def test_reference_rows_keep_enough_of_each_recent_night() -> None:
    cutoffs = np.repeat(np.arange(np.datetime64("2026-01-01"), np.datetime64("2026-02-10")), 1200)
    rows = reference_rows(cutoffs, max_rows=20_000)
    assert np.all(np.diff(rows) > 0)
    days, counts = np.unique(cutoffs[rows], return_counts=True)
    assert days.size == 40
    assert counts[-MAX_NIGHTS:].min() >= MIN_NIGHT_ROWS and counts[:-MAX_NIGHTS].max() == 20_000 // 40


def test_drift_reference_samples_shards_of_any_size_row_for_row(tmp_path: Path) -> None:
    first = dt.date(2026, 5, 18)
    scores, batch = _nights([_population(1500, seed=12), _population(2500, seed=13, shift=1.0)], first)
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for path, part in zip(paths, (np.arange(1500), np.arange(1500, 4000)), strict=True):
        batch.subset(part).save(path)
    reference = drift_reference(scores, [str(p) for p in paths], max_rows=2000)
    keep = reference_rows(batch.cutoff, 2000)
    expected = reference_distributions(scores[keep], batch.subset(keep))
    assert reference == expected
    assert set(reference["score"]["nights"]) == {str(first), str(first + dt.timedelta(days=7))}
    with pytest.raises(ValueError, match="3999 scores for 4000 shard rows"):
        drift_reference(scores[:-1], [str(p) for p in paths])


def test_population_rows_restore_the_class_mix_of_a_sampled_snapshot() -> None:
    label = np.r_[np.ones(4000), np.zeros(6000)].astype(np.float32)
    rows = population_rows(label, negative_keep=0.25)
    assert np.all(np.diff(rows) > 0)
    assert np.array_equal(rows[label[rows] == 0], np.arange(4000, 10_000))
    assert 900 < int(label[rows].sum()) < 1100
    assert np.array_equal(rows, population_rows(label, negative_keep=0.25))


def test_training_nights_cover_a_cycle_the_windows_missed_for_features_only(tmp_path: Path) -> None:
    first = dt.date(2026, 5, 18)
    scores, window = _nights([_population(3000, seed=20), _population(3000, seed=21)], first)
    path = tmp_path / "window.npz"
    window.save(path)
    _, training = _nights([_population(800, seed=22), _population(800, seed=23, shift=1.0),
                           _population(MIN_TRAINING_NIGHT_ROWS - 50, seed=24, shift=2.0)],
                          first - dt.timedelta(days=63))
    training.label = np.zeros(len(training), np.float32)
    training.label[::2] = 1.0
    train_path = tmp_path / "training.npz"
    training.save(train_path)
    reference = json.loads(json.dumps(drift_reference(scores, [str(path)], training=[str(train_path)],
                                                      negative_keep=0.5)))
    pay_day = TRAINING_NIGHT.format(first - dt.timedelta(days=56))
    assert set(reference["columns"]["agg:amount_sum_7d"]["nights"]) == {
        str(first), str(first + dt.timedelta(days=7)), TRAINING_NIGHT.format(first - dt.timedelta(days=63)),
        pay_day}
    assert set(reference["score"]["nights"]) == {str(first), str(first + dt.timedelta(days=7))}
    tonight_scores, tonight = _population(3000, seed=25, shift=1.0)
    found = monitor_drift(reference, tonight_scores, tonight)
    amount = found.groups["amount_pattern"]
    assert amount["psi"] < 0.1 and amount["reference"] == pay_day
    assert found.score_psi > 0.25
    without = json.loads(json.dumps(drift_reference(scores, [str(path)])))
    assert monitor_drift(without, tonight_scores, tonight).groups["amount_pattern"]["psi"] > 0.25
    new_scores, new = _population(3000, seed=26, shift=2.0)
    assert monitor_drift(reference, new_scores, new).groups["amount_pattern"]["psi"] > 0.25


def test_training_nights_sample_several_shards_row_for_row(tmp_path: Path) -> None:
    first = dt.date(2026, 5, 18)
    scores, window = _nights([_population(1200, seed=30), _population(1200, seed=31)], first)
    window.save(tmp_path / "window.npz")
    _, training = _nights([_population(900, seed=32), _population(1100, seed=33, shift=1.0)],
                          first - dt.timedelta(days=28))
    training.label = (np.arange(len(training)) % 7 == 0).astype(np.float32)
    paths = [tmp_path / "t0.npz", tmp_path / "t1.npz", tmp_path / "t2.npz"]
    for path, part in zip(paths, np.array_split(np.arange(len(training)), [700, 1500]), strict=True):
        training.subset(part).save(path)
    got = drift_reference(scores, [str(tmp_path / "window.npz")], max_rows=1500,
                          training=[str(p) for p in paths], negative_keep=0.4)
    mix = population_rows(training.label, 0.4)
    rows = mix[reference_rows(training.cutoff[mix], 1500)]
    expected = add_training_nights(drift_reference(scores, [str(tmp_path / "window.npz")], max_rows=1500),
                                   training.subset(rows))
    assert got == expected
    assert sum(name.endswith("(training)") for name in got["columns"]["agg:amount_sum_7d"]["nights"]) == 2


def test_psi_basics() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) > 1.0
    assert categorical_fractions(np.array([2, 2, 3, 9]), [2, 3]).tolist() == [0.5, 0.25, 0.25]


def _write(settings: Settings, day: dt.date, scores: dict[str, float]) -> None:
    frame = pl.DataFrame({"account_id": list(scores), "risk_score": list(scores.values()),
                          "risk_band": ["high" if s >= 0.5 else "low" for s in scores.values()],
                          "reason_codes": [[] for _ in scores]})
    write_scores(settings, score_date=day, scores=frame, model_version="m1", model_sha256="c" * 64,
                 run_id=uuid.uuid4(), watermark=None)


def test_band_changes_against_the_previous_night(initialised: Settings) -> None:
    d = dt.date(2026, 6, 30)
    _write(initialised, d - dt.timedelta(days=2), {"1": 0.9, "2": 0.1, "3": 0.2})
    _write(initialised, d, {"1": 0.9, "2": 0.8, "3": 0.2, "4": 0.1})
    bands = band_changes(initialised, d)
    before = d - dt.timedelta(days=2)
    assert bands == [
        {"band": "low", "accounts": 2, "previous": 2, "previous_date": before, "change": 0},
        {"band": "high", "accounts": 2, "previous": 1, "previous_date": before, "change": 1},
    ]


def test_realised_performance_uses_only_matured_reported_labels(initialised: Settings,
                                                                  demo_spec: FeatureSpec) -> None:
    d = dt.date(2026, 6, 30)
    w = label_window(initialised, demo_spec, d)
    served = w["served_date"]
    assert served == d - dt.timedelta(days=demo_spec.horizon_days + demo_spec.reporting_lag_days)
    assert realised_performance(initialised, demo_spec, d) is None
    scores = {"1": 0.9, "2": 0.8, "3": 0.7, "4": 0.6, "5": 0.5, "6": 0.2, "7": 0.1, "8": 0.3}
    _write(initialised, served, scores | {"9": 0.95})
    _write(initialised, served + dt.timedelta(days=1), {k: 1 - v for k, v in scores.items()})
    inside = w["start"] + dt.timedelta(days=3)
    day = dt.timedelta(days=1)
    events = [
        (1, inside, inside + day, "fraud"),                       # counted
        (6, w["end"] - dt.timedelta(hours=1), w["end"], "chargeback"),   # counted (last hour of window)
        (2, inside, w["known_by"] + day, "fraud"),                # reported after D: not known yet
        (3, w["start"] - dt.timedelta(hours=1), inside, "fraud"),  # before the window (on S)
        (4, w["end"], w["end"] + day, "fraud"),                   # after the window
        (5, inside, inside + day, "dispute"),                     # not a positive type
        (9, w["start"] - 2 * day, w["start"] - day, "fraud"),     # known bad on S: out, as in training
        (9, inside, inside + day, "fraud"),
    ]
    with connect(initialised, admin=True) as conn:
        for acct, ts, rep, kind in events:
            conn.execute("INSERT INTO bank.risk_events (account_id, event_ts, reported_at, event_type)"
                         " VALUES (%s, %s, %s, %s)", (acct, ts, rep, kind))
    got = realised_performance(initialised, demo_spec, d)
    assert got is not None
    assert (got["served_date"], got["accounts"], got["positives"]) == (served, 8, 2)
    labels = np.array([k in ("1", "6") for k in scores], float)
    assert got["roc_auc"] == pytest.approx(roc_auc(labels, np.array(list(scores.values()))))
    assert got["roc_auc"] == pytest.approx(7 / 12)
    lo, hi = got["roc_auc_interval"]
    assert 0.0 <= lo < 7 / 12 < hi <= 1.0
    strict = monitor(initialised.model_copy(update={"realised_ap_floor": 0.0, "realised_auc_floor": 0.6}),
                     demo_spec, score_date=d, scores=np.array([0.5]), values={}, reference={})
    assert strict.alerts == [], "2 positives among 8 accounts cannot tell 0.58 from 0.6"
    assert any(n.startswith(f"realised ROC-AUC {7 / 12:.3f} [") and "not an alert" in n for n in strict.notes)
    later = d + dt.timedelta(days=30)
    _write(initialised, served + dt.timedelta(days=30), {"21": 0.4, "22": 0.3, "23": 0.2})
    none_matured = monitor(initialised, demo_spec, score_date=later, scores=np.array([0.5]), values={},
                           reference={})
    assert none_matured.realised["positives"] == 0 and none_matured.alerts == []
    assert any("no matured positive among the 3 accounts" in n for n in none_matured.notes)


def test_realised_performance_alerts_when_its_whole_interval_is_below_the_floor(
        initialised: Settings, demo_spec: FeatureSpec) -> None:
    d = dt.date(2026, 6, 30)
    w = label_window(initialised, demo_spec, d)
    served = w["served_date"]
    inverted = {str(k): (0.05 if k < 40 else 0.9) - k / 1000 for k in range(200)}
    _write(initialised, served, inverted)
    with connect(initialised, admin=True) as conn:
        for acct in range(40):
            conn.execute("INSERT INTO bank.risk_events (account_id, event_ts, reported_at, event_type)"
                         " VALUES (%s, %s, %s, 'fraud')", (acct, w["start"] + dt.timedelta(days=2),
                                                          w["start"] + dt.timedelta(days=3)))
    report = monitor(initialised, demo_spec, score_date=d, scores=np.array([0.5]), values={}, reference={})
    assert report.realised["positives"] == 40 and report.realised["roc_auc"] == 0.0
    assert report.realised["roc_auc_interval"][1] < initialised.realised_auc_floor
    assert any(a.startswith("realised ROC-AUC 0.000 [0.000, 0.000] < floor") for a in report.alerts)
    assert report.realised["average_precision"] > initialised.realised_ap_floor
    assert not any(a.startswith("realised average precision") for a in report.alerts)
    scarce = monitor(initialised.model_copy(update={"realised_min_positives": 41}), demo_spec, score_date=d,
                     scores=np.array([0.5]), values={}, reference={})
    assert scarce.alerts == []
    assert any("40 positives are fewer than the 41 an alert needs" in n for n in scarce.notes)


def test_monitor_report_alerts_and_image(initialised: Settings, demo_spec: FeatureSpec) -> None:
    ref_scores, ref_batch = _population(5000, seed=4)
    reference = reference_distributions(ref_scores, ref_batch)
    d = dt.date(2026, 6, 30)
    _write(initialised, d, {"1": 0.9, "2": 0.1})
    scores, batch = _population(5000, seed=5, shift=1.0)
    report = monitor(initialised, demo_spec, score_date=d, scores=scores, values=feature_values(batch),
                     reference=reference)
    assert any(a.startswith("score PSI") for a in report.alerts)
    assert any("Amount pattern" in a for a in report.alerts)
    assert report.image_png.startswith(b"\x89PNG") and len(report.image_png) > 2000
    assert report.rows()[0]["metric"] == "psi:score"
    calm = monitor(initialised, demo_spec, score_date=d, scores=ref_scores[:2500],
                   values=feature_values(ref_batch), reference=reference)
    assert calm.alerts == [] and calm.realised is None
    json.dumps(calm.to_dict(), default=str)
    bare = monitor(initialised, demo_spec, score_date=d, scores=scores, values={}, reference={})
    assert bare.alerts == [] and bare.notes and bare.rows()[0]["value"] is None
    assert bare.image_png.startswith(b"\x89PNG")
