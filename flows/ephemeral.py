"""Start Prefect's temporary API server early, while a CLI command imports its flow's libraries.

With no Prefect API configured, the first flow run of a process starts a local API server process
and waits until it answers (several seconds on a small machine). A CLI command that starts it on a
thread before importing torch, Polars and the flows lets the two proceed on separate cores; the
flow run then finds the server up. With an API configured (a real server, or the test harness),
nothing is started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("riskflow.cli")


def _temporary_server() -> object | None:
    """The process's temporary Prefect API server, or None when an API is configured."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


@contextmanager
def api_started_early() -> Iterator[None]:
    """Start the temporary Prefect API (when one will be needed) during the block, and wait for it
    at the end of the block (not when the block raises: the daemon thread is left behind). A failed
    start is left to the flow run, which starts it again and reports the error."""
    server = _temporary_server()
    if server is None:
        yield
        return

    def start() -> None:
        try:
            server.start()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the flow run retries the start and raises it
            log.debug("early start of Prefect's temporary API failed: %s", exc)

    thread = threading.Thread(target=start, name="prefect-api-early-start", daemon=True)
    thread.start()
    yield
    thread.join()
