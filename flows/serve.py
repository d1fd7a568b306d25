"""The three deployments as code, for `riskflow serve` (one process, no work pool needed).

`deploy/prefect.yaml` describes the same deployments for a Prefect server with workers.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.backfill import backfill
from flows.nightly_scoring import nightly_scoring
from flows.retrain import retrain
from riskmodel.errors import ConfigError, first_line
from riskmodel.settings import Settings
from tasks.monitoring import DRIFT_EVENT


def _cron(settings: Settings, name: str) -> Cron:
    """The schedule of setting `name` in the business zone; a cron Prefect refuses names the setting."""
    try:
        return Cron(getattr(settings, name), timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(f"RISKFLOW_{name.upper()}: {first_line(exc)}") from None


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """nightly-scoring (cron, one at a time), weekly-retrain (cron + drift event), backfill (manual)."""
    return [
        nightly_scoring.to_deployment(
            name="nightly-scoring", schedules=[_cron(settings, "nightly_cron")],
            concurrency_limit=1, tags=["riskflow", "scoring"],
            description="Score every active account for the business date (default yesterday)."),
        retrain.to_deployment(
            name="weekly-retrain", schedules=[_cron(settings, "retrain_cron")],
            concurrency_limit=1, tags=["riskflow", "training"],
            triggers=[DeploymentEventTrigger(name="retrain on drift", expect={DRIFT_EVENT},
                                             match={"prefect.resource.id": "riskflow.monitor.*"})],
            description="Train a challenger; promote it only if it beats the champion."),
        backfill.to_deployment(
            name="backfill", tags=["riskflow", "scoring"],
            description="Score a range of dates with bounded concurrency."),
    ]
