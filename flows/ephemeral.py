"""Start Prefect's temporary API server early, while a CLI command imports its flow's libraries.

With no Prefect API configured, the first flow run of a process starts a local API server process
and waits until it answers (8 s on a slow 2-core machine, most of it the server importing itself).
Prefect's own starter lives in a module that takes seconds to import, so the server process is
spawned here first, with the command and environment Prefect uses, and the flow's libraries
(and that module) import while it starts on the other core. At the end of the block the running
server is handed to Prefect's `SubprocessASGIServer`, so the flow run uses it and Prefect stops it at
exit as its own. If it does not come up, it is stopped and the flow run starts one the usual way
(and reports any error). With an API configured (a real server, or the test harness), nothing is
started.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("riskflow.cli")

# What Prefect sets for its temporary server (SubprocessASGIServer._run_uvicorn_command): no UI.
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _temporary_server_needed() -> bool:
    """Whether a flow run in this process would start Prefect's temporary API server."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return not settings.api.url and settings.server.ephemeral.enabled


def _free_port() -> int:
    """A local TCP port nothing listens on now (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(port: int) -> subprocess.Popen[bytes]:
    """Prefect's temporary API server on `port`, as `SubprocessASGIServer` would run it."""
    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, **_SERVER_ENV, **get_current_settings().to_environment_variables(exclude_unset=True)}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"], env=env)


def _wait_healthy(process: subprocess.Popen[bytes], port: int) -> bool:
    """Wait until the server on `port` answers its health check; False if it exits or times out."""
    import httpx
    from prefect.settings import get_current_settings

    deadline = time.monotonic() + get_current_settings().server.ephemeral.startup_timeout_seconds
    with httpx.Client() as client:
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if client.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    return True
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server process that was not handed to Prefect."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _hand_to_prefect(process: subprocess.Popen[bytes], port: int) -> bool:
    """Make the healthy server on `port` the process's temporary API: Prefect's clients and flow runs
    use it, and Prefect stops it at exit. False (not handed over) when Prefect already runs one, or
    this one exited or did not answer in Prefect's startup timeout."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running or not _wait_healthy(process, port):
        log.debug("early Prefect API on port %d not used (exit code %s)", port, process.poll())
        return False
    server.port, server.server_process, server.running = port, process, True
    atexit.register(server.stop)
    return True


@contextmanager
def api_started_early() -> Iterator[None]:
    """Start the temporary Prefect API (when one will be needed) during the block, and wait for it at
    the end of the block. A server not handed to Prefect (the block raised, or the server failed) is
    stopped, and the flow run starts one itself and reports any error."""
    if not _temporary_server_needed():
        yield
        return
    port = _free_port()
    process = _spawn(port)
    handed = False
    try:
        yield
        handed = _hand_to_prefect(process, port)
    finally:
        if not handed:
            _stop(process)
