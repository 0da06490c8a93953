"""Settings of one training run, from environment variables (prefix `TRAINING_`).

The platform's CronJob sets them from the stack file's `pipelines:` entry; locally `make local`
and the drift receiver set the same variables. The tracking server is MLflow's own
`MLFLOW_TRACKING_URI`, `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`; on the
cluster the password is a file instead (`TRAINING_TRACKING_PASSWORD_FILE`, a read-only Secret
volume), so it is in no environment variable of the pod's spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.env_settings import StrictEnvSettings

TRIGGERS = ("manual", "schedule", "drift", "pull-request")


class TrainingSettings(StrictEnvSettings):
    """`TRAINING_*` variables; an unknown one stops the run at start (services/env_settings.py)."""

    model_config = SettingsConfigDict(env_prefix="TRAINING_", extra="ignore", protected_namespaces=())

    pipeline: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
    model_name: str = Field(min_length=1)
    """Registered model the pipeline trains."""
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`module:attribute` naming the pipeline's `Task` (services/training/task.py)."""
    data: str = Field(min_length=1)
    """The data set: a `.dvc` file (its DVC hash is fetched from the remote), or a plain CSV/Parquet file."""
    experiment: str | None = None
    """MLflow experiment of the runs; default `pipelines/<pipeline>`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Hyperparameters (JSON), merged over the task's defaults."""
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)
    """Share of rows held out; challenger and champion are scored on the same held-out rows."""
    split_seed: int = 7
    sample_fraction: float = Field(default=1.0, gt=0, le=1)
    """Train on a random sample of the rows (pull-request reports)."""
    min_improvement: float = Field(default=0.01, ge=0)
    """Fraction by which the challenger must beat the champion (0.01 = 1 %)."""
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    canary_alias: str | None = None
    """When set (the endpoint has a canary), a passing version gets this alias instead of the champion's."""
    promote: bool = True
    """False: train, score and report, but register nothing (pull-request reports)."""
    trigger: Literal[TRIGGERS] = "manual"  # type: ignore[valid-type]
    trigger_reason: str = ""
    """Why this run started (the drift alert, the schedule, a person), recorded on the run and the version."""
    code_revision: str | None = None
    """Git revision of the training code; default `git rev-parse HEAD` where there is a checkout."""
    image: str | None = None
    """The training image this run executes in (set by the platform)."""
    dvc_remote: str | None = None
    """DVC remote the `.dvc` file's data is fetched from, e.g. `s3://<datasets bucket>/dvc`."""
    s3_endpoint_url: str | None = None
    """Only for local runs against moto; on AWS the default endpoint is used."""
    cache_dir: str = "/tmp/training-cache"
    """Where fetched data versions are kept (an emptyDir on the cluster)."""
    report_path: str | None = None
    """Also write the outcome as JSON here (the pull-request report reads it)."""
    tracking_password_file: str | None = None
    """File holding the tracking user's password (the platform mounts the pipeline's Secret there); read at the start
    of a run, and set as this process's `MLFLOW_TRACKING_PASSWORD` (which MLflow's client reads on every request) once
    `git` and the pipeline's import have run (runner.run)."""

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"pipelines/{self.pipeline}"
