"""Bench stage "model": the LSTM against LightGBM and its own order ablation, out of time, over 3 seeds.

For the synthetic bank and the control bank (same size, no order-dependent patterns) of the scale,
the retrain's own steps build the snapshots once with the `RetrainParams` defaults (split, cutoffs,
negative sampling), and once more as the order ablation's (events shuffled within each account,
aggregates recomputed from the shuffled events: `riskmodel.ablation`, one shuffle for every seed).
Then, for each seed, the challenger and its ablation (each with a retrain's per-model training
budget) and LightGBM on the real and on the shuffled snapshots are trained and scored on the test
window. The rows also carry a blend (the LSTM's and LightGBM's validation-standardised log-odds,
weighted on validation as the retrain weights them) against LightGBM alone and against the same
blend built on the ablation: does the sequence model add to the GBDT, and does the order of
events? One row per bank and seed, and one "all seeds" row per bank whose AP is the mean over seeds.
LightGBM trains on the retrain's denser baseline snapshots (`baseline_cutoffs`), the LSTM on the
weekly ones.
Intervals resample whole accounts, and every model and seed shares the resamples (paired), so the
"all seeds" margin's interval covers seed-to-seed and test-sample variation together.
The banks run one after the other; within a seed the challenger and its ablation train at the same
time, a child process and a torch thread each, as the retrain trains them, so each LSTM has a core
for its whole budget (`--bank` runs one bank: about an hour at M instead of two).
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import END_DATE, SEED, bench_row, dir_mb, scale_of
from riskmodel.blend import blend_probs
from riskmodel.child import run_in_child
from riskmodel.errors import ConfigError

log = logging.getLogger("riskflow.bench")

SEEDS = (1, 2, 3)
BANKS = {"synthetic": True, "control": False}
MODELS = ("model", "shuffled_order", "baseline", "baseline_shuffled", "blend", "blend_shuffled")
TABLE_COLUMNS = ["stage", "scale", "bank", "seeds", "rows", "positives", "lstm_ap", "baseline_ap",
                 "ablation_ap", "baseline_ablation_ap", "lstm_minus_baseline", "lstm_minus_ablation",
                 "blend_weight", "blend_ap", "blend_minus_baseline", "blend_minus_blend_shuffled", "seconds"]


def _bank(scale: str, workdir: Path, ordered: bool) -> tuple[Any, Any]:
    """Settings of the bank (seeded once under `workdir/model-<scale>-<bank>`), lake extracted."""
    from bench.common import bench_settings
    from riskmodel.lake import extract
    from riskmodel.schema import init_database
    from riskmodel.settings import DEMO_SPEC
    from riskmodel.spec import load_spec
    from riskmodel.synthetic import seed_bank

    size = scale_of(scale)
    name = f"model-{scale}-{'synthetic' if ordered else 'control'}"
    settings = bench_settings(name, workdir)
    spec = load_spec(DEMO_SPEC)
    marker = settings.home / "seeded.json"
    want = {"accounts": size.accounts, "days": size.days, "end_date": END_DATE.isoformat(), "seed": SEED,
            "ordered": ordered}
    if not (marker.exists() and json.loads(marker.read_text()).get("bank") == want):
        init_database(settings, spec, demo_source=True)
        seed_bank(settings, accounts=size.accounts, days=size.days, end_date=END_DATE, seed=SEED,
                  order_patterns=ordered)
        extract(settings, spec, END_DATE)
        marker.write_text(json.dumps({"bank": want}))
    return settings, spec


def _snapshots(settings: Any, spec: Any, out: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]],
                                                              dict, str]:
    """train/valid/test shards exactly as a retrain with default parameters builds them, real and
    order-ablated."""
    from flows.params import RetrainParams
    from riskmodel import retrain as steps
    from riskmodel.snapshots import build_training_shards, fit_feature_state

    params = RetrainParams()
    start, split = steps.plan_retrain(spec, END_DATE, params.train_days, params.cutoff_every_days)
    state = fit_feature_state(settings, spec, start, max(split.train))
    baseline_days = steps.baseline_cutoffs(spec, split, start, params.baseline_cutoff_every_days, END_DATE)
    windows = steps.snapshot_windows(split, baseline_days, params.negative_keep,
                                     params.baseline_negative_keep)
    real, shuffled = ({name: build_training_shards(settings, spec, state, days, out / kind / name, END_DATE,
                                                   negative_keep=keep, seed=params.seed,
                                                   order_seed=order_seed)
                       for name, days, keep in windows}
                      for kind, order_seed in (("real", None), ("shuffled", params.seed)))
    return real, shuffled, state.to_dict(), split.describe()


def _fit_and_score(parts: dict[str, list[Path]], features: dict, seed: int,
                   on_progress: Any = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train one LSTM as the retrain does (budget, calibration); its test and validation probabilities."""
    from flows.params import RetrainParams
    from riskmodel import retrain as steps

    params = RetrainParams().model_dump()
    config = steps.lstm_train_config(params, seed=seed, device="cpu")
    fitted = steps.fit_model(parts["train"], parts["valid"], features=features, config=config,
                             on_progress=on_progress, **steps.lstm_model_options(params))
    probs, _ = steps.predict_proba(fitted.net, fitted.calibrator, parts["test"], device="cpu")
    valid = fitted.calibrator.apply(fitted.result.valid_logits)
    return probs, valid, {k: v for k, v in fitted.summary.items() if k != "history"}


def _bank_run(scale: str, workdir: str, bank: str) -> dict[str, Any]:
    """Everything for one bank: snapshots once, then every seed's four models (the two LSTMs at the
    same time in child processes, as the retrain trains them)."""
    from riskmodel.evaluate import train_baseline
    from riskmodel.groundtruth import read_ground_truth
    from riskmodel.retrain import pattern_groups, row_keys

    started = time.perf_counter()
    settings, spec = _bank(scale, Path(workdir), BANKS[bank])
    run = Path(workdir) / f"model-{scale}-{bank}-run"
    shutil.rmtree(run, ignore_errors=True)
    parts, shuffled, features, split = _snapshots(settings, spec, run)
    output_mb = dir_mb(run)
    accounts, _ = row_keys(parts["test"])
    groups = pattern_groups(accounts, read_ground_truth(settings, spec))
    probs: dict[str, np.ndarray] = {}
    training: dict[str, dict] = {}
    blend_weights: dict[str, float] = {}
    labels = np.concatenate([np.load(p, allow_pickle=False)["label"] for p in parts["test"]])
    valid_labels, shuffled_valid_labels = (
        np.concatenate([np.load(p, allow_pickle=False)["label"] for p in snapshots["valid"]])
        for snapshots in (parts, shuffled))
    for seed in SEEDS:
        with ThreadPoolExecutor(2) as pool:
            fits = [pool.submit(run_in_child, _fit_and_score, {"parts": snaps, "features": features,
                                                               "seed": seed})
                    for snaps in (parts, shuffled)]
            probs[f"model-{seed}"], lstm_valid, training[f"model-{seed}"] = fits[0].result()
            probs[f"shuffled_order-{seed}"], shuffled_valid, training[f"shuffled_order-{seed}"] = \
                fits[1].result()
        valid: dict[str, np.ndarray] = {}
        for name, snapshots in (("baseline", parts), ("baseline_shuffled", shuffled)):
            baseline = train_baseline(snapshots["baseline_train"], snapshots["valid"], seed=seed, threads=1)
            probs[f"{name}-{seed}"] = baseline.predict(snapshots["test"])
            valid[name] = baseline.predict(snapshots["valid"])
        probs[f"blend-{seed}"], blend_weights[f"blend-{seed}"] = blend_probs(
            (probs[f"model-{seed}"], probs[f"baseline-{seed}"]), (lstm_valid, valid["baseline"]),
            valid_labels)
        probs[f"blend_shuffled-{seed}"], blend_weights[f"blend_shuffled-{seed}"] = blend_probs(
            (probs[f"shuffled_order-{seed}"], probs[f"baseline_shuffled-{seed}"]),
            (shuffled_valid, valid["baseline_shuffled"]), shuffled_valid_labels)
        log.info("bench model %s: seed %d done after %.0f s", bank, seed, time.perf_counter() - started)
    shutil.rmtree(run, ignore_errors=True)
    return {"bank": bank, "split": split, "labels": labels, "accounts": accounts, "groups": groups,
            "probs": probs, "training": training, "blend_weights": blend_weights,
            "seconds": time.perf_counter() - started, "output_mb": output_mb,
            "peak_rss_mb": max(resource.getrusage(who).ru_maxrss for who in
                               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024.0}


def _rows(scale: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Bench rows of one bank: per seed, then the seed mean, with paired account-bootstrap intervals."""
    from riskmodel.metrics import bootstrap_draws, group_metrics, interval, point_metrics

    y, probs = result["labels"], result["probs"]
    draws = bootstrap_draws(y, probs, n_boot=200, seed=0, clusters=result["accounts"])
    ap = {name: point_metrics(y, p)["average_precision"] for name, p in probs.items()}
    ap_draws = {name: d["average_precision"] for name, d in draws.items()}

    def row(label: str, names: dict[str, list[str]], details: dict[str, Any]) -> dict[str, Any]:
        value = {m: float(np.mean([ap[n] for n in names[m]])) for m in MODELS}
        drawn = {m: np.mean([ap_draws[n] for n in names[m]], axis=0) for m in MODELS}
        pairs = {"model_minus_baseline": ("model", "baseline"),
                 "model_minus_shuffled_order": ("model", "shuffled_order"),
                 "blend_minus_baseline": ("blend", "baseline"),
                 "blend_minus_blend_shuffled": ("blend", "blend_shuffled")}
        margins = {key: interval(drawn[a] - drawn[b], value[a] - value[b]) for key, (a, b) in pairs.items()}
        out = bench_row("model", scale, rows=int(y.size), seconds=result["seconds"],
                        peak_rss_mb=result["peak_rss_mb"], output_mb=result["output_mb"],
                        baseline="LightGBM AP", baseline_rate=0.0, limit="order-ablation AP", limit_rate=0.0)
        out["baseline_ratio"] = round(value["model"] / max(value["baseline"], 1e-12), 3)
        out["limit_ratio"] = round(value["model"] / max(value["shuffled_order"], 1e-12), 3)
        def margin(key: str) -> str:
            m = margins[key]
            return f"{m['value']:+.4f} [{m['lo']:+.4f}, {m['hi']:+.4f}]"

        out.update(bank=result["bank"], seeds=label, positives=int(y.sum()), lstm_ap=round(value["model"], 4),
                   baseline_ap=round(value["baseline"], 4), ablation_ap=round(value["shuffled_order"], 4),
                   baseline_ablation_ap=round(value["baseline_shuffled"], 4),
                   lstm_minus_baseline=margin("model_minus_baseline"),
                   lstm_minus_ablation=margin("model_minus_shuffled_order"),
                   blend_ap=round(value["blend"], 4), blend_minus_baseline=margin("blend_minus_baseline"),
                   blend_minus_blend_shuffled=margin("blend_minus_blend_shuffled"))
        weights = [result["blend_weights"][n] for n in names["blend"]]
        out["blend_weight"] = "/".join(f"{w:.1f}" for w in weights)
        out["details"] = {"bank": result["bank"], "seeds": label, "split": result["split"],
                          "positives": int(y.sum()), "average_precision": value, "ap_margin": margins,
                          **details}
        return out

    rows = []
    for seed in SEEDS:
        names = {m: [f"{m}-{seed}"] for m in MODELS}
        per_pattern = {m: group_metrics(y, probs[f"{m}-{seed}"], result["groups"]) for m in MODELS[:4]}
        rows.append(row(str(seed), names, {"per_pattern": per_pattern, "training": {
            m: result["training"].get(f"{m}-{seed}") for m in ("model", "shuffled_order")}}))
    rows.append(row("mean of " + ",".join(map(str, SEEDS)),
                    {m: [f"{m}-{s}" for s in SEEDS] for m in MODELS}, {}))
    return rows


def run(scale: str, workdir: Path, banks: list[str] | None = None) -> list[dict[str, Any]]:
    """Each bank in turn (or only `banks`); rows per bank and seed plus each bank's seed mean."""
    unknown = sorted(set(banks or []) - set(BANKS))
    if unknown:
        raise ConfigError(f"bench model: unknown bank(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(BANKS)}")
    return [row for bank in (banks or list(BANKS))
            for row in _rows(scale, _bank_run(scale, str(workdir), bank))]
