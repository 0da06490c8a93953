"""The tracking server for real: MLflow with auth on loopback, artifacts in a moto S3 bucket."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from infra.processes import free_port
from infra.stackfile import REPO_ROOT
from tests.services.conftest import BUCKET, moto_client, tracking_env


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
    s3 = moto_client("s3", as_admin.moto_url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in keys), keys


def test_moving_the_alias_points_loads_at_the_new_version(as_admin):
    import mlflow

    from examples.train import train_and_register

    first = train_and_register("tracking-alias-model", alpha=1.0)
    second = train_and_register("tracking-alias-model", alpha=10.0)
    assert int(second.version) == int(first.version) + 1
    assert (
        mlflow.MlflowClient().get_model_version_by_alias("tracking-alias-model", "champion").version == second.version
    )


def run_entrypoint(command: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.tracking.entrypoint", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "password", ["aaaaaaaaaaaaaaaa", "passwordpassword", "password1234", "qwertyuiopasdfgh", "short", ""]
)
def test_a_weak_admin_password_is_refused(tmp_path, password):
    import os

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x")}
    env["TRACKING_ADMIN_PASSWORD"] = password
    result = run_entrypoint("serve", env, timeout=30)
    assert result.returncode != 0
    assert "admin password" in result.stderr and "Traceback" not in result.stderr


def test_password_strength_is_estimated_not_looked_up():
    import secrets

    from services.tracking.credentials import StartupError, require_strong

    for weak in ("aaaaaaaaaaaaaaaa", "passwordpassword", "mlflowmlflow2024", "serving-diabetes1"):
        with pytest.raises(StartupError, match="weak|shorter"):
            require_strong("admin password", weak, setting="X", context=["serving-diabetes"])
    generated = secrets.token_urlsafe(18)  # what the local plane and the tests generate
    assert require_strong("admin password", generated, setting="X") == generated
    assert require_strong(
        "admin password", "Ld4VbXcNqW2pTz8RkYm3HsJf7GaE9UoB", setting="X"
    )  # the platform's: 32 alphanumerics


def test_migrate_creates_the_schema(tmp_path):
    import os
    import sqlite3

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x")}
    result = run_entrypoint("migrate", env)
    assert result.returncode == 0, result.stderr
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from sqlite_master where type='table'")
    }
    assert {"experiments", "runs", "registered_models", "model_versions", "registered_model_aliases"} <= tables
    auth_tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "mlflow-auth.db").execute(
            "select name from sqlite_master where type='table'"
        )
    }
    assert {"users", "experiment_permissions", "alembic_version_auth"} <= auth_tables  # the auth schema too


def test_server_command_enables_auth_proxying_and_host_checks_and_holds_no_credentials():
    from services.tracking.entrypoint import auth_config, server_command, server_environment
    from services.tracking.settings import TrackingSettings

    settings = TrackingSettings(allowed_hosts="mlflow.internal", artifacts_destination="s3://b/p")
    command = server_command(settings)
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in command and command[command.index("--artifacts-destination") + 1] == "s3://b/p"
    assert command[command.index("--allowed-hosts") + 1] == "mlflow.internal"
    assert "--backend-store-uri" not in command  # it holds the database password: environment only
    env = server_environment(
        settings,
        backend_uri="postgresql+psycopg2://u:secret@db/mlflow",
        config_path="/tmp/c.ini",
        password="p",
        key="k",
    )
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://u:secret@db/mlflow"
    assert "database_uri = postgresql://u:p%%40x@db" in auth_config(settings, "postgresql://u:p%40x@db")
    config = auth_config(settings, "sqlite://")
    assert "authorization_function = services.tracking.auth:authenticate_request_with_scoped_users" in config


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TRACKING_DATABASE_USER", "Robert'); DROP"),
        ("TRACKING_READERS", "not json"),
        ("TRACKING_DEFAULT_PERMISSION", "ALL"),
    ],
)
def test_a_bad_setting_is_named_without_a_traceback(tmp_path, key, value):
    import os

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x"), key: value}
    result = run_entrypoint("migrate", env, timeout=60)
    assert result.returncode != 0 and key in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("permission", ["EDIT", "MANAGE"])
@pytest.mark.parametrize(
    "key, value",
    [
        ("TRACKING_WRITERS", '{"perm": {"model": "perm-model", "password_secret_arn": "arn:aws:secretsmanager:x"}}'),
        ("TRACKING_READERS", '{"serving-diabetes": "arn:aws:secretsmanager:x"}'),
        ("TRACKING_READER_PASSWORDS", '{"serving-diabetes": "x"}'),
    ],
)
def test_a_default_permission_that_unscopes_the_scoped_users_stops_the_server(tmp_path, permission, key, value):
    """The scoped users' limits rest on MLflow's default being READ: EDIT or MANAGE next to them is refused at start."""
    import os

    env = {**os.environ, **tracking_env(tmp_path, free_port(), "http://127.0.0.1:1", "x")}
    env.update({"TRACKING_DEFAULT_PERMISSION": permission, key: value})
    result = run_entrypoint("serve", env, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"TRACKING_DEFAULT_PERMISSION={permission} with scoped users configured ({key})" in last
    assert last.endswith("allowed with them: READ, NO_PERMISSIONS")


def test_any_default_permission_is_accepted_without_scoped_users():
    from services.tracking.settings import TrackingSettings

    for permission in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"):
        assert TrackingSettings(default_permission=permission).default_permission == permission
    assert TrackingSettings(writers={"p": {"model": "m"}}, default_permission="NO_PERMISSIONS").writers
