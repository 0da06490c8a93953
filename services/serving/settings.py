"""Settings of the model server, from environment variables (prefix `SERVING_`)."""

from __future__ import annotations

import math
import os

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.env_settings import StrictEnvSettings


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota when there is one, else the affinity mask."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return len(os.sched_getaffinity(0))


class ServingSettings(StrictEnvSettings):
    """`SERVING_*` variables; an unknown one stops the server at start (services/env_settings.py)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore", protected_namespaces=())

    model_name: str = Field(min_length=1)
    """Registered model served, as `models:/<model_name>@<model_alias>`."""
    model_alias: str = "champion"
    endpoint: str = "default"
    """Endpoint name: label on metrics and prefix of captured records."""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default_factory=available_cpus, ge=1, le=64)
    """Worker processes; defaults to the CPUs available (the platform sets it from the CPU request)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Larger requests get 413."""
    max_batch_rows: int = Field(default=512, ge=1)
    """Most rows the batcher sends to the model in one call."""
    batch_wait_ms: float = Field(default=1.0, ge=0, le=100)
    """How long the batcher waits for more requests once it has one (latency it may add)."""
    poll_seconds: float = Field(default=30.0, gt=0)
    """How often the alias is checked for a new version."""
    capture_fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of requests whose inputs and predictions are written to S3 for drift analysis."""
    capture_bucket: str | None = None
    capture_prefix: str = "captures"
    capture_flush_records: int = Field(default=500, ge=1)
    capture_flush_seconds: float = Field(default=30.0, gt=0)
    s3_endpoint_url: str | None = None
    """Only for local runs against moto; on AWS the default endpoint is used."""
    path_prefix: str = Field(default="", pattern=r"^(/[a-z0-9-]+)?$")
    """Also answer under this prefix (`/<endpoint>/invocations`), for a load balancer routing by path."""
    tracking_username: str | None = None
    tracking_password_secret_arn: str | None = None
    """Secrets Manager secret with the tracking server password of `tracking_username` (read at start)."""
    region: str | None = None
    drift_window: int = Field(default=1000, ge=10)
    """Live rows compared with the training data's reference statistics."""
    drift_min_rows: int = Field(default=200, ge=1)
    """No drift score is reported until the window holds this many rows."""
    drift_interval_seconds: float = Field(default=15.0, gt=0)
    drain_seconds: float = Field(default=20.0, ge=0)
    """After the shutdown delay, how long in-flight requests may take to finish."""
    shutdown_delay_seconds: float = Field(default=5.0, ge=0, le=300)
    """On SIGTERM, readiness turns false at once but connections are still accepted and served for
    this long (each response then says `Connection: close`), so clients and load balancers that
    have not yet seen the pod go can move off it without a refused or reset connection."""
    model_threads: int = Field(default=4, ge=1, le=64)
    """Threads per worker running model calls (all model work runs off the event loop). Batched
    paths use one at a time; the per-request pyfunc path runs up to this many requests at once."""
    batching: bool = True
    """Batch concurrent requests into one model call when the model's predictions are verified
    row-independent. Off: every request is its own model call (bit-identical to predicting it alone)."""
    max_connections: int = Field(default=1000, ge=16, le=100_000)
    """Open connections per worker. At the cap, the longest-idle connection that has no request in
    progress is closed to make room; with none, the new connection is closed at once."""
    backlog: int = Field(default=1024, ge=16, le=65_535)
    """Connections the kernel queues before the workers accept them (capped by net.core.somaxconn)."""
    max_header_bytes: int = Field(default=32_768, ge=1024, le=1_048_576)
    """Request line and headers larger than this get 431 and the connection is closed."""
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """A new connection, or a request once its first byte arrived, must complete its headers in this time."""
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """A request body must arrive in full within this time after its headers (else 408, connection closed)."""
    keepalive_seconds: float = Field(default=65.0, gt=0, le=3600)
    """Idle keep-alive connections are closed after this; longer than the ALB's 60 s idle timeout, so
    the load balancer, not the server, closes idle connections (no 502 on a race)."""
    max_buffered_body_bytes: int = Field(default=16_777_216, ge=1_048_576)
    """Request bytes a worker holds at once over all requests being read or answered; past it, new
    requests get 503 at once (from their declared length, before any body is read)."""
    linger_seconds: float = Field(default=2.0, ge=0, le=60)
    """After rejecting a request whose body was not read (413, 408, 503), the connection half-closes and
    drops what the client still sends for up to this long, so the client reads the answer instead of a reset."""

    @model_validator(mode="after")
    def _capture_needs_a_bucket(self) -> "ServingSettings":
        if self.capture_fraction > 0 and not self.capture_bucket:
            raise ValueError("SERVING_CAPTURE_BUCKET is required when SERVING_CAPTURE_FRACTION > 0")
        return self

    @model_validator(mode="after")
    def _body_fits_the_buffer(self) -> "ServingSettings":
        if self.max_body_bytes > self.max_buffered_body_bytes:
            raise ValueError(
                f"SERVING_MAX_BODY_BYTES ({self.max_body_bytes}) must not exceed SERVING_MAX_BUFFERED_BODY_BYTES "
                f"({self.max_buffered_body_bytes}): a request of the largest allowed size could never be read"
            )
        return self

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.model_alias}"
