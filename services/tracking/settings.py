"""Settings of the tracking server, from environment variables (prefix `TRACKING_`).

Secrets arrive one of two ways: directly (`TRACKING_ADMIN_PASSWORD`, for local runs and
tests) or as Secrets Manager ARNs (`TRACKING_ADMIN_PASSWORD_SECRET_ARN`), which the
entrypoint resolves with the pod's own IAM role at start-up, so no Kubernetes Secret and no
stack file ever holds them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WEAK_PASSWORDS = {"password", "password1234", "admin", "changeme", "mlflow"}


class TrackingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKING_", extra="ignore")

    backend_store_uri: str = "sqlite:////tmp/mlflow.db"
    """Runs and the model registry: `postgresql://...` on the platform, sqlite locally."""
    auth_database_uri: str = "sqlite:////tmp/mlflow-auth.db"
    """Users and permissions of MLflow's basic-auth app (a second database on the same Postgres)."""
    database_secret_arn: str | None = None
    """RDS-managed secret with the database `username` and `password`; filled into both URIs' `{user}`/`{password}`."""
    artifacts_destination: str = "s3://mlflow-artifacts/mlflow"
    """Where the server stores artifacts it proxies (`--serve-artifacts`): clients need no S3 credentials."""
    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=1, le=65535)
    workers: int = Field(default=2, ge=1, le=16)
    allowed_hosts: str = "localhost,127.0.0.1"
    """Host headers accepted (DNS-rebinding protection); the platform adds its internal hostname."""
    cors_allowed_origins: str = "http://localhost:5000,http://127.0.0.1:5000"
    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    admin_password_secret_arn: str | None = None
    flask_secret_key: SecretStr | None = None
    flask_secret_key_secret_arn: str | None = None
    reader_username: str = "serving"
    """The read-only user model servers log in as (`ensure-user` creates it)."""
    reader_password: SecretStr | None = None
    reader_password_secret_arn: str | None = None
    server_url: str = "http://127.0.0.1:5000"
    """Where `ensure-user` reaches the running server."""
    default_permission: str = "READ"
    """What every authenticated user may do on experiments and models they did not create."""
    region: str | None = None

    @field_validator("default_permission")
    @classmethod
    def _permission(cls, value: str) -> str:
        allowed = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
        if value not in allowed:
            raise ValueError(f"got {value!r}; allowed: {', '.join(allowed)}")
        return value
