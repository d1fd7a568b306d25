"""A per-process cache of verified models, so each shard task does not reload and re-hash."""

from __future__ import annotations

import threading

from riskmodel import registry
from riskmodel.registry import LoadedModel
from tasks.context import settings_and_spec

_models: dict[tuple[str, str], LoadedModel] = {}
_lock = threading.Lock()


def remember_model(model: LoadedModel) -> None:
    """Keep an already verified model for later tasks in this process."""
    with _lock:
        _models[(model.version, model.sha256)] = model


def cached_model(version: str, sha256: str) -> LoadedModel:
    """The verified model `version`, loaded once per process; a changed sha256 is refused."""
    key = (version, sha256)
    with _lock:
        if key not in _models:
            settings, _ = settings_and_spec()
            model = registry.load_version(settings, version)
            if model.sha256 != sha256:
                raise registry.RegistryError(
                    f"model {version}: sha256 changed during the run ({sha256} -> {model.sha256})")
            _models[key] = model
        return _models[key]
