"""Model registry: one artifact folder per version, its sha256 in `model_versions`, champion/challenger.

An artifact is `model.safetensors` (weights and buffers) plus `manifest.json` (model config,
the caller's FeatureState dict under "features", calibration, bands, training window,
metrics with the "evaluation" table, reference distributions for drift, library versions),
plus `baseline.txt` (LightGBM's text format) when the served model is a blend (manifest "blend",
see `riskmodel.blend`). Its sha256 (over all its files, see `combined_sha256`) is recorded at
registration; every load
re-hashes the bytes it actually deserialises and refuses a mismatch. No pickle anywhere.

Promotion rule (policy "if_better"): the first model becomes champion; a later one only when its
average precision beats the current champion's, measured on the same out-of-time window and for
the same horizon, by `promote_margin`. Policy "always" promotes and "never" does not, first model
included. `rollback` brings back the previous champion and retires the current one. The artifact part needs no
database (`save_artifact`, `load_artifact`); psycopg is imported only by the functions that
touch `model_versions`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from riskmodel.bands import BandPolicy, assign_bands
from riskmodel.batch import SequenceBatch
from riskmodel.blend import BOOSTER_FILE, Blend
from riskmodel.calibrate import Calibrator
from riskmodel.errors import ConfigError, ModelIntegrityError, RiskflowError, first_line
from riskmodel.model import ModelConfig, RiskLSTM

if TYPE_CHECKING:
    import psycopg

    from riskmodel.settings import Settings

log = logging.getLogger("riskflow.registry")

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
ARTIFACT_FILES = (MANIFEST, WEIGHTS)
OPTIONAL_FILES = (BOOSTER_FILE,)
FORMAT_VERSION = 1
PROMOTE_POLICIES = ("if_better", "always", "never")
# A version names its artifact's folder under the models folder: no separators, no "." or "..".
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RegistryError(RiskflowError):
    """A registry operation cannot proceed (unknown version, no champion, nothing to roll back to)."""


@dataclass
class LoadedModel:
    """A verified model ready to score: network, calibration, bands and the manifest it came with."""

    version: str
    sha256: str
    manifest: dict[str, Any]
    net: RiskLSTM
    calibrator: Calibrator
    bands: BandPolicy
    path: Path | None = None
    blend: Blend | None = None

    @property
    def runs_lstm(self) -> bool:
        """Whether serving needs the network: not when the blend gives the LSTM weight 0 (validation
        chose LightGBM alone), where its logits would only be multiplied by zero."""
        return self.blend is None or self.blend.weight > 0

    def served_from(self, lstm: Callable[[], np.ndarray], rows: int,
                    sources: Sequence[Path | SequenceBatch]) -> np.ndarray:
        """`served_logits` with the LSTM's logits from `lstm()`, called only when the scores depend on
        them (`runs_lstm`); zeros for the `rows` rows otherwise."""
        return self.served_logits(lstm() if self.runs_lstm else np.zeros(rows, np.float32), sources)

    def served_logits(self, lstm_logits: np.ndarray, sources: Sequence[Path | SequenceBatch]) -> np.ndarray:
        """What the calibrator maps to probabilities for the rows of shards or batches: the blend of
        the LSTM's logits with LightGBM when the model has one, else the LSTM's logits."""
        return lstm_logits if self.blend is None else self.blend.logits(lstm_logits, sources)

    def predict_logits(self, batch: SequenceBatch, device: str = "auto", **scoring: Any) -> np.ndarray:
        """Uncalibrated scores (`served_logits`) for every account of `batch`; the network runs only
        when they depend on it (`runs_lstm`). `scoring` goes to `riskmodel.score.score_logits`."""
        from riskmodel.score import score_logits

        return self.served_from(lambda: score_logits(self.net, batch, device=device, **scoring), len(batch),
                                [batch])

    def predict_proba(self, batch: SequenceBatch, device: str = "auto") -> np.ndarray:
        """Calibrated probabilities (float64) for every account of `batch`."""
        return self.calibrator.apply(self.predict_logits(batch, device=device))

    def band(self, probs: np.ndarray) -> np.ndarray:
        """Band names for calibrated probabilities under this model's stored policy."""
        return assign_bands(probs, self.bands)


@dataclass(frozen=True)
class Registration:
    """Outcome of `register_model`: where the artifact is and whether it became champion."""

    version: str
    sha256: str
    status: str
    path: Path
    reason: str


def new_version() -> str:
    """A sortable, unique-enough version name from the current UTC time."""
    return "v" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced an artifact (for the manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    import safetensors

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "safetensors": safetensors.__version__}
    with contextlib.suppress(PackageNotFoundError):
        versions["lightgbm"] = version("lightgbm")
    return versions


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """The artifact hash: sha256 over "name:sha256" lines of its files, in a fixed order (the optional
    files only when present, so artifacts without them keep their hash)."""
    names = ARTIFACT_FILES + tuple(n for n in OPTIONAL_FILES if n in file_hashes)
    text = "".join(f"{name}:{file_hashes[name]}\n" for name in names)
    return _digest(text.encode())


def artifact_files(folder: Path, registered: dict[str, str] | None = None) -> tuple[str, ...]:
    """The files an artifact consists of: the required ones, plus each optional one that is on disk
    or was `registered` (so a registered file that went missing is reported, not skipped)."""
    return ARTIFACT_FILES + tuple(n for n in OPTIONAL_FILES
                                  if (Path(folder) / n).exists() or n in (registered or {}))


def save_artifact(folder: Path, net: RiskLSTM, manifest: dict[str, Any],
                  blend: Blend | None = None) -> tuple[str, dict[str, str]]:
    """Write weights, manifest (and a blend's booster) into a new folder atomically (temp folder +
    rename); return the hashes of the bytes written (not re-read: what is registered is what this
    process wrote)."""
    folder = Path(folder)
    if folder.exists():
        raise RegistryError(f"artifact folder {folder} already exists; versions are immutable")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blobs = {WEIGHTS: save_safetensors(state, metadata={"format": str(FORMAT_VERSION)}),
             MANIFEST: json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()}
    if blend is not None:
        blobs[BOOSTER_FILE] = blend.booster_text.encode()
    for name, blob in blobs.items():
        (tmp / name).write_bytes(blob)
    tmp.rename(folder)
    files = {name: _digest(blob) for name, blob in blobs.items()}
    return combined_sha256(files), files


def load_artifact(path: Path, expected_sha256: str | None = None,
                  expected_files: dict[str, str] | None = None, version: str | None = None) -> LoadedModel:
    """Verify and load an artifact folder; a missing file or hash mismatch raises ModelIntegrityError.

    The bytes that are hashed are the bytes that are deserialised (no check-then-reopen race).
    """
    path = Path(path)
    blobs: dict[str, bytes] = {}
    names = artifact_files(path, expected_files)
    for name in names:
        try:
            blobs[name] = (path / name).read_bytes()
        except OSError as exc:
            raise ModelIntegrityError(f"model artifact {path / name} cannot be read: "
                                      f"{exc.strerror or exc}") from None
    hashes = {name: _digest(blob) for name, blob in blobs.items()}
    for name, expected in (expected_files or {}).items():
        if name in hashes and hashes[name] != expected:
            raise ModelIntegrityError(f"model artifact file {path / name} has sha256 {hashes[name]} "
                                      f"but {expected} was registered; refusing to load it")
    actual = combined_sha256(hashes)
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelIntegrityError(f"model artifact {path} ({', '.join(names)}) has sha256 "
                                  f"{actual} but {expected_sha256} was registered; refusing to load it")
    try:
        manifest = json.loads(blobs[MANIFEST])
        net = RiskLSTM(ModelConfig.from_dict(manifest["model"]))
        net.load_state_dict(load_safetensors(blobs[WEIGHTS]), strict=True)
        calibrator = Calibrator.from_dict(manifest["calibration"])
        bands = BandPolicy.from_dict(manifest["bands"])
        blend = None
        if "blend" in manifest:
            if BOOSTER_FILE not in blobs:
                raise KeyError(f"the manifest names a blend but {BOOSTER_FILE} is missing")
            blend = Blend.from_dict(manifest["blend"], blobs[BOOSTER_FILE].decode())
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelIntegrityError(f"model artifact {path} is malformed: {exc}") from None
    net.eval()
    return LoadedModel(version=version or manifest.get("version", path.name), sha256=actual,
                       manifest=manifest, net=net, calibrator=calibrator, bands=bands, path=path,
                       blend=blend)


def score_reference(probs: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Reference distribution of calibrated scores for drift (PSI): quantile edges and shares."""
    p = np.asarray(probs, dtype=np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1))) if p.size else np.array([0.0, 1.0])
    inner = edges[1:-1]
    counts = np.bincount(np.searchsorted(inner, p, side="right"), minlength=inner.size + 1)
    return {"edges": edges.tolist(), "fractions": (counts / max(p.size, 1)).tolist()}


def build_manifest(*, version: str, net: RiskLSTM, calibrator: Calibrator, bands: BandPolicy,
                   features: dict[str, Any], spec_hash: str, train_start: date, train_end: date,
                   evaluation: dict[str, dict[str, float]], metrics: dict[str, Any] | None = None,
                   reference: dict[str, Any] | None = None,
                   training: dict[str, Any] | None = None, blend: Blend | None = None) -> dict[str, Any]:
    """The manifest.json content; `evaluation` maps model|champion|baseline|shuffled_order to metrics."""
    return {
        "format": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "spec_hash": spec_hash,
        "model": net.config.to_dict(),
        "features": features,
        "calibration": calibrator.to_dict(),
        "bands": bands.to_dict(),
        "training_window": {"start": train_start.isoformat(), "end": train_end.isoformat(),
                            **(training or {})},
        "evaluation": evaluation,
        "metrics": {**(metrics or {}), "evaluation": evaluation},
        "reference": reference or {},
        "libraries": library_versions(),
        **({"blend": blend.to_dict()} if blend is not None else {}),
    }


def promotion_decision(evaluation: dict[str, dict[str, float]], current_champion: str | None,
                       evaluated_champion: str | None, margin: float, *, policy: str = "if_better",
                       horizons: tuple[int | None, int | None] = (None, None),
                       split: str = "out_of_time", champion_problem: str | None = None) -> tuple[bool, str]:
    """Whether a new model should become champion, and why (pure; see the module docstring).

    `policy` "always" and "never" decide alone; `horizons` is (this model's H, the evaluated
    champion's H) in days, and models of different horizons are never compared; nor are they on an
    in-period (`split` "account_hash") test, where the challenger saw the test weeks in training,
    nor when `champion_problem` says the champion's manifest could not be read (its H is unknown)."""
    if policy not in PROMOTE_POLICIES:
        raise ConfigError(f"promote_policy={policy!r} must be one of {PROMOTE_POLICIES}")
    if policy != "if_better":
        return policy == "always", f"promote_policy={policy}"
    if current_champion is None:
        return True, "first model: no champion yet"
    if evaluated_champion != current_champion or "champion" not in evaluation:
        return False, (f"not compared with the current champion {current_champion} on the same "
                       f"window (compared with {evaluated_champion}); stays challenger")
    if champion_problem:
        return False, (f"the champion's manifest cannot be read ({champion_problem}), so its horizon is "
                       "unknown and the two do not compare; stays challenger")
    if split != "out_of_time":
        return False, (f"the test window is in-period ({split} split): the challenger trained on the same "
                       "weeks, so its win over the champion does not count; stays challenger")
    mine_h, theirs_h = horizons
    if mine_h is not None and theirs_h is not None and mine_h != theirs_h:
        return False, (f"the champion predicts {theirs_h} days ahead and this model {mine_h}: their "
                       "average precisions do not compare; stays challenger")
    mine = float(evaluation["model"]["average_precision"])
    theirs = float(evaluation["champion"]["average_precision"])
    if mine > theirs + margin:
        return True, f"average precision {mine:.4f} beats champion's {theirs:.4f} by more than {margin}"
    return False, f"average precision {mine:.4f} does not beat champion's {theirs:.4f} by {margin}"


def _lock(conn: psycopg.Connection, settings: Settings) -> None:
    from riskmodel.db import lock_key

    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(f"registry:{settings.db_schema}"),))


def _table(settings: Settings) -> Any:
    from riskmodel.db import qualified

    return qualified(settings.db_schema, "model_versions")


def _champion(conn: psycopg.Connection, settings: Settings) -> str | None:
    from psycopg import sql

    row = conn.execute(sql.SQL("SELECT version FROM {} WHERE status = 'champion'")
                       .format(_table(settings))).fetchone()
    return row[0] if row else None


def _set_champion(conn: psycopg.Connection, settings: Settings, version: str) -> None:
    """Retire the current champion (if any) and make `version` champion, inside the caller's transaction."""
    from psycopg import sql

    table = _table(settings)
    conn.execute(sql.SQL("UPDATE {} SET status = 'retired', retired_at = now() "
                         "WHERE status = 'champion'").format(table))
    conn.execute(sql.SQL("UPDATE {} SET status = 'champion', promoted_at = now(), retired_at = NULL "
                         "WHERE version = %s").format(table), (version,))


def register_model(settings: Settings, *, net: RiskLSTM, calibrator: Calibrator, bands: BandPolicy,
                   features: dict[str, Any], spec_hash: str, train_start: date, train_end: date,
                   evaluation: dict[str, dict[str, float]], champion_version: str | None = None,
                   promote_margin: float = 0.0, metrics: dict[str, Any] | None = None,
                   reference: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                   version: str | None = None, blend: Blend | None = None,
                   policy: str = "if_better", split: str = "out_of_time") -> Registration:
    """Write the artifact, record it in `model_versions`, and promote it if `promotion_decision` says so.

    `champion_version` names the champion whose metrics are in `evaluation["champion"]`. Given a
    `version` that is registered already (a retried task whose first try committed), that
    registration is returned and nothing is written again."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from riskmodel.db import connect

    version = version or new_version()
    if not VERSION_NAME.fullmatch(version):
        raise ConfigError(f"model version {version!r}: use 1..64 letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit (it names the artifact's folder)")
    earlier = _registration(settings, version)
    if earlier is not None:
        return earlier
    folder = settings.models / version
    if folder.exists():
        log.warning("model %s: an earlier try wrote %s but its row never landed; writing it again",
                    version, folder)
        shutil.rmtree(folder)
    manifest = build_manifest(version=version, net=net, calibrator=calibrator, bands=bands,
                              features=features, spec_hash=spec_hash, train_start=train_start,
                              train_end=train_end, evaluation=evaluation, metrics=metrics,
                              reference=reference, training=training, blend=blend)
    sha, files = save_artifact(folder, net, manifest, blend)
    row_metrics = {**manifest["metrics"], "files": files}
    try:
        with connect(settings) as conn:
            _lock(conn, settings)
            current = _champion(conn, settings)
            theirs, problem = (_horizon(conn, settings, current) if current and current == champion_version
                               else (None, None))
            horizons = ((training or {}).get("horizon_days"), theirs)
            promote, reason = promotion_decision(evaluation, current, champion_version, promote_margin,
                                                 policy=policy, horizons=horizons, split=split,
                                                 champion_problem=problem)
            conn.execute(
                sql.SQL("INSERT INTO {} (version, status, train_start, train_end, spec_hash, metrics, "
                        "artifact_path, sha256) VALUES (%s, 'challenger', %s, %s, %s, %s, %s, %s)")
                .format(_table(settings)),
                (version, train_start, train_end, spec_hash, Jsonb(row_metrics),
                 str(folder.resolve()), sha))
            if promote:
                _set_champion(conn, settings, version)
    except Exception:
        if not _maybe_registered(settings, version):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Registration(version=version, sha256=sha, status="champion" if promote else "challenger",
                        path=folder, reason=reason)


def _horizon(conn: psycopg.Connection, settings: Settings, version: str) -> tuple[int | None, str | None]:
    """The prediction horizon H (days) a registered version was trained for (None when its manifest
    predates the field), and why the manifest could not be trusted, if it could not: unreadable, or
    not the bytes registered (the manifest alone, hashed, on the caller's connection: this runs
    under the registry lock)."""
    from psycopg import sql

    row = conn.execute(sql.SQL("SELECT artifact_path, metrics -> 'files' ->> %s FROM {} WHERE version = %s")
                       .format(_table(settings)), (MANIFEST, version)).fetchone()
    if row is None:
        return None, None
    try:
        blob = (Path(row[0]) / MANIFEST).read_bytes()
        manifest = json.loads(blob)
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {first_line(exc)}"
    actual = _digest(blob)
    if row[1] is not None and actual != row[1]:
        return None, f"{MANIFEST} has sha256 {actual} but {row[1]} was registered"
    return manifest.get("training_window", {}).get("horizon_days"), None


def _registration(settings: Settings, version: str) -> Registration | None:
    """The registration of `version` when `model_versions` has it, else None."""
    try:
        row = get_model(settings, version)
    except RegistryError:
        return None
    return Registration(version=version, sha256=row["sha256"], status=row["status"],
                        path=Path(row["artifact_path"]), reason="registered by an earlier try")


def _maybe_registered(settings: Settings, version: str) -> bool:
    """Whether `version` may be in `model_versions` after a failed registration: its artifact must be
    kept unless a fresh connection shows the row is not there (a lost commit may have landed)."""
    try:
        return _registration(settings, version) is not None
    except Exception:  # noqa: BLE001 - cannot tell: keeping a stray folder beats deleting a served model
        return True


_COLUMNS = ("version", "status", "created_at", "promoted_at", "retired_at", "train_start",
            "train_end", "spec_hash", "metrics", "artifact_path", "sha256")


def _rows(settings: Settings, where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    from psycopg import sql

    from riskmodel.db import connect

    query = sql.SQL("SELECT {} FROM {} {} ORDER BY created_at, version").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS), _table(settings), sql.SQL(where))
    with connect(settings) as conn:
        return [dict(zip(_COLUMNS, r, strict=True)) for r in conn.execute(query, params).fetchall()]


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, oldest first, with status, window, hash and headline metrics."""
    return _rows(settings)


def get_model(settings: Settings, version: str) -> dict[str, Any]:
    """The `model_versions` row of `version`; RegistryError if it is not registered."""
    rows = _rows(settings, "WHERE version = %s", (version,))
    if not rows:
        raise RegistryError(f"model version {version!r} is not registered")
    return rows[0]


def champion_version(settings: Settings) -> str | None:
    """The current champion's version, or None."""
    rows = _rows(settings, "WHERE status = 'champion'")
    return rows[0]["version"] if rows else None


def latest_challenger(settings: Settings) -> str | None:
    """The newest challenger registered after the current champion was promoted (for shadow scoring)."""
    rows = [r for r in _rows(settings) if r["status"] in ("challenger", "champion")]
    champion = next((r for r in rows if r["status"] == "champion"), None)
    fresh = [r for r in rows if r["status"] == "challenger"
             and (champion is None or r["created_at"] >= (champion["promoted_at"] or champion["created_at"]))]
    return fresh[-1]["version"] if fresh else None


def _load_row(row: dict[str, Any]) -> LoadedModel:
    return load_artifact(Path(row["artifact_path"]), expected_sha256=row["sha256"],
                         expected_files=(row["metrics"] or {}).get("files"), version=row["version"])


def load_version(settings: Settings, version: str) -> LoadedModel:
    """Load and verify a registered version."""
    return _load_row(get_model(settings, version))


def load_champion(settings: Settings) -> LoadedModel:
    """Load and verify the champion; RegistryError when none is registered."""
    rows = _rows(settings, "WHERE status = 'champion'")
    if not rows:
        raise RegistryError("no champion model is registered: train one first (`riskflow train`)")
    return _load_row(rows[0])


def read_manifest(settings: Settings, version: str) -> dict[str, Any]:
    """The verified manifest of a registered version."""
    return load_version(settings, version).manifest


def promote(settings: Settings, version: str) -> dict[str, Any]:
    """Make `version` champion by hand (its artifact is verified first); the old champion is retired."""
    from riskmodel.db import connect

    row = get_model(settings, version)
    if row["status"] == "champion":
        raise RegistryError(f"model version {version!r} is already the champion")
    _load_row(row)
    with connect(settings) as conn:
        _lock(conn, settings)
        previous = _champion(conn, settings)
        _set_champion(conn, settings, version)
    return {"champion": version, "retired": previous}


def rollback(settings: Settings) -> dict[str, Any]:
    """Bring back the most recently retired former champion; the current champion is retired."""
    from psycopg import sql

    from riskmodel.db import connect

    with connect(settings) as conn:
        _lock(conn, settings)
        current = _champion(conn, settings)
        row = conn.execute(
            sql.SQL("SELECT version FROM {} WHERE status = 'retired' AND promoted_at IS NOT NULL "
                    "AND version IS DISTINCT FROM %s ORDER BY retired_at DESC, version DESC LIMIT 1")
            .format(_table(settings)), (current,)).fetchone()
        if row is None:
            raise RegistryError("nothing to roll back to: no earlier champion is registered")
        _load_row(get_model(settings, row[0]))
        _set_champion(conn, settings, row[0])
    return {"champion": row[0], "retired": current}
