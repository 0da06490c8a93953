"""What a worker admits, shared by the connection layer (`connections.py`) and the app.

A request's declared body is admitted when its headers complete, before a byte of the body is
kept: over `SERVING_MAX_BODY_BYTES` it is refused (413), and when the bodies the worker already
holds plus this one would pass `SERVING_MAX_BUFFERED_BODY_BYTES` it is refused (503). A refused
request's body is dropped as it arrives, never buffered. Bodies without a declared length
(chunked) are admitted as they grow, by the app, from the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADMISSION = "serving.admission"
"""Key under the ASGI scope's `extensions` where the connection layer leaves its verdict."""


@dataclass(frozen=True)
class Limits:
    endpoint: str
    max_connections: int
    max_header_bytes: int
    header_timeout: float
    linger_seconds: float
    max_body_bytes: int


class BodyBudget:
    """Body bytes this worker holds at once, over every request being read or answered."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


@dataclass
class Worker:
    limits: Limits
    budget: BodyBudget


_worker: Worker | None = None


def configure(settings: Any) -> Worker:
    """This worker's limits and budget, from the app's settings (called when the app is created)."""
    global _worker
    limits = Limits(
        settings.endpoint,
        settings.max_connections,
        settings.max_header_bytes,
        settings.header_timeout_seconds,
        settings.linger_seconds,
        settings.max_body_bytes,
    )
    _worker = Worker(limits, BodyBudget(settings.max_buffered_body_bytes))
    return _worker


def worker() -> Worker:
    """The configured worker; from the environment if the app has not configured it yet."""
    if _worker is None:
        from services.serving.settings import ServingSettings

        return configure(ServingSettings())
    return _worker


def verdict(declared: int, limits: Limits, budget: BodyBudget) -> tuple[int, str, str] | None:
    """None when a body of `declared` bytes is admitted (and taken from the budget), else the refusal."""
    if declared > limits.max_body_bytes:
        return 413, "REQUEST_TOO_LARGE", f"the body is {declared} bytes; the limit is {limits.max_body_bytes}"
    if not budget.take(declared):
        return 503, "SERVER_BUSY", "too many request bytes in flight on this worker; retry shortly"
    return None
