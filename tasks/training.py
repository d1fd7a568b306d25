"""Prefect tasks around retraining: fit models, baseline, ablation, evaluate, register.

Models travel between tasks as artifact folders on disk (path + sha256), probabilities as
.npy files; nothing large goes through Prefect results.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from riskmodel import registry, retrain
from riskmodel.batch import SequenceBatch
from riskmodel.blend import BOOSTER_FILE
from riskmodel.candidate import fit_candidate, save_probs
from riskmodel.child import run_in_child
from riskmodel.evaluate import calibration_png, evaluate_models, pr_png, roc_png, train_baseline
from riskmodel.groundtruth import read_ground_truth
from riskmodel.monitor import add_training_nights, population_rows, reference_distributions, reference_rows
from tasks.context import settings_and_spec
from tasks.reporting import Progress, publish_images, publish_table
from tasks.retry import retry_on_transient

# Written into the fits' shared output folder when one fit fails; the others watch for it and stop.
STOP_FILE = "STOP"


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Log how long a retrain stage took (the per-stage timings of a retrain are read from these)."""
    started = time.monotonic()
    yield
    get_run_logger().info("stage %s: %.1f s", name, time.monotonic() - started)


def _sample_shards(shards: list[str], rows: np.ndarray) -> SequenceBatch:
    """Rows `rows` (sorted, numbered across `shards` in order) as one batch, read shard by shard so
    the whole window is never in memory at once."""
    parts, start = [], 0
    for path in shards:
        batch = SequenceBatch.load(Path(path))
        mine = rows[(rows >= start) & (rows < start + len(batch))]
        parts.append(batch.subset(mine - start))
        start += len(batch)
    return SequenceBatch.concat(parts)


def _shard_column(shards: list[str], name: str) -> np.ndarray:
    """One array of `shards` (e.g. "cutoff"), concatenated in shard order, read without the rest."""
    return np.concatenate([np.load(Path(p), allow_pickle=False)[name] for p in shards])


def drift_reference(probs: np.ndarray, shards: list[str], max_rows: int = 50_000,
                    training: list[str] | None = None, negative_keep: float = 1.0) -> dict[str, Any]:
    """Reference distributions for monitoring from a sample of about `max_rows` rows of `shards`
    (whose rows `probs` scores, in order) taken evenly within each night (`reference_rows`), each
    night kept apart too (`add_nights`); with `training` (snapshots that kept `negative_keep` of
    their negatives), their nights as well, in the population's class mix (`add_training_nights`)."""
    probs = np.asarray(probs)
    cutoffs = _shard_column(shards, "cutoff")
    if cutoffs.size != probs.size:
        raise ValueError(f"drift reference: {probs.size} scores for {cutoffs.size} shard rows")
    keep = reference_rows(cutoffs, max_rows)
    reference = reference_distributions(probs[keep], _sample_shards(shards, keep))
    if training:
        mix = population_rows(_shard_column(training, "label"), negative_keep)
        rows = mix[reference_rows(_shard_column(training, "cutoff")[mix], max_rows)]
        reference = add_training_nights(reference, _sample_shards(training, rows))
    return reference


@task(name="fit-model", timeout_seconds=6 * 3600, cache_policy=NO_CACHE)
def fit_model_task(name: str, train: list[str], valid: list[str], test: list[str], features: dict,
                   params: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train, calibrate and band one LSTM in its own process (so the challenger and the ablation can
    train at the same time, a core each); save it as a candidate artifact with its probabilities.
    A `STOP_FILE` written into `out_dir` (a sibling fit failed) ends the training early."""
    with _stage(f"fit-model {name}"):
        progress = Progress(f"training-{name}", f"Training {name}: epochs and steps done")
        bar = tqdm(total=100, desc=f"train {name}", unit="%", file=sys.stderr, leave=False,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

        started, budget_s = time.monotonic(), 60.0 * params["max_train_minutes"]

        def on_progress(epoch: int, step: int, total: int, metrics: dict[str, float]) -> None:
            epochs_done = (epoch - 1 + step / max(total, 1)) / max(params["epochs"], 1)
            done = min(1.0, max(epochs_done, (time.monotonic() - started) / budget_s))
            progress.update(done, f"{name}: epoch {epoch}, step {step}/{total}, {metrics}")
            bar.n = round(100 * done)
            bar.set_postfix({k: round(v, 4) for k, v in metrics.items()}, refresh=True)

        try:
            fitted = run_in_child(fit_candidate, {"name": name, "train": train, "valid": valid, "test": test,
                                                  "features": features, "params": params, "out_dir": out_dir},
                                  on_progress, stop_file=Path(out_dir) / STOP_FILE)
        finally:
            bar.close()
        progress.update(1.0, f"{name}: done ({fitted['training']['stopped']})")
        return fitted


@task(name="blend", timeout_seconds=3600, cache_policy=NO_CACHE)
def blend_task(name: str, lstm: dict[str, Any], baseline: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """The served model: a fitted LSTM (`fit_model_task`'s result) blended with the LightGBM baseline
    (`baseline_task`'s), calibrated and banded on validation; saved as a candidate like the LSTM."""
    with _stage(f"blend {name}"):
        model = registry.load_artifact(Path(lstm["path"]), lstm["sha256"])
        valid_logits, gbdt_valid = np.load(lstm["valid_logits"]), np.load(baseline["valid_probs"])
        blend, calibrator, bands = retrain.fit_served_blend(
            valid_logits, np.load(lstm["valid_labels"]), gbdt_valid,
            Path(baseline["booster"]).read_text(), baseline["best_iteration"], model.bands)
        probs = calibrator.apply(blend.combine(np.load(lstm["test_logits"]), np.load(baseline["test_probs"])))
        folder = Path(out_dir) / f"{name}-blend"
        manifest = registry.build_manifest(
            version=name, net=model.net, calibrator=calibrator, bands=bands,
            features=model.manifest["features"], spec_hash="candidate", train_start=date.min,
            train_end=date.min, evaluation={}, training=lstm["training"], blend=blend)
        sha, _ = registry.save_artifact(folder, model.net, manifest, blend)
        return {**lstm, "path": str(folder), "sha256": sha, "blend_weight": blend.weight,
                "test_probs": save_probs(Path(out_dir) / f"{name}-blend-test.npy", probs),
                "valid_probs": save_probs(Path(out_dir) / f"{name}-blend-valid.npy",
                                           calibrator.apply(blend.combine(valid_logits, gbdt_valid)))}


@task(name="downsample-negatives", cache_policy=NO_CACHE)
def downsample_task(paths: list[str], out_dir: str, keep: float, seed: int) -> list[str]:
    """Every positive and a seeded share of negatives of the training shards."""
    with _stage("downsample-negatives"):
        kept = retrain.downsample_negatives([Path(p) for p in paths], Path(out_dir), keep, seed)
        return [str(p) for p in kept]


@task(name="split-by-account-hash", cache_policy=NO_CACHE)
def hash_split_task(paths: list[str], out_dir: str) -> dict[str, list[str]]:
    """Single-cutoff fallback: stable train/valid/test split by account hash."""
    with _stage("split-by-account-hash"):
        parts = retrain.split_shards_by_hash([Path(p) for p in paths], Path(out_dir))
        return {k: [str(p) for p in v] for k, v in parts.items()}


@task(name="baseline", timeout_seconds=3 * 3600, cache_policy=NO_CACHE)
def baseline_task(train: list[str], valid: list[str], test: list[str], seed: int,
                  out_dir: str) -> dict[str, Any]:
    """LightGBM on static features and aggregates: its booster (text), validation and test probabilities."""
    with _stage("baseline"):
        fitted = train_baseline([Path(p) for p in train], [Path(p) for p in valid], seed=seed)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        booster = out / BOOSTER_FILE
        fitted.booster.save_model(str(booster), num_iteration=fitted.best_iteration)
        valid_probs, test_probs = (fitted.predict([Path(p) for p in paths]) for paths in (valid, test))
        return {"booster": str(booster), "best_iteration": fitted.best_iteration,
                "valid_probs": save_probs(out / "baseline-valid.npy", valid_probs),
                "test_probs": save_probs(out / "baseline-test.npy", test_probs)}


@task(name="champion-on-test", timeout_seconds=3600, cache_policy=NO_CACHE)
def champion_task(test: list[str], champion_test: list[str], out_dir: str) -> str:
    """The current champion's probabilities on the same test rows (built with its own features)."""
    with _stage("champion-on-test"):
        settings, _ = settings_and_spec()
        champion = registry.load_champion(settings)
        ours, theirs = retrain.row_keys([Path(p) for p in test]), retrain.row_keys(
            [Path(p) for p in champion_test])
        if not (np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])):
            raise registry.RegistryError("champion's test rows do not align with the challenger's")
        probs = retrain.model_proba(champion, [Path(p) for p in champion_test])
        return save_probs(Path(out_dir) / "champion-test.npy", probs)


@task(name="evaluate", timeout_seconds=3600, cache_policy=NO_CACHE)
def evaluate_task(test: list[str], labels_path: str, probs_paths: dict[str, str], split: str,
                  seed: int, out_dir: str) -> dict[str, Any]:
    """Side-by-side metrics with bootstrap intervals, per planted pattern; table and plot artifacts.
    The result's "curves" are the plots' paths under `out_dir`, for `register_task` to keep."""
    with _stage("evaluate"):
        settings, spec = settings_and_spec()
        labels = np.load(labels_path, allow_pickle=False)
        probs = {name: np.load(path, allow_pickle=False) for name, path in probs_paths.items()}
        accounts, _ = retrain.row_keys([Path(p) for p in test])
        groups = retrain.pattern_groups(accounts, read_ground_truth(settings, spec))
        report = evaluate_models(labels, probs, split=split, groups=groups, seed=seed, clusters=accounts)
        publish_table("retrain-evaluation", report.table(),
                      f"Test window ({split}): {report.rows} rows, {report.positives} positives; "
                      "value [95% bootstrap interval]")
        images = {"ROC": roc_png(labels, probs), "Precision-recall": pr_png(labels, probs),
                  "Calibration": calibration_png(labels, probs)}
        paths = publish_images("retrain-curves", images, Path(out_dir) / "plots",
                               "ROC, precision-recall and calibration on the test window")
        return report.to_dict() | {"curves": [str(p) for p in paths]}


def keep_curves(paths: list[str], folder: Path) -> list[str]:
    """Copy the evaluation's plots into `folder`; their new paths. Best effort: the model is already
    registered when this runs, so a full or read-only disk is logged, never raised (a retry of the
    registration would register the model again)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return [str(shutil.copy2(p, folder / Path(p).name)) for p in paths]
    except OSError as exc:
        get_run_logger().warning("could not keep the evaluation curves in %s: %s", folder, exc)
        return []


@task(name="register", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      cache_policy=NO_CACHE)
def register_task(candidate: dict[str, Any], evaluation: dict[str, Any], champion: str | None,
                  train_start: date, train_end: date, policy: str, margin: float,
                  test_probs_path: str, valid: list[str], test: list[str],
                  horizon_days: int | None = None, training_nights: list[str] | None = None,
                  negative_keep: float = 1.0, version: str | None = None) -> dict[str, Any]:
    """Register the challenger (artifact + sha256) and promote it if the policy says so; the
    manifest's `training` records the horizon and reporting lag its labels used. The evaluation's
    curves are copied to the reports folder of the new version (result "curves"). The drift reference
    comes from the validation and the test window (the candidate's "valid_probs" and the test
    probabilities) and, for the features, from the `training_nights` shards (which kept
    `negative_keep` of their negatives): their nights are what monitoring compares with. The flow
    names the `version` once, so a retry after a commit whose answer was lost finds the registration
    instead of making a second one."""
    with _stage("register"):
        settings, spec = settings_and_spec(horizon_days)
        model = registry.load_artifact(Path(candidate["path"]), candidate["sha256"])
        test_probs = np.load(test_probs_path, allow_pickle=False)
        valid_probs = np.load(candidate["valid_probs"], allow_pickle=False)
        registration = registry.register_model(
            settings, net=model.net, calibrator=model.calibrator, bands=model.bands,
            features=model.manifest["features"], spec_hash=spec.fingerprint(), train_start=train_start,
            train_end=train_end, evaluation=evaluation["evaluation"],
            champion_version=champion if "champion" in evaluation["evaluation"] else None,
            promote_margin=margin, policy=policy, version=version, blend=model.blend,
            split=evaluation.get("split", "out_of_time"),
            metrics={k: v for k, v in evaluation.items() if k not in ("evaluation", "curves")},
            reference=drift_reference(np.concatenate([valid_probs, test_probs]), [*valid, *test],
                                      training=training_nights, negative_keep=negative_keep),
            training=candidate["training"] | {"horizon_days": spec.horizon_days,
                                              "reporting_lag_days": spec.reporting_lag_days})
        return {"version": registration.version, "sha256": registration.sha256,
                "status": registration.status, "reason": registration.reason, "path": str(registration.path),
                "curves": keep_curves(evaluation.get("curves", []), settings.reports / registration.version)}
