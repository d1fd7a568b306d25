"""Settings and spec as the CLI and flows load them (env, TOML, `--spec`)."""

from __future__ import annotations

from riskmodel.settings import Settings, load_settings
from riskmodel.spec import FeatureSpec, load_spec


def settings_and_spec() -> tuple[Settings, FeatureSpec]:
    """Load settings, then the feature spec they point at."""
    settings = load_settings()
    return settings, load_spec(settings.spec)
