"""Run the model server: `python -m services.serving` (settings from `SERVING_*` variables).

One uvicorn worker process per available CPU (`SERVING_WORKERS` overrides), uvloop and
httptools, no access log on the hot path. On SIGTERM uvicorn stops accepting connections and
lets in-flight requests finish for up to `SERVING_DRAIN_SECONDS`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import uvicorn

from services.serving.settings import ServingSettings


def main() -> None:
    settings = ServingSettings()
    metrics_dir = None
    if settings.workers > 1:
        # every worker writes its metrics here; /metrics in any worker sums them up
        metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "services.serving.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=int(settings.drain_seconds),
            timeout_keep_alive=30,
            backlog=2048,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
