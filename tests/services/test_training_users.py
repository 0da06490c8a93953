"""A pipeline's own tracking user (`training-<pipeline>`, made by the tracking server's `ensure-user`) against a
real server: it can run its pipeline end to end, and write to nothing else."""

from __future__ import annotations

import os
import secrets

import pytest

from examples.diabetes import write_dataset
from services.tracking.writers import Writer, sync_writers, writer_username


def ensure_user(tracking, writers: dict) -> None:
    """The tracking image's `ensure-user`, as its Job runs it, with TRACKING_WRITERS."""
    import json
    import subprocess
    import sys

    from infra.stackfile import REPO_ROOT

    env = {"TRACKING_SERVER_URL": tracking.url, "TRACKING_ADMIN_PASSWORD": tracking.password,
           "TRACKING_FLASK_SECRET_KEY": secrets.token_urlsafe(32), "TRACKING_WRITERS": json.dumps(writers)}
    result = subprocess.run([sys.executable, "-m", "services.tracking.entrypoint", "ensure-user"], cwd=REPO_ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracking: training-perm may write to experiment pipelines/perm and model perm-model" in result.stdout


@pytest.fixture
def pipeline_user(tracking, monkeypatch):
    """`training-perm` with its grants; the MLflow client in this process logs in as that user."""
    import mlflow

    password = secrets.token_urlsafe(24)
    ensure_user(tracking, {"perm": {"model": "perm-model", "password": password}})
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "MLFLOW_TRACKING_URI": tracking.url, "MLFLOW_TRACKING_USERNAME": writer_username("perm"),
                       "MLFLOW_TRACKING_PASSWORD": password}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(tracking.url)
    yield password
    mlflow.set_tracking_uri(None)


def admin_client(tracking):
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    return as_user(tracking.username, tracking.password), MlflowClient(tracking.url)


def test_a_pipeline_user_runs_its_pipeline_and_writes_nothing_else(tracking, pipeline_user, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from services.training.runner import run
    from services.training.settings import TrainingSettings

    context, admin = admin_client(tracking)
    with context:
        admin.create_registered_model("someone-elses-model")
        other_experiment = admin.create_experiment("someone-elses-experiment")

    outcome = run(TrainingSettings(pipeline="perm", model_name="perm-model", entry_point="examples.diabetes:task",
                                   data=str(write_dataset(tmp_path / "diabetes.csv"))))
    assert outcome.version == "1" and outcome.decision.promote  # runs, registers, tags and moves aliases of its own model
    client = MlflowClient()
    assert client.get_model_version_by_alias("perm-model", "champion").version == "1"

    denied = [
        lambda: client.set_registered_model_alias("someone-elses-model", "champion", "1"),
        lambda: client.create_run(other_experiment),
        lambda: client.delete_registered_model("perm-model"),  # EDIT, not MANAGE: it cannot delete its own model either
        lambda: client.update_registered_model("someone-elses-model", description="mine now"),
    ]
    for attempt in denied:
        with pytest.raises(MlflowException) as caught:
            attempt()
        assert caught.value.error_code == "PERMISSION_DENIED"
    assert mlflow.get_experiment(other_experiment) is not None  # reading is allowed


def test_ensure_user_resets_the_password_and_removes_users_of_gone_pipelines(tracking):
    from mlflow.server.auth.client import AuthServiceClient

    from services.tracking.writers import as_user

    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    sync_writers(tracking.url, tracking.username, tracking.password, {writer_username("gone"): Writer("gone", "gone-model", first)})
    sync_writers(tracking.url, tracking.username, tracking.password, {writer_username("gone"): Writer("gone", "gone-model", second)})
    with as_user(writer_username("gone"), second):
        assert AuthServiceClient(tracking.url).get_user(writer_username("gone")).username == writer_username("gone")

    sync_writers(tracking.url, tracking.username, tracking.password, {})
    with as_user(tracking.username, tracking.password), pytest.raises(Exception, match="not found|RESOURCE_DOES_NOT_EXIST"):
        AuthServiceClient(tracking.url).get_user(writer_username("gone"))
