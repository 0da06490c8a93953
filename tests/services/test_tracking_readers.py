"""Read-only tracking users, one per model endpoint (issue 13, item 11), on the real server.

MLflow lets any authenticated user create experiments, runs, artifacts, registered models,
versions and aliases; the platform's authorization function refuses every such request from
a `serving-<endpoint>` user. Every route of the server as it runs (Flask, the auth app's user
management and the FastAPI-native routes) is tried.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.processes import free_port
from tests.services.conftest import AWS_ENV, start_serving, tracking_env
from tests.services.test_tracking import run_entrypoint

READERS = {"serving-diabetes": secrets.token_urlsafe(18), "serving-reranker": secrets.token_urlsafe(18)}
READ_ONLY_POSTS = {
    "/api/2.0/mlflow/experiments/search",
    "/ajax-api/2.0/mlflow/experiments/search",
    "/api/2.0/mlflow/runs/search",
    "/ajax-api/2.0/mlflow/runs/search",
    "/api/2.0/mlflow/logged-models/search",
    "/ajax-api/2.0/mlflow/logged-models/search",
    "/api/2.0/mlflow/registered-models/get-latest-versions",
    "/ajax-api/2.0/mlflow/registered-models/get-latest-versions",
}
"""Searches only read; written out here, not taken from the code under test."""
ROUTE_TABLE = r"""
import json, sys
from mlflow.server import app
from mlflow.server.auth import create_app
from mlflow.server.fastapi_app import create_fastapi_app
flask_app = create_app(app)
rows = {(m, r.rule) for r in flask_app.url_map.iter_rules() for m in r.methods}
def walk(routes, prefix=""):
    for r in routes:
        if hasattr(r, "original_router"):
            walk(r.original_router.routes, prefix + (getattr(r.include_context, "prefix", "") or ""))
        elif getattr(r, "methods", None):
            rows.update((m, prefix + r.path) for m in r.methods)
walk(create_fastapi_app(flask_app).routes)
json.dump(sorted(rows), sys.stdout)
"""


def server_routes(tmp_path) -> list[tuple[str, str]]:
    """(method, path) of every route the basic-auth server registers, from MLflow itself."""
    config = tmp_path / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\ndatabase_uri = "
        f"sqlite:///{tmp_path / 'routes-auth.db'}\nadmin_username = admin\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }
    result = subprocess.run(
        [sys.executable, "-c", ROUTE_TABLE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [tuple(row) for row in json.loads(result.stdout)]


def call(url: str, user: str, password: str, method: str, path: str, payload: dict | None = None) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        url + path,
        data=json.dumps(payload or {}).encode() if method != "GET" else None,
        method=method,
        headers={"Authorization": "Basic " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, TimeoutError):
        return 0  # no answer: not a refusal either


@pytest.fixture(scope="module")
def readers(tracking, tmp_path_factory):
    """The endpoints' read-only users, created by `ensure-user` as the platform's Job runs it."""
    env = {
        **os.environ,
        **tracking_env(tmp_path_factory.mktemp("readers"), free_port(), tracking.moto_url, tracking.password),
        "TRACKING_SERVER_URL": tracking.url,
        "TRACKING_READER_PASSWORDS": json.dumps(READERS),
    }
    for _ in range(2):  # the second run finds the users and keeps their passwords in sync
        result = run_entrypoint("ensure-user", env)
        assert result.returncode == 0, result.stderr
    return env


@pytest.fixture(scope="module")
def admins_model(tracking, readers):
    """A model with a `champion` alias, registered by the admin (as a data scientist would)."""
    from examples.train import train_and_register

    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", *AWS_ENV)
    }
    os.environ.update(
        {
            **AWS_ENV,
            "MLFLOW_TRACKING_URI": tracking.url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": tracking.password,
        }
    )
    try:
        return train_and_register("readers-test-model", alias="champion")
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_a_reader_loads_a_model_by_alias(tracking, admins_model, monkeypatch):
    import mlflow

    for key, value in {
        **AWS_ENV,
        "MLFLOW_TRACKING_USERNAME": "serving-diabetes",
        "MLFLOW_TRACKING_PASSWORD": READERS["serving-diabetes"],
    }.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(tracking.url)
    try:
        client = mlflow.MlflowClient()
        assert client.get_model_version_by_alias("readers-test-model", "champion").version == admins_model.version
        model = mlflow.pyfunc.load_model("models:/readers-test-model@champion")  # artifacts come through the server
        assert model.metadata.run_id == admins_model.run_id
        assert (
            client.search_experiments()
            and client.search_runs([client.get_experiment_by_name("Default").experiment_id]) is not None
        )
    finally:
        mlflow.set_tracking_uri(None)


def test_the_model_server_serves_as_its_endpoints_reader(tracking, admins_model, tmp_path):
    """The real consumer: services/serving logged in as `serving-diabetes` loads `@champion` and answers."""
    import dataclasses

    reader = dataclasses.replace(tracking, username="serving-diabetes", password=READERS["serving-diabetes"])
    server = start_serving(reader, "readers-test-model", tmp_path)
    try:
        from examples.train import training_data

        row = training_data()[1].head(1)
        body = json.dumps({"dataframe_split": {"columns": list(row.columns), "data": row.values.tolist()}}).encode()
        request = urllib.request.Request(
            server.url + "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and "predictions" in json.loads(response.read())
    finally:
        server.stop()


def test_a_reader_changes_nothing(tracking, admins_model):
    user, password = "serving-diabetes", READERS["serving-diabetes"]
    name, version = "readers-test-model", admins_model.version
    experiment = str(
        json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{tracking.url}/api/2.0/mlflow/runs/get?run_id={admins_model.run_id}",
                    headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()},
                ),
                timeout=10,
            ).read()
        )["run"]["info"]["experiment_id"]
    )
    attempts = [
        ("POST", "/api/2.0/mlflow/experiments/create", {"name": "readers-own"}),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}),
        (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": admins_model.run_id, "key": "x", "value": 1, "timestamp": 0},
        ),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{admins_model.run_id}/artifacts/evil.txt", {}),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "readers-own-model"}),
        (
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {"name": name, "source": f"runs:/{admins_model.run_id}/model"},
        ),
        ("POST", "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": "champion", "version": "1"}),
        ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": "champion"}),
        ("PATCH", "/api/2.0/mlflow/registered-models/update", {"name": name, "description": "x"}),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete", {"name": name, "version": version}),
        ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": name}),
        ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment}),
        ("POST", "/api/2.0/mlflow/users/create", {"username": "serving-x", "password": secrets.token_urlsafe(18)}),
        (
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": "serving-reranker", "password": secrets.token_urlsafe(18)},
        ),
    ]
    assert [(m, p, call(tracking.url, user, password, m, p, body)) for m, p, body in attempts] == [
        (m, p, 403) for m, p, _ in attempts
    ]

    # as the admin sees it: still the same model, alias and version
    def admin_get(path: str) -> int:
        return call(tracking.url, "admin", tracking.password, "GET", path)

    assert admin_get(f"/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion") == 200
    assert admin_get("/api/2.0/mlflow/registered-models/get?name=readers-own-model") == 404


def test_every_write_route_of_the_server_refuses_a_reader(tracking, readers, tmp_path):
    user, password = "serving-reranker", READERS["serving-reranker"]
    routes = server_routes(tmp_path)
    writes = sorted(
        {(m, re.sub(r"<[^>]+>|\{[^}]+\}", "x", p)) for m, p in routes if m not in ("GET", "HEAD", "OPTIONS")}
        - {("POST", p) for p in READ_ONLY_POSTS}
    )
    assert (
        len(writes) > 250
        and ("POST", "/v1/traces") in writes
        and ("PUT", "/api/2.0/mlflow-artifacts/artifacts/x") in writes
    )
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda route: call(tracking.url, user, password, *route), writes))
    allowed = [(route, status) for route, status in zip(writes, answers, strict=True) if status != 403]
    assert allowed == [], f"{len(allowed)} of {len(writes)} write routes did not answer 403 to a read-only user"
    for path in sorted(READ_ONLY_POSTS):  # the searches a reader may run
        assert call(tracking.url, user, password, "POST", path, {"experiment_ids": ["0"], "max_results": 1}) != 403, (
            path
        )


def test_a_user_that_is_not_read_only_still_creates(tracking, readers):
    """The rule is by name: the admin (and any data scientist's user) keeps MLflow's own permissions."""
    assert (
        call(
            tracking.url,
            "admin",
            tracking.password,
            "POST",
            "/api/2.0/mlflow/experiments/create",
            {"name": f"admins-{secrets.token_hex(4)}"},
        )
        == 200
    )


def test_ensure_user_removes_readers_of_deleted_endpoints_and_refuses_bad_ones(tracking, readers, tmp_path):
    keep = {"serving-diabetes": READERS["serving-diabetes"]}
    env = {**readers, "TRACKING_READER_PASSWORDS": json.dumps(keep)}
    result = run_entrypoint("ensure-user", env)
    assert result.returncode == 0, result.stderr
    assert "deleted read-only user serving-reranker" in result.stdout
    assert (
        call(
            tracking.url,
            "serving-reranker",
            READERS["serving-reranker"],
            "GET",
            "/api/2.0/mlflow/experiments/search?max_results=1",
        )
        == 401
    )
    assert (
        call(
            tracking.url,
            "serving-diabetes",
            READERS["serving-diabetes"],
            "GET",
            "/api/2.0/mlflow/experiments/search?max_results=1",
        )
        == 200
    )
    for bad, message in (
        ({"diabetes": secrets.token_urlsafe(18)}, "start with 'serving-'"),
        ({"serving-x": "aaaaaaaaaaaaaaaa"}, "weak"),
    ):
        result = run_entrypoint("ensure-user", {**readers, "TRACKING_READER_PASSWORDS": json.dumps(bad)})
        assert result.returncode != 0 and message in result.stderr, result.stderr
    # restore for other tests of the module
    assert run_entrypoint("ensure-user", readers).returncode == 0
