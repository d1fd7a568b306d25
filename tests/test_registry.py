"""Registry: artifacts with sha256, promotion rule, promote/rollback, tampering refused."""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from model_helpers import order_batch

from riskmodel.bands import BandPolicy
from riskmodel.calibrate import Calibrator
from riskmodel.errors import ConfigError, ModelIntegrityError
from riskmodel.model import ModelConfig, RiskLSTM
from riskmodel.registry import (
    RegistryError,
    champion_version,
    get_model,
    latest_challenger,
    list_models,
    load_artifact,
    load_champion,
    load_version,
    promote,
    promotion_decision,
    read_manifest,
    register_model,
    rollback,
    save_artifact,
)
from riskmodel.settings import Settings

METRICS = ("roc_auc", "average_precision", "ks", "recall_at_1pct_fpr", "precision_at_top_1pct", "brier")


def _net(seed: int) -> RiskLSTM:
    torch.manual_seed(seed)
    net = RiskLSTM(ModelConfig.for_batch(order_batch(2, seq_len=8), [6], [4], hidden=8))
    net.set_agg_stats(order_batch(50, seq_len=8).agg)
    return net.eval()


def _evaluation(ap: float, champion_ap: float | None = None) -> dict[str, dict[str, float]]:
    def row(value: float) -> dict[str, float]:
        return {k: value if k == "average_precision" else 0.5 for k in METRICS}

    out = {"model": row(ap), "baseline": row(0.1), "shuffled_order": row(0.05)}
    if champion_ap is not None:
        out["champion"] = row(champion_ap)
    return out


def _register(settings: Settings, seed: int, ap: float, champion_ap: float | None = None,
              champion: str | None = None, margin: float = 0.01, policy: str = "if_better",
              horizon: int = 30):
    return register_model(
        settings, net=_net(seed), calibrator=Calibrator("temperature", {"temperature": 2.0, "bias": -1.0}),
        bands=BandPolicy(mode="probability", high=0.5, medium=0.2), features={"vocab": {"mcc": ["x"]}},
        spec_hash="a" * 64, train_start=date(2026, 1, 1), train_end=date(2026, 5, 31),
        evaluation=_evaluation(ap, champion_ap), champion_version=champion, promote_margin=margin,
        reference={"score": {"edges": [0, 1], "fractions": [1.0]}}, version=f"v{seed}", policy=policy,
        training={"horizon_days": horizon})


def test_promotion_rule_and_rollback(initialised: Settings) -> None:
    first = _register(initialised, 1, ap=0.30)
    assert first.status == "champion" and champion_version(initialised) == "v1"
    weak = _register(initialised, 2, ap=0.305, champion_ap=0.30, champion="v1")
    assert weak.status == "challenger" and "does not beat" in weak.reason
    stale = _register(initialised, 3, ap=0.90, champion_ap=0.30, champion="v0")
    assert stale.status == "challenger" and "same window" in stale.reason
    assert latest_challenger(initialised) == "v3"
    strong = _register(initialised, 4, ap=0.40, champion_ap=0.30, champion="v1")
    assert strong.status == "champion"
    statuses = {r["version"]: r["status"] for r in list_models(initialised)}
    assert statuses == {"v1": "retired", "v2": "challenger", "v3": "challenger", "v4": "champion"}
    assert rollback(initialised) == {"champion": "v1", "retired": "v4"}
    assert load_champion(initialised).version == "v1"
    assert {r["version"]: r["status"] for r in list_models(initialised)}["v4"] == "retired"
    assert promote(initialised, "v2") == {"champion": "v2", "retired": "v1"}
    with pytest.raises(RegistryError, match="already the champion"):
        promote(initialised, "v2")
    with pytest.raises(RegistryError, match="'v9' is not registered"):
        load_version(initialised, "v9")


def test_manifest_holds_evaluation_features_and_hash(initialised: Settings) -> None:
    reg = _register(initialised, 1, ap=0.3)
    manifest = read_manifest(initialised, "v1")
    assert set(manifest["evaluation"]) == {"model", "baseline", "shuffled_order"}
    assert all(set(v) == set(METRICS) for v in manifest["evaluation"].values())
    assert manifest["features"] == {"vocab": {"mcc": ["x"]}}
    assert manifest["training_window"]["start"] == "2026-01-01"
    assert "torch" in manifest["libraries"]
    row = list_models(initialised)[0]
    assert row["sha256"] == reg.sha256 and len(reg.sha256) == 64
    assert not list(Path(reg.path).glob("*.pkl")) and sorted(p.name for p in reg.path.iterdir()) == [
        "manifest.json", "model.safetensors"]


def test_tampered_artifact_is_refused_and_champion_untouched(initialised: Settings) -> None:
    _register(initialised, 1, ap=0.3)
    challenger = _register(initialised, 2, ap=0.2, champion_ap=0.3, champion="v1")
    weights = challenger.path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError) as err:
        promote(initialised, "v2")
    assert "model.safetensors" in str(err.value) and "registered" in str(err.value)
    registered = json.loads((challenger.path / "manifest.json").read_text())["version"]
    assert registered == "v2"
    assert champion_version(initialised) == "v1"
    assert load_champion(initialised).version == "v1"
    champion_manifest = Path(load_champion(initialised).path) / "manifest.json"
    champion_manifest.write_text(champion_manifest.read_text().replace('"v1"', '"v1 "'))
    with pytest.raises(ModelIntegrityError, match="manifest.json has sha256"):
        load_champion(initialised)
    assert champion_version(initialised) == "v1"


def test_rollback_without_history_is_refused(initialised: Settings) -> None:
    with pytest.raises(RegistryError, match="no champion"):
        load_champion(initialised)
    _register(initialised, 1, ap=0.3)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(initialised)


def test_artifact_round_trip_without_database(tmp_path: Path) -> None:
    net = _net(5)
    manifest = {"version": "x", "model": net.config.to_dict(),
                "calibration": Calibrator().to_dict(),
                "bands": BandPolicy(mode="probability", high=0.5, medium=0.1).to_dict()}
    sha, files = save_artifact(tmp_path / "x", net, manifest)
    loaded = load_artifact(tmp_path / "x", sha)
    batch = order_batch(20, seq_len=8)
    with torch.no_grad():
        from riskmodel.model import batch_tensors

        expected = net(**batch_tensors(batch)).numpy()
    assert np.array_equal(loaded.predict_logits(batch, device="cpu"), expected)
    with pytest.raises(ModelIntegrityError, match=f"but {'0' * 64} was registered"):
        load_artifact(tmp_path / "x", "0" * 64)
    with pytest.raises(RegistryError, match="immutable"):
        save_artifact(tmp_path / "x", net, manifest)
    assert set(files) == {"manifest.json", "model.safetensors"}


def test_promotion_decision_is_pure() -> None:
    assert promotion_decision(_evaluation(0.1), None, None, 0.5)[0]
    assert promotion_decision(_evaluation(0.41, 0.30), "a", "a", 0.1)[0]
    assert not promotion_decision(_evaluation(0.40, 0.30), "a", "a", 0.1)[0]
    assert promotion_decision(_evaluation(0.41, 0.30), "a", "a", 0.1, horizons=(30, 30))[0]
    other = promotion_decision(_evaluation(0.41, 0.30), "a", "a", 0.1, horizons=(14, 30))
    assert other == (False, "the champion predicts 30 days ahead and this model 14: their average precisions "
                            "do not compare; stays challenger")
    never = promotion_decision(_evaluation(0.1), None, None, 0.0, policy="never")
    assert never == (False, "promote_policy=never")
    assert promotion_decision(_evaluation(0.1, 0.9), "a", "b", 0.0, policy="always")[0]
    in_period = promotion_decision(_evaluation(0.9, 0.1), "a", "a", 0.0, split="account_hash")
    assert not in_period[0] and "in-period" in in_period[1]
    assert promotion_decision(_evaluation(0.9), None, None, 0.0, split="account_hash")[0]
    with pytest.raises(ConfigError, match="promote_policy='sometimes'"):
        promotion_decision(_evaluation(0.1), None, None, 0.0, policy="sometimes")


def test_policies_and_horizons_in_the_registry_and_a_retried_registration(initialised: Settings) -> None:
    never = _register(initialised, 11, ap=0.9, policy="never")
    assert never.status == "challenger" and champion_version(initialised) is None
    first = _register(initialised, 12, ap=0.3)
    assert first.status == "champion"
    shorter = _register(initialised, 13, ap=0.9, champion_ap=0.3, champion="v12", horizon=14)
    assert shorter.status == "challenger" and "do not compare" in shorter.reason
    weaker = _register(initialised, 14, ap=0.1, champion_ap=0.3, champion="v12", policy="always")
    assert weaker.status == "champion" and champion_version(initialised) == "v14"
    files = {p.name: p.stat().st_mtime_ns for p in weaker.path.iterdir()}
    again = _register(initialised, 14, ap=0.1, champion_ap=0.3, champion="v12", policy="always")
    assert (again.version, again.sha256, again.status) == ("v14", weaker.sha256, "champion")
    assert "earlier try" in again.reason
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == files
    assert [r["version"] for r in list_models(initialised)].count("v14") == 1
    leftover = initialised.models / "v15"
    leftover.mkdir(parents=True)
    (leftover / "manifest.json").write_text("{}")
    retried = _register(initialised, 15, ap=0.1, policy="never")
    assert retried.status == "challenger" and load_version(initialised, "v15").version == "v15"


def test_models_cli_list_show_promote_rollback(initialised: Settings, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", initialised.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(initialised.home))
    _register(initialised, 1, ap=0.3)
    _register(initialised, 2, ap=0.2, champion_ap=0.3, champion="v1")
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["status"], r["average_precision"]) for r in rows] == [
        ("v1", "champion", 0.3), ("v2", "challenger", 0.2)]
    assert main(["models", "show", "v2", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert set(manifest["evaluation"]) == {"model", "champion", "baseline", "shuffled_order"}
    assert set(manifest["evaluation"]["champion"]) == set(METRICS)
    assert main(["models", "promote", "v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"champion": "v2", "retired": "v1"}
    assert main(["models", "rollback"]) == 0
    assert "v1 is champion again" in capsys.readouterr().out
    assert main(["models", "show", "nope"]) == 2
    assert "'nope' is not registered" in capsys.readouterr().err


def _flip_last_byte(path: Path) -> None:
    """Tamper with a file: invert its last byte."""
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_a_registration_whose_insert_fails_removes_its_new_folder(initialised: Settings) -> None:
    """An INSERT refused by a constraint never committed: the artifact written for it is removed."""
    _register(initialised, 1, ap=0.3)
    with pytest.raises(psycopg.errors.NotNullViolation, match="spec_hash"):
        register_model(initialised, net=_net(2), calibrator=Calibrator(),
                       bands=BandPolicy(mode="probability", high=0.5, medium=0.2), features={},
                       spec_hash=None,  # type: ignore[arg-type]  # breaks NOT NULL
                       train_start=date(2026, 1, 1), train_end=date(2026, 5, 31),
                       evaluation=_evaluation(0.9), version="v2", policy="always")
    assert not (initialised.models / "v2").exists()
    assert sorted(p.name for p in initialised.models.iterdir()) == ["v1"], "no temp folder left either"
    assert [r["version"] for r in list_models(initialised)] == ["v1"]
    assert champion_version(initialised) == "v1"
    assert _register(initialised, 2, ap=0.1, policy="never").status == "challenger"


def test_a_registration_beaten_to_its_version_keeps_the_folder(initialised: Settings) -> None:
    """When the failed INSERT's version is in the table after all, the folder is kept, not deleted."""
    from riskmodel.db import connect, lock_key

    errors: list[BaseException] = []

    def register() -> None:
        try:
            _register(initialised, 7, ap=0.3)
        except BaseException as exc:  # noqa: BLE001 - checked by the test thread
            errors.append(exc)

    thread = threading.Thread(target=register)
    with connect(initialised) as holder, connect(initialised, autocommit=True) as watcher:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(f"registry:{initialised.db_schema}"),))
        thread.start()
        deadline = time.monotonic() + 60
        while not watcher.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                  "WHERE d.datname = current_database() AND l.locktype = 'advisory' "
                                  "AND NOT l.granted").fetchone()[0]:
            assert time.monotonic() < deadline, "the registration never waited on the registry lock"
            time.sleep(0.05)
        holder.execute("INSERT INTO riskflow.model_versions (version, status, spec_hash, artifact_path, "
                       "sha256) VALUES ('v7', 'challenger', %s, '/elsewhere/v7', %s)", ("b" * 64, "0" * 64))
        holder.commit()
    thread.join(60)
    assert not thread.is_alive() and len(errors) == 1
    assert isinstance(errors[0], psycopg.errors.UniqueViolation)
    kept = sorted(p.name for p in (initialised.models / "v7").iterdir())
    assert kept == ["manifest.json", "model.safetensors"]
    assert get_model(initialised, "v7")["artifact_path"] == "/elsewhere/v7"


def test_rollback_to_a_tampered_former_champion_is_refused(initialised: Settings) -> None:
    """Rolling back to a champion whose weights changed raises and leaves every status as it was."""
    old = _register(initialised, 1, ap=0.3)
    _register(initialised, 2, ap=0.5, champion_ap=0.3, champion="v1")
    keys = ("version", "status", "promoted_at", "retired_at")
    before = [tuple(r[k] for k in keys) for r in list_models(initialised)]
    assert [b[1] for b in before] == ["retired", "champion"]
    _flip_last_byte(old.path / "model.safetensors")
    with pytest.raises(ModelIntegrityError, match=r"v1/model\.safetensors has sha256 .* was registered"):
        rollback(initialised)
    assert [tuple(r[k] for k in keys) for r in list_models(initialised)] == before
    assert load_champion(initialised).version == "v2"


def test_cached_model_refuses_a_changed_sha256(initialised: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A version asked for with another sha256 than the run started with is refused, naming both."""
    from tasks.models import cached_model

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", initialised.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(initialised.home))
    reg = _register(initialised, 1, ap=0.3)
    first = cached_model("v1", reg.sha256)
    assert first.version == "v1" and first.sha256 == reg.sha256
    assert cached_model("v1", reg.sha256) is first
    stale = "0" * 64
    changed = f"model v1: sha256 changed during the run \\({stale} -> {reg.sha256}\\)"
    with pytest.raises(RegistryError, match=changed):
        cached_model("v1", stale)
