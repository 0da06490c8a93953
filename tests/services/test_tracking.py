"""The tracking server for real: MLflow with auth on loopback, artifacts in a moto S3 bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import boto3
import pytest

from infra.processes import free_port
from infra.stackfile import REPO_ROOT
from tests.services.conftest import AWS_ENV, BUCKET, tracking_env


def test_unauthenticated_requests_are_refused(tracking):
    url = f"{tracking.url}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=10)
    assert info.value.code == 401


def test_wrong_password_is_refused(tracking):
    import base64

    request = urllib.request.Request(
        f"{tracking.url}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Authorization": "Basic " + base64.b64encode(b"admin:not-the-password").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401


def test_log_register_alias_and_load_by_alias(as_admin):
    import mlflow
    import numpy as np

    from examples.train import train_and_register, training_data

    registered = train_and_register("tracking-test-model", alias="champion")
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("tracking-test-model", "champion").version == registered.version
    model = mlflow.pyfunc.load_model("models:/tracking-test-model@champion")
    _, x_test, _, _ = training_data()
    predictions = model.predict(x_test.head(5))
    reference = mlflow.sklearn.load_model(f"runs:/{registered.run_id}/model").predict(x_test.head(5))
    assert np.allclose(predictions, reference)
    assert registered.rmse < 70  # a fitted model, not a constant

    # artifacts went through the server into the bucket, under the configured prefix
    s3 = boto3.client("s3", endpoint_url=as_admin.moto_url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in keys), keys


def test_moving_the_alias_points_loads_at_the_new_version(as_admin):
    import mlflow

    from examples.train import train_and_register

    first = train_and_register("tracking-alias-model", alpha=1.0)
    second = train_and_register("tracking-alias-model", alpha=10.0)
    assert int(second.version) == int(first.version) + 1
    assert mlflow.MlflowClient().get_model_version_by_alias("tracking-alias-model", "champion").version == second.version


def run_entrypoint(command: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.tracking.entrypoint", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("password", ["password1234", "short", ""])
def test_a_default_or_weak_admin_password_is_refused(tmp_path, password):
    import os

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x")}
    env["TRACKING_ADMIN_PASSWORD"] = password
    result = run_entrypoint("serve", env, timeout=30)
    assert result.returncode != 0
    assert "admin password" in result.stderr


def test_migrate_creates_the_schema(tmp_path):
    import os
    import sqlite3

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x")}
    result = run_entrypoint("migrate", env)
    assert result.returncode == 0, result.stderr
    tables = {row[0] for row in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from sqlite_master where type='table'")}
    assert {"experiments", "runs", "registered_models", "model_versions", "registered_model_aliases"} <= tables


def test_server_command_enables_auth_proxying_and_host_checks():
    from services.tracking.entrypoint import auth_config, server_command
    from services.tracking.settings import TrackingSettings

    settings = TrackingSettings(allowed_hosts="mlflow.internal", artifacts_destination="s3://b/p")
    command = server_command(settings, "postgresql://u:p@db/mlflow")
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in command and command[command.index("--artifacts-destination") + 1] == "s3://b/p"
    assert command[command.index("--allowed-hosts") + 1] == "mlflow.internal"
    assert "database_uri = postgresql://u:p%%40x@db" in auth_config(settings, "postgresql://u:p%40x@db")


def test_ensure_user_creates_the_read_only_serving_user_idempotently(tracking, tmp_path):
    import base64
    import os
    import secrets

    reader = secrets.token_urlsafe(18)
    env = {**os.environ, **tracking_env(tmp_path, free_port(), tracking.moto_url, tracking.password),
           "TRACKING_SERVER_URL": tracking.url, "TRACKING_READER_PASSWORD": reader}
    for _ in range(2):  # the second run finds the user and keeps it in sync
        result = run_entrypoint("ensure-user", env)
        assert result.returncode == 0, result.stderr
    auth = base64.b64encode(f"serving:{reader}".encode()).decode()
    ok = urllib.request.Request(f"{tracking.url}/api/2.0/mlflow/registered-models/search?max_results=1", headers={"Authorization": "Basic " + auth})
    with urllib.request.urlopen(ok, timeout=10) as response:
        assert response.status == 200
    def call(user, password, path, payload, method="POST"):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(f"{tracking.url}/api/2.0/mlflow/{path}", data=json.dumps(payload).encode(), method=method,
                                         headers={"Authorization": "Basic " + token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call("admin", tracking.password, "registered-models/create", {"name": "admins-model"}) == 200
    # the serving user reads everything but cannot change a model it did not create
    assert call("serving", reader, "registered-models/update", {"name": "admins-model", "description": "x"}, method="PATCH") == 403
    assert call("serving", reader, "registered-models/delete", {"name": "admins-model"}, method="DELETE") == 403
