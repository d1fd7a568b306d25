"""Benchmark stage `nightly`: the whole nightly scoring flow for the end date, in a fresh process.

Any champion will do for timing, so when the bank has none, an untrained LSTM (default size,
L = spec max_seq_len) blended with a full-size LightGBM model is registered, with features fitted
on the lookback window and capacity bands fitted on its own scores. Rows are accounts scored.
There is no other implementation to compare with, so the row's "baseline" is the 60 s target and
its "limit" the 30 s goal: a ratio of 1 or more meets them. The flow's per-stage timings are in
`details`, and `details.scoring` says whether the LSTM ran: a champion whose blend gives it weight 0
(what a retrain at scale M registered before aggregate dropout) is scored by LightGBM alone, the
registered stand-in by both.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import END_DATE, bench_row, in_child, seeded_bank
from riskmodel.settings import DEMO_SPEC, Settings

TARGET_S = 60.0
GOAL_S = 30.0


def ensure_champion(settings: Settings, workdir: Path) -> str:
    """The bank's champion, registering an untrained one first if there is none (or only an LSTM-only
    one) in the default served form: an LSTM blended with a LightGBM model of the baseline's full
    size (`BASELINE_ROUNDS` trees on random labels, so it costs what a real one would at most)."""
    import numpy as np

    from riskmodel import registry
    from riskmodel.bands import BandPolicy
    from riskmodel.batch import SequenceBatch
    from riskmodel.calibrate import Calibrator
    from riskmodel.features import fit_feature_state
    from riskmodel.lake import extract
    from riskmodel.model import ModelConfig, RiskLSTM
    from riskmodel.score import score_logits
    from riskmodel.sequences import build_scoring_shards
    from riskmodel.spec import load_spec

    current = registry.champion_version(settings)
    if current is not None and "blend" in registry.read_manifest(settings, current):
        return current
    spec = load_spec(DEMO_SPEC)
    extract(settings, spec, END_DATE)
    state = fit_feature_state(settings, spec, END_DATE - timedelta(days=spec.lookback_days), END_DATE)
    shards = build_scoring_shards(settings, spec, state, END_DATE, workdir / "nightly-prep")
    sample = SequenceBatch.load(shards[0])
    import torch

    torch.manual_seed(0)
    net = RiskLSTM(ModelConfig.for_batch(sample, cat_cardinalities=state.cat_cardinalities,
                                         static_cat_cardinalities=state.static_cat_cardinalities))
    net.set_agg_stats(sample.agg)
    blend, values = _blend_part(sample, score_logits(net, sample))
    calibrator = Calibrator()
    bands = BandPolicy().fit(calibrator.apply(values))
    features = {**state.to_dict(), "agg_neutral": np.median(sample.agg, axis=0).astype(float).tolist()}
    registration = registry.register_model(
        settings, net=net, calibrator=calibrator, bands=bands, features=features,
        spec_hash=spec.fingerprint(), train_start=END_DATE, train_end=END_DATE,
        evaluation={"model": {}}, reference={}, training={"note": "untrained, for the nightly benchmark"},
        blend=blend)
    if registration.status != "champion":
        registry.promote(settings, registration.version)
    return registration.version


def _blend_part(sample: Any, lstm_logits: Any) -> tuple[Any, Any]:
    """A LightGBM model of the baseline's parameters and `BASELINE_ROUNDS` trees on `sample`'s tabular
    features (random labels), blended half and half with the LSTM's logits; and the sample's blended
    values."""
    import lightgbm as lgb
    import numpy as np

    from riskmodel.blend import fit_blend
    from riskmodel.evaluate import BASELINE_ROUNDS, baseline_params, tabular_features

    x, categorical = tabular_features(sample.static_num, sample.static_cat, sample.agg)
    labels = np.random.default_rng(0).random(len(x)) < 0.05
    booster = lgb.train(baseline_params(threads=1), lgb.Dataset(x, labels, categorical_feature=categorical),
                        num_boost_round=BASELINE_ROUNDS)
    probs = booster.predict(x)
    blend = fit_blend(lstm_logits, probs, booster.model_to_string(), BASELINE_ROUNDS)
    return blend, blend.combine(lstm_logits, probs)


def run_flow(settings: Settings) -> dict[str, Any]:
    """Run the nightly flow with the bank's settings in this (child) process, as `riskflow score`
    does (Prefect's temporary API started while the flow's libraries import)."""
    env = {"RISKFLOW_DATABASE_URL": settings.database_url.get_secret_value(),
           "RISKFLOW_HOME": str(settings.home), "RISKFLOW_LAKE_URL": settings.lake,
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    os.environ.update(env)
    from flows.ephemeral import api_started_early

    with api_started_early():
        from flows.nightly_scoring import nightly_scoring
        from flows.params import ScoreParams

    started = time.perf_counter()
    summary = nightly_scoring(ScoreParams(score_date=END_DATE, shadow=False))
    summary["flow_seconds"] = time.perf_counter() - started
    return summary


def run(scale: str, workdir: Path) -> list[dict[str, Any]]:
    """Seed (once), make sure a champion exists, then time one nightly run in a fresh process."""
    settings = seeded_bank(scale, workdir)
    ensure_champion(settings, Path(workdir))
    summary, wall, rss = in_child(run_flow, settings)
    rows = int(summary["accounts_scored"])
    stages = {k: round(v, 2) for k, v in summary["timings_s"].items()}
    return [bench_row("nightly", scale, rows=rows, seconds=wall, peak_rss_mb=rss, output_mb=0.0,
                      baseline=f"target {TARGET_S:.0f} s for all accounts", baseline_rate=rows / TARGET_S,
                      limit=f"goal {GOAL_S:.0f} s", limit_rate=rows / GOAL_S,
                      details={"stages_s": stages, "flow_seconds": round(summary["flow_seconds"], 2),
                               "stage_sum_s": round(sum(stages.values()), 2),
                               "bands": summary["bands"], "model": summary["model_version"],
                               "scoring": summary["scoring"]})]
