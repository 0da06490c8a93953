"""Settings of the model server, from environment variables (prefix `SERVING_`)."""

from __future__ import annotations

import math
import os

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota when there is one, else the affinity mask."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return len(os.sched_getaffinity(0))


class ServingSettings(BaseSettings):
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
    """On SIGTERM, how long in-flight requests may take to finish."""

    @model_validator(mode="after")
    def _capture_needs_a_bucket(self) -> "ServingSettings":
        if self.capture_fraction > 0 and not self.capture_bucket:
            raise ValueError("SERVING_CAPTURE_BUCKET is required when SERVING_CAPTURE_FRACTION > 0")
        return self

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.model_alias}"
