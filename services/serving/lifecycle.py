"""Stopping without losing a request: SIGTERM starts a drain, not an exit.

On the first SIGTERM a worker turns `/readyz` (and `/ping`, `/health`) to 503 at once, keeps
accepting and answering for `SERVING_SHUTDOWN_DELAY_SECONDS` with `Connection: close` on every
response (clients reconnect, to another pod once the load balancer has dropped this one), and
only then hands the signal to uvicorn, which stops accepting and gives in-flight requests
`SERVING_DRAIN_SECONDS` to finish. On the cluster a preStop sleep runs before the SIGTERM
(components/serving.py), so the load balancer has deregistered the pod before the server even
starts draining. SIGINT (Ctrl-C) stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

log = logging.getLogger("serving")


class Draining:
    """Whether this worker process is shutting down (read by the app on every response)."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def start(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


DRAINING = Draining()


def delay_sigterm(delay_seconds: float) -> None:
    """Put the drain in front of uvicorn's SIGTERM handler (call from the worker's event loop,
    after uvicorn installed its handlers: in the lifespan startup)."""
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return  # not under uvicorn (e.g. the app driven in-process): nothing to delay
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if DRAINING.active:
            return  # one drain, however many SIGTERMs (a process group and a supervisor both send one)
        DRAINING.start()
        loop.call_soon_threadsafe(
            log.info, "SIGTERM: not ready; serving for %.1fs more, then finishing in-flight requests", delay_seconds
        )
        loop.call_soon_threadsafe(loop.call_later, delay_seconds, uvicorn_handler, sig, None)

    signal.signal(signal.SIGTERM, on_sigterm)
