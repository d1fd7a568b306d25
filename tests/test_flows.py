"""The flows end to end in the Prefect test harness, on a small seeded bank in a real Postgres."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prefect.utilities.callables import parameter_schema

from flows.backfill import backfill
from flows.nightly_scoring import nightly_scoring
from flows.params import BackfillParams, RetrainParams, ScoreParams
from flows.retrain import retrain
from riskmodel import registry
from riskmodel.blend import BLEND_WEIGHTS
from riskmodel.db import connect
from riskmodel.errors import ModelIntegrityError
from riskmodel.monitor import TRAINING_NIGHT, WINDOW
from riskmodel.reports import night_folder
from riskmodel.score import cpu_bf16_supported
from riskmodel.settings import Settings
from riskmodel.writeback import write_scores
from tasks.data import training_shards_task
from tests.flow_helpers import create_database, flow_env, seeded_bank

END = date(2026, 6, 30)
HORIZON = 9
EMBED_CAP = 5000  # above the small bank's merchant count: the parameter travels, the model is the default's
METRIC_KEYS = {"roc_auc", "average_precision", "ks", "recall_at_1pct_fpr", "precision_at_top_1pct",
               "brier"}


@pytest.fixture(scope="module")
def bank(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory,
         prefect_harness: None) -> Iterator[Settings]:
    """A seeded bank and a trained champion, shared by this module's tests (env points at it)."""
    url = create_database(pg_server_url, "rf_flows")
    settings = seeded_bank(url, tmp_path_factory.mktemp("flows-home"), accounts=1500, days=200, seed=3)
    patch = pytest.MonkeyPatch()
    for key, value in flow_env(settings).items():
        patch.setenv(key, value)
    yield settings
    patch.undo()


@pytest.fixture(scope="module")
def trained(bank: Settings) -> dict:
    """The first retrain's result (becomes champion)."""
    return retrain(RetrainParams(as_of=END, train_days=150, epochs=2, max_train_minutes=2.0, seed=1,
                                 horizon_days=HORIZON, max_embedded_cardinality=EMBED_CAP,
                                 baseline_negative_keep=0.25))


def _scores(settings: Settings, day: date) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(
            "SELECT account_id, risk_score, risk_band, reason_codes, model_version "
            "FROM riskflow.risk_scores WHERE score_date = %s ORDER BY account_id", (day,)).fetchall()


def test_retrain_registers_a_champion_with_full_evaluation(bank: Settings, trained: dict) -> None:
    assert trained["status"] == "champion"
    assert trained["split"].startswith("out_of_time")
    lstm_days = trained["split"].split("| valid")[0].removeprefix("out_of_time: train ").split(", ")
    dense = trained["baseline_train"]
    assert dense[0] == lstm_days[0] and len(dense) > 2 * len(lstm_days)
    manifest = registry.read_manifest(bank, trained["version"])
    evaluation = manifest["evaluation"]
    assert {"model", "baseline", "shuffled_order", "lstm", "lstm_shuffled_order",
            "baseline_shuffled_order"} <= set(evaluation)
    for metrics in evaluation.values():
        assert METRIC_KEYS <= set(metrics)
    assert 0.0 <= evaluation["model"]["roc_auc"] <= 1.0
    assert evaluation["model"] != evaluation["lstm"]
    champion = registry.load_champion(bank)
    assert champion.blend is not None and manifest["blend"]["weight"] in BLEND_WEIGHTS
    assert trained["blend_weight"] == manifest["blend"]["weight"]
    assert (champion.path / "baseline.txt").is_file()
    assert manifest["reference"]["score"]["edges"]
    training_nights = {TRAINING_NIGHT.format(day) for day in dense}
    column_nights = set(manifest["reference"]["columns"]["agg:amount_max_7d"]["nights"])
    assert len(column_nights & training_nights) >= len(dense) // 2
    assert not set(manifest["reference"]["score"]["nights"]) & training_nights
    curves = [Path(p) for p in trained["curves"]]
    assert sorted(p.name for p in curves) == ["calibration.png", "precision-recall.png", "roc.png"]
    assert all(p.parent == bank.reports / trained["version"] and p.read_bytes().startswith(b"\x89PNG")
               for p in curves)
    assert "curves" not in manifest["metrics"]
    assert (trained["test_rows"], trained["test_positives"]) == (manifest["metrics"]["rows"],
                                                                 manifest["metrics"]["positives"])
    served_ap = trained["intervals"]["model"]["average_precision"]
    assert 0.0 <= served_ap["lo"] <= served_ap["hi"] <= 1.0 and served_ap["value"] == evaluation["model"][
        "average_precision"]
    assert registry.champion_version(bank) == trained["version"]
    assert manifest["training_window"]["horizon_days"] == HORIZON
    assert len(manifest["features"]["time_neutral"]) == 4 and len(manifest["features"]["agg_neutral"]) > 0
    assert manifest["model"]["max_embedded_cardinality"] == EMBED_CAP
    challenger, ablation = trained["training"], trained["ablation_training"]
    overlap = (challenger["started_at"] < ablation["finished_at"]
               and ablation["started_at"] < challenger["finished_at"])
    assert overlap, "the challenger and the ablation train at the same time"
    assert challenger["budget_minutes"] == ablation["budget_minutes"] == 2.0


def test_retrain_horizon_reaches_the_labels(bank: Settings, trained: dict, tmp_path: Path) -> None:
    features = registry.read_manifest(bank, trained["version"])["features"]
    cutoff = END - timedelta(days=60)
    positives = {}
    for horizon in (1, 30):
        paths = training_shards_task.fn(features, [cutoff], str(tmp_path / f"h{horizon}"), END,
                                        horizon_days=horizon)
        positives[horizon] = sum(float(np.load(p)["label"].sum()) for p in paths)
    assert positives[30] > positives[1]


def test_nightly_scores_every_active_account_once_and_rerun_is_identical(
        bank: Settings, trained: dict, caplog: pytest.LogCaptureFixture) -> None:
    day = END
    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        first = nightly_scoring(ScoreParams(score_date=day))
    task_logs = [r.getMessage() for r in caplog.records if r.name == "prefect.task_runs"]
    image = Path(first["score_distribution"])
    assert image.parent == night_folder(bank.reports, day) and image.read_bytes().startswith(b"\x89PNG")
    assert any(m.startswith("Finished in state Completed") for m in task_logs)
    assert not any("running in a worker thread" in m for m in task_logs)
    with connect(bank) as conn:
        active = conn.execute(
            "SELECT count(DISTINCT account_id) FROM bank.transactions WHERE ts < %s AND ts >= %s",
            (day + timedelta(days=1), day + timedelta(days=1) - timedelta(days=90))).fetchone()[0]
        known = conn.execute("SELECT count(*) FROM bank.accounts").fetchone()[0]
    rows = _scores(bank, day)
    assert first["accounts_scored"] == len(rows) == active
    assert first["inputs"]["accounts_scored"] == active
    assert first["inputs"]["accounts_without_events"] == known - active
    assert len({r[0] for r in rows}) == len(rows)
    assert all(r[4] == trained["version"] for r in rows)
    flagged = [r for r in rows if r[2] in ("medium", "high")]
    assert flagged, "capacity bands must flag some accounts"
    assert sum(bool(r[3]) for r in flagged) >= len(flagged) / 2, [(r[1], r[2], r[3]) for r in flagged[:20]]
    assert not any(r[3] for r in rows if r[2] == "low")
    second = nightly_scoring(ScoreParams(score_date=day))
    assert _scores(bank, day) == rows
    assert second["checksum"] == first["checksum"]
    assert second["replaced_rows"] == len(rows)
    with connect(bank) as conn:
        audited = conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit WHERE score_date = %s"
                               " AND replaced_by_run::text = %s", (day, second["run_id"])).fetchone()[0]
        runs = conn.execute("SELECT status, checksum, model_sha256 FROM riskflow.pipeline_runs "
                            "WHERE score_date = %s AND flow = 'nightly_scoring' AND run_id::text = ANY(%s)"
                            " ORDER BY started_at", (day, [first["run_id"], second["run_id"]])).fetchall()
    assert audited == len(rows)
    assert [r[0] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0][1] == runs[1][1] and runs[0][2] == trained["sha256"]


def test_nightly_in_bf16_says_so_and_stays_close_to_fp32(bank: Settings, trained: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    day = END - timedelta(days=7)
    exact = nightly_scoring(ScoreParams(score_date=day, extract=False))
    assert "in fp32" in exact["scoring"]
    fp32 = _scores(bank, day)
    monkeypatch.setenv("RISKFLOW_SCORE_PRECISION", "bf16")
    fast = nightly_scoring(ScoreParams(score_date=day, extract=False))
    assert f"in {'bf16' if cpu_bf16_supported() else 'fp32'}" in fast["scoring"]
    bf16 = _scores(bank, day)
    assert [r[0] for r in bf16] == [r[0] for r in fp32]
    np.testing.assert_allclose([r[1] for r in bf16], [r[1] for r in fp32], rtol=0, atol=0.02)
    assert (fast["checksum"] == exact["checksum"]) == (not cpu_bf16_supported())


def test_corrupted_champion_fails_loudly_and_keeps_scores(bank: Settings, trained: dict) -> None:
    day = END - timedelta(days=1)
    nightly_scoring(ScoreParams(score_date=day, extract=False))
    before = _scores(bank, day)
    weights = Path(trained["path"]) / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\x00" * 8)
    try:
        with pytest.raises(ModelIntegrityError, match="sha256"):
            nightly_scoring(ScoreParams(score_date=day, extract=False))
    finally:
        weights.write_bytes(original)
    assert _scores(bank, day) == before
    assert registry.champion_version(bank) == trained["version"]


def test_backfill_scores_missing_dates_and_skips_scored_ones(bank: Settings, trained: dict) -> None:
    start, end = END - timedelta(days=4), END - timedelta(days=2)
    nightly_scoring(ScoreParams(score_date=end, extract=False))
    result = backfill(BackfillParams(start=start, end=end, max_parallel=2))
    assert result["skipped"] == [end.isoformat()]
    assert sorted(result["scored"]) == [start.isoformat(), (start + timedelta(days=1)).isoformat()]
    for day in (start, start + timedelta(days=1), end):
        assert _scores(bank, day)
    with connect(bank) as conn:
        marks = conn.execute("SELECT DISTINCT r.watermark = w.watermark FROM riskflow.pipeline_runs r,"
                             " riskflow.extract_watermarks w WHERE r.score_date BETWEEN %s AND %s",
                             (start, end)).fetchall()
    assert marks == [(True,)], "runs that did not extract record the lake's watermark"
    rerun = nightly_scoring(ScoreParams(score_date=end, extract=False))
    movers = rerun["movers"]
    assert movers and all(m["previous_date"] == end - timedelta(days=1) for m in movers)
    changes = [abs(m["change"]) for m in movers]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    previous = dict((r[0], r[1]) for r in _scores(bank, end - timedelta(days=1)))
    tonight = dict((r[0], r[1]) for r in _scores(bank, end))
    biggest = max(set(previous) & set(tonight), key=lambda a: (abs(tonight[a] - previous[a]), a))
    assert abs(tonight[biggest] - previous[biggest]) == pytest.approx(changes[0])
    nights = registry.read_manifest(bank, trained["version"])["reference"]["score"].get("nights", {})
    assert rerun["score_psi"] >= 0.0 and rerun["score_reference"] in {WINDOW, *nights}


def test_nightly_drops_partitions_past_retention(bank: Settings, trained: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    old = END - timedelta(days=25)
    frame = pl.DataFrame({"account_id": ["a1", "a2"], "risk_score": [0.1, 0.9],
                          "risk_band": ["low", "high"], "reason_codes": [[], ["Amount pattern"]]})
    for _ in range(2):
        write_scores(bank, score_date=old, scores=frame, model_version="old", model_sha256="0" * 64,
                     run_id=uuid.uuid4(), watermark=None)
    expired = night_folder(bank.reports, old)
    kept = night_folder(bank.reports, END - timedelta(days=20))
    other = bank.reports / "night-notes"
    for folder in (expired, kept, other):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "score_distribution.png").write_bytes(b"png")
    monkeypatch.setenv("RISKFLOW_RETENTION_DAYS", "20")
    summary = nightly_scoring(ScoreParams(score_date=END, extract=False))
    assert summary["retention"]["cutoff"] == (END - timedelta(days=20)).isoformat()
    assert summary["retention"]["dropped"] == ["risk_scores_p20260605"]
    assert summary["retention"]["report_folders"] == [expired.name]
    assert not expired.exists() and kept.is_dir() and other.is_dir()
    assert night_folder(bank.reports, END).is_dir()
    with connect(bank) as conn:
        left = conn.execute("SELECT count(*) FROM riskflow.risk_scores WHERE score_date = %s",
                            (old,)).fetchone()[0]
        audit = conn.execute("SELECT count(*) FROM riskflow.risk_scores_audit WHERE score_date = %s",
                             (old,)).fetchone()[0]
    assert (left, audit) == (0, 0)
    assert len(_scores(bank, END)) == summary["accounts_scored"] > 0


def test_shadow_challenger_is_scored_and_a_broken_one_never_blocks_the_night(
        bank: Settings, trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    champion = registry.load_champion(bank)
    challenger = registry.register_model(
        bank, net=champion.net, calibrator=champion.calibrator, bands=champion.bands,
        features=champion.manifest["features"], spec_hash="test", train_start=END - timedelta(days=150),
        train_end=END, evaluation=champion.manifest["evaluation"], promote_margin=float("inf"),
        blend=champion.blend, reference=champion.manifest["reference"])
    assert challenger.status == "challenger"
    day = END - timedelta(days=5)
    try:
        night = nightly_scoring(ScoreParams(score_date=day, extract=False))
        assert night["shadow_model"] == challenger.version and night["shadow_error"] is None
        with connect(bank) as conn:
            shadow = conn.execute("SELECT account_id, risk_score FROM riskflow.risk_scores_shadow"
                                  " WHERE score_date = %s AND model_version = %s ORDER BY account_id",
                                  (day, challenger.version)).fetchall()
        assert shadow == [(r[0], r[1]) for r in _scores(bank, day)], "same weights, same scores"
        assert night["shadow_rows"] == len(shadow) == night["accounts_scored"]
        monkeypatch.setenv("RISKFLOW_LOCK_TIMEOUT_MS", "50")
        with connect(bank) as holder:
            holder.execute("LOCK TABLE riskflow.risk_scores_shadow IN SHARE MODE")
            blocked = nightly_scoring(ScoreParams(score_date=day, extract=False))
            holder.rollback()
        assert blocked["shadow_model"] == challenger.version and blocked["shadow_rows"] == 0
        assert "conflicting locks" in blocked["shadow_error"] and blocked["bands"]
        assert blocked["checksum"] == night["checksum"]
        with connect(bank) as conn:
            kept = conn.execute("SELECT account_id, risk_score FROM riskflow.risk_scores_shadow"
                                " WHERE score_date = %s ORDER BY account_id", (day,)).fetchall()
        assert kept == shadow, "the failed shadow write left the previous shadow night intact"
        weights = challenger.path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
        again = nightly_scoring(ScoreParams(score_date=day, extract=False))
        assert again["shadow_model"] is None and "sha256" in again["shadow_error"]
        assert again["checksum"] == night["checksum"] and again["accounts_scored"] == night["accounts_scored"]
    finally:
        with connect(bank) as conn:
            conn.execute("UPDATE riskflow.model_versions SET status = 'retired', retired_at = now()"
                         " WHERE version = %s", (challenger.version,))
            conn.commit()


def test_deployment_forms_have_typed_parameters() -> None:
    schema = parameter_schema(nightly_scoring.fn).model_dump()
    params = schema["definitions"]["ScoreParams"]["properties"]
    assert params["device"]["anyOf"][0]["enum"] == ["auto", "cpu", "cuda"]
    assert params["device"]["default"] is None
    assert "description" in params["score_date"]
    assert schema["properties"]["params"]["default"]["shadow"] is True
    retrain_schema = parameter_schema(retrain.fn).model_dump()
    retrain_props = retrain_schema["definitions"]["RetrainParams"]["properties"]
    assert retrain_props["promote_policy"]["enum"] == ["if_better", "always", "never"]
    assert retrain_props["epochs"]["minimum"] == 1
    back = parameter_schema(backfill.fn).model_dump()
    assert back["required"] == ["params"]


def test_serve_builds_three_deployments_with_schedules_and_drift_trigger() -> None:
    from flows.serve import deployments

    deps = {d.name: d for d in deployments(Settings(timezone="Europe/Berlin", nightly_cron="15 1 * * *"))}
    assert set(deps) == {"nightly-scoring", "weekly-retrain", "backfill"}
    nightly = deps["nightly-scoring"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("15 1 * * *", "Europe/Berlin")
    assert deps["nightly-scoring"].concurrency_limit == 1
    trigger = deps["weekly-retrain"].triggers[0]
    assert trigger.expect == {"riskflow.drift.detected"}
    assert not deps["backfill"].schedules


def test_a_second_retrain_is_judged_against_the_champion_on_the_same_test_rows(
        bank: Settings, trained: dict) -> None:
    """With a champion registered, the retrain scores it on the challenger's test rows and promotes
    only past the margin: an impossible margin keeps the champion. The challenger is retired after,
    so later nights do not shadow-score it."""
    again = retrain(RetrainParams(as_of=END, train_days=150, epochs=1, max_train_minutes=1.0, seed=2,
                                  horizon_days=HORIZON, max_embedded_cardinality=EMBED_CAP,
                                  run_ablation=False, min_ap_margin=1.0))
    try:
        champion_ap = again["evaluation"]["champion"]["average_precision"]
        assert 0.0 < champion_ap <= 1.0 and again["evaluation"]["model"]["average_precision"] > 0.0
        assert again["status"] == "challenger" and "does not beat champion's" in again["reason"]
        assert f"{champion_ap:.4f}" in again["reason"]
        assert registry.champion_version(bank) == trained["version"]
        assert registry.latest_challenger(bank) == again["version"]
    finally:
        with connect(bank) as conn:
            conn.execute("UPDATE riskflow.model_versions SET status = 'retired', retired_at = now()"
                         " WHERE version = %s AND status = 'challenger'", (again["version"],))
            conn.commit()
