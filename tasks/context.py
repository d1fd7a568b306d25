"""Settings and spec as tasks, flows and the CLI load them (env, TOML, `--spec`); in `tasks` so that
dependencies point one way: flows -> tasks -> riskmodel."""

from __future__ import annotations

from riskmodel.settings import Settings, load_settings
from riskmodel.spec import FeatureSpec, load_spec


def settings_and_spec(horizon_days: int | None = None) -> tuple[Settings, FeatureSpec]:
    """Load settings, then the feature spec they point at; `horizon_days` (a retrain parameter)
    replaces the spec's prediction horizon H."""
    settings = load_settings()
    spec = load_spec(settings.spec)
    if horizon_days is not None and horizon_days != spec.horizon_days:
        spec = spec.model_copy(update={"horizon_days": horizon_days})
    return settings, spec
