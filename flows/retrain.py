"""Retrain: snapshots -> challenger LSTM and order ablation (trained at the same time, a process
each), LightGBM baselines, blends (the served model) -> out-of-time evaluation against the champion
-> register -> promote only if it wins. Orchestration only."""

from __future__ import annotations

import shutil
import uuid
from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run

from flows.params import RetrainParams
from flows.runners import quiet_worker_thread_timeouts
from riskmodel import registry
from riskmodel import retrain as steps
from riskmodel.clock import not_after_today, yesterday
from riskmodel.settings import Settings
from tasks.context import settings_and_spec
from tasks.data import extract_task, fit_features_task, training_shards_task
from tasks.training import (
    STOP_FILE,
    baseline_task,
    blend_task,
    champion_task,
    downsample_task,
    evaluate_task,
    fit_model_task,
    hash_split_task,
    register_task,
)


@flow(name="retrain", log_prints=False)
def retrain(params: RetrainParams = RetrainParams()) -> dict:  # noqa: B008
    """Train a challenger on closed label windows and promote it only if it beats the champion."""
    quiet_worker_thread_timeouts()
    logger = get_run_logger()
    settings, spec = settings_and_spec(params.horizon_days)
    as_of = not_after_today("as_of", params.as_of or yesterday(settings.tz, flow_run.scheduled_start_time),
                            settings.tz)
    run_dir = settings.home / "runs" / f"retrain-{uuid.uuid4()}"
    extract_task(as_of)

    start, split = steps.plan_retrain(spec, as_of, params.train_days, params.cutoff_every_days)
    logger.info("retrain as of %s: %s", as_of, split.describe())
    features = fit_features_task(start, max(split.train))
    baseline_days = steps.baseline_cutoffs(spec, split, start, params.baseline_cutoff_every_days, as_of)
    logger.info("LightGBM baseline trains on %d cutoffs, %s to %s", len(baseline_days), min(baseline_days),
                max(baseline_days))
    try:
        parts = _snapshots(features, split, baseline_days, run_dir, as_of, params)
        shuffled = (_snapshots(features, split, baseline_days, run_dir / "shuffled", as_of, params,
                               params.seed) if params.run_ablation else None)
        fit_params = params.model_dump(mode="json")
        fit_params["device"] = settings.device
        fits = {name: fit_model_task.submit(name, snaps["train"], snaps["valid"], snaps["test"], features,
                                            fit_params, str(run_dir / "models"))
                for name, snaps in (("challenger", parts), ("shuffled_order", shuffled)) if snaps is not None}
        await_fits(fits, run_dir / "models" / STOP_FILE)
        model = fits["challenger"].result()
        baseline = baseline_task(parts["baseline_train"], parts["valid"], parts["test"], params.seed,
                                 str(run_dir / "probs"))
        served = _served(model, baseline, "challenger", params.blend_baseline, run_dir)
        probs = {"model": served["test_probs"], "baseline": baseline["test_probs"]}
        if shuffled is not None:
            ablation = fits["shuffled_order"].result()
            shuffled_baseline = baseline_task(shuffled["baseline_train"], shuffled["valid"], shuffled["test"],
                                              params.seed, str(run_dir / "shuffled" / "probs"))
            probs["shuffled_order"] = _served(ablation, shuffled_baseline, "shuffled_order",
                                              params.blend_baseline, run_dir)["test_probs"]
            probs["baseline_shuffled_order"] = shuffled_baseline["test_probs"]
            if params.blend_baseline:
                probs["lstm_shuffled_order"] = ablation["test_probs"]
        if params.blend_baseline:
            probs["lstm"] = model["test_probs"]
        champion = registry.champion_version(settings)
        if champion is not None:
            probs["champion"] = champion_task(parts["test"], _champion_test(
                settings, champion, split, run_dir, as_of, params.horizon_days), str(run_dir / "probs"))
        evaluation = evaluate_task(parts["test"], model["test_labels"], probs, split.kind, params.seed,
                                   str(run_dir))
        training_nights = parts["baseline_train"] if split.kind == "out_of_time" else None
        registered = register_task(served, evaluation, champion, start, max(split.test),
                                   params.promote_policy, params.min_ap_margin, served["test_probs"],
                                   parts["valid"], parts["test"], params.horizon_days, training_nights,
                                   params.baseline_negative_keep, registry.new_version())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = [{"model": name, **{k: round(v, 4) for k, v in metrics.items()}}
            for name, metrics in evaluation["evaluation"].items()]
    logger.info("registered %s as %s: %s", registered["version"], registered["status"], registered["reason"])
    return {**registered, "split": split.describe(), "baseline_train": [d.isoformat() for d in baseline_days],
            "blend_weight": served.get("blend_weight"), "evaluation": evaluation["evaluation"],
            "test_rows": evaluation["rows"], "test_positives": evaluation["positives"],
            "intervals": evaluation["intervals"],
            "ap_difference": evaluation["ap_difference"], "groups": evaluation["groups"],
            "evaluation_rows": rows, "training": model["training"] | {"history": None},
            "ablation_training": ablation["training"] | {"history": None} if shuffled is not None else None}


def await_fits(fits: dict[str, PrefectFuture], stop_file: Path, poll_s: float = 1.0) -> None:
    """Wait for every fit; the first to end other than completed (failed, crashed, cancelled) writes
    `stop_file`, which stops the others (a failed retrain then fails in seconds, not after its
    sibling's whole budget), and its error is raised."""
    pending, failed = dict(fits), None
    while pending:
        done = wait(list(pending.values()), timeout=poll_s).done
        for name, future in list(pending.items()):
            if future not in done:
                continue
            del pending[name]
            future.wait()  # records the final state; `state` alone may read a stale one from the API
            if failed is None and not future.state.is_completed():
                failed = name
                stop_file.parent.mkdir(parents=True, exist_ok=True)
                stop_file.write_text(f"the {name} fit of this retrain failed")
    if failed is not None:
        fits[failed].result()


def _snapshots(features: dict, split: steps.Split, baseline_days: list[date], run_dir: Path, as_of: date,
               params: RetrainParams, order_seed: int | None = None) -> dict[str, list[str]]:
    """train/valid/test shards of `split` and the baseline's denser baseline_train (negatives sampled
    in the two training parts only); with `order_seed`, the order ablation's shards of the same
    accounts and labels (see `riskmodel.ablation`)."""
    if split.kind == "out_of_time":
        windows = steps.snapshot_windows(split, baseline_days, params.negative_keep,
                                         params.baseline_negative_keep)
        return {name: training_shards_task(features, cutoffs_, str(run_dir / name), as_of, keep,
                                           params.seed, order_seed, params.horizon_days)
                for name, cutoffs_, keep in windows}
    everything = training_shards_task(features, split.train, str(run_dir / "all"), as_of,
                                      order_seed=order_seed, horizon_days=params.horizon_days)
    parts = hash_split_task(everything, str(run_dir / "split"))
    parts["train"] = downsample_task(parts["train"], str(run_dir / "train-sampled"), params.negative_keep,
                                     params.seed)
    parts["baseline_train"] = parts["train"]
    return parts


def _served(lstm: dict, baseline: dict, name: str, blend: bool, run_dir: Path) -> dict:
    """What would be served: the LSTM blended with the LightGBM baseline, or the LSTM alone."""
    return blend_task(name, lstm, baseline, str(run_dir / "models")) if blend else lstm


def _champion_test(settings: Settings, champion: str, split: steps.Split, run_dir: Path,
                   as_of: date, horizon_days: int | None) -> list[str]:
    """Test shards encoded with the champion's own frozen features, labelled like the challenger's."""
    manifest = registry.read_manifest(settings, champion)
    if split.kind != "out_of_time":
        everything = training_shards_task(manifest["features"], split.test, str(run_dir / "champion-all"),
                                          as_of, horizon_days=horizon_days)
        return hash_split_task(everything, str(run_dir / "champion-split"))["test"]
    return training_shards_task(manifest["features"], split.test, str(run_dir / "champion-test"), as_of,
                                horizon_days=horizon_days)
