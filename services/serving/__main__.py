"""Run the model server: `python -m services.serving` (settings from `SERVING_*` variables).

One uvicorn worker process per available CPU (`SERVING_WORKERS` overrides), each with its own
listening socket on the port (`listeners.py`), uvloop, httptools behind the connection bounds of
`connections.py`, no access log on the hot path. SIGTERM drains
(`lifecycle.py`): not ready at once, still serving for `SERVING_SHUTDOWN_DELAY_SECONDS`, then
in-flight requests get `SERVING_DRAIN_SECONDS` to finish.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import tempfile

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from services.serving.listeners import per_worker_listeners
from services.serving.settings import ServingSettings

FD_MARGIN = 256
"""File descriptors a worker needs besides its client connections (model files, S3, logs, the loop)."""


def raise_fd_limit(max_connections: int) -> None:
    """Make sure `max_connections` sockets fit in the file-descriptor limit of each worker."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(
                f"SERVING_MAX_CONNECTIONS={max_connections} needs {needed} file descriptors per worker; "
                f"the hard limit is {hard}: lower SERVING_MAX_CONNECTIONS or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def main() -> None:
    settings = ServingSettings()
    raise_fd_limit(settings.max_connections)
    metrics_dir = None
    if settings.workers > 1:
        # every worker writes its metrics here; /metrics in any worker sums them up
        metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = uvicorn.Config(
        "services.serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="services.serving.connections:GuardedProtocol",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        timeout_keep_alive=math.ceil(settings.keepalive_seconds),
        backlog=settings.backlog,
    )
    try:
        if settings.workers == 1:
            server = uvicorn.Server(config)
            server.run()
            if not server.started:
                sys.exit(STARTUP_FAILURE)
        else:
            # uvicorn's supervisor as `uvicorn.run` uses it (restarts a dead worker, forwards SIGTERM to
            # every worker), given a listener each worker binds itself instead of the parent's one socket
            Multiprocess(config, sockets=per_worker_listeners(settings.host, settings.port)).run()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
