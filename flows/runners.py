"""Where a flow's fan-out runs: threads in the flow process, or a Dask cluster, chosen by settings.

A flow's task runner is fixed when the flow is decorated, but the choice belongs to the process
that runs it (CLI, `riskflow serve`, a worker's flow-run process). `SettingsTaskRunner` reads the
settings when the flow run starts and hands every submission to the runner they name.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from riskmodel.settings import Settings, load_settings


class WorkerThreadTimeoutFilter(logging.Filter):
    """Drops Prefect's per-task-run warning that a timeout cannot interrupt a blocking call in a
    worker thread. Every shard of every night runs in one, so it repeated for each; what it says is
    in the README's runbook once: the timeout fails the task run when the call returns."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that warning only."""
        message = record.getMessage()
        return not (message.startswith("Timeout of ") and "running in a worker thread" in message)


def quiet_worker_thread_timeouts() -> None:
    """Install `WorkerThreadTimeoutFilter` on Prefect's task-run logger (once per process)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, WorkerThreadTimeoutFilter) for f in logger.filters):
        logger.addFilter(WorkerThreadTimeoutFilter())


def task_runner_for(settings: Settings) -> TaskRunner:
    """The task runner `settings` ask for: Dask at `dask_address`, a local Dask cluster, or threads."""
    if settings.task_runner == "thread":
        quiet_worker_thread_timeouts()
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def scoring_placement(settings: Settings) -> contextlib.AbstractContextManager[Any]:
    """Context for submitting scoring tasks: on Dask with GPUs per task, claim the `GPU` resource."""
    if settings.task_runner == "dask" and settings.dask_gpus_per_task > 0:
        import dask

        return dask.annotate(resources={"GPU": settings.dask_gpus_per_task})
    return contextlib.nullcontext()


class SettingsTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """A task runner that becomes `task_runner_for(load_settings())` when the flow run starts."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: TaskRunner | None = None
        self._stack = contextlib.ExitStack()

    @property
    def inner(self) -> TaskRunner:
        """The runner chosen at start; using this runner outside a started flow run is an error."""
        if self._inner is None:
            raise RuntimeError("SettingsTaskRunner is used before its flow run started it")
        return self._inner

    def duplicate(self) -> SettingsTaskRunner:
        """A fresh, unstarted runner (Prefect duplicates the flow's runner for every run)."""
        return type(self)()

    def submit(self, task: Any, parameters: dict[str, Any],
               wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[Any]] | None = None) -> PrefectFuture[Any]:
        """Submit one task run to the chosen runner."""
        return self.inner.submit(task, parameters, wait_for, dependencies)

    def map(self, task: Any, parameters: dict[str, Any],
            wait_for: Iterable[PrefectFuture[Any]] | None = None) -> PrefectFutureList[Any]:
        """Submit one task run per mapped element to the chosen runner."""
        return self.inner.map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        """Cancel pending runs where the chosen runner supports it (threads do)."""
        cancel = getattr(self._inner, "cancel_all", None)
        if cancel is not None:
            cancel()

    def __enter__(self) -> SettingsTaskRunner:
        super().__enter__()
        self._stack.__enter__()
        self._inner = self._stack.enter_context(task_runner_for(load_settings()))
        self.logger.debug("flow fan-out runs on %s", type(self._inner).__name__)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.__exit__(*exc)
        finally:
            self._inner = None
            super().__exit__(*exc)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    __hash__ = TaskRunner.__hash__

    def __getattr__(self, name: str) -> Any:
        """Attributes of the chosen runner (e.g. Dask's `client_kwargs` for `get_dask_client`)."""
        inner = self.__dict__.get("_inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

