"""A pipeline's own tracking user (`training-<pipeline>`, made by the tracking server's `ensure-user`) against a
real server: it can run its pipeline end to end, and write to nothing else: not another team's model or experiment
(MLflow's per-resource checks with the grants `ensure-user` makes), and no new experiment or model, no delete, rename,
user or permission change, gateway, trace or job (the platform's authorization function, services/tracking/auth.py)."""

from __future__ import annotations

import os
import re
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from examples.diabetes import write_dataset
from services.tracking.writers import Writer, sync_writers, writer_username
from tests.services.test_tracking_readers import READ_ONLY_POSTS, call, server_routes

PIPELINE_ROUTES = {
    ("POST", "/mlflow/runs/create"),
    ("POST", "/mlflow/runs/update"),
    ("POST", "/mlflow/runs/log-metric"),
    ("POST", "/mlflow/runs/log-parameter"),
    ("POST", "/mlflow/runs/log-batch"),
    ("POST", "/mlflow/runs/log-inputs"),
    ("POST", "/mlflow/runs/outputs"),
    ("POST", "/mlflow/runs/set-tag"),
    ("POST", "/mlflow/logged-models"),
    ("PATCH", "/mlflow/logged-models/x"),
    ("PATCH", "/mlflow/logged-models/x/tags"),
    ("POST", "/mlflow/logged-models/x/params"),
    ("PUT", "/mlflow-artifacts/artifacts/x"),
    ("POST", "/mlflow/model-versions/create"),
    ("POST", "/mlflow/model-versions/set-tag"),
    ("POST", "/mlflow/registered-models/alias"),
    ("POST", "/mlflow/registered-models/set-tag"),
    ("POST", "/mlflow/registered-models/create"),  # only under the name of its own model
}
"""The writes a training run makes (MLflow 3.17's client, as the server logged them); written out here, not taken from
the code under test. Each also passes MLflow's per-resource check, which the grants limit to the pipeline's own."""


def ensure_user(tracking, writers: dict) -> None:
    """The tracking image's `ensure-user`, as its Job runs it, with TRACKING_WRITERS."""
    import json
    import subprocess
    import sys

    from infra.stackfile import REPO_ROOT

    env = {
        "TRACKING_SERVER_URL": tracking.url,
        "TRACKING_ADMIN_PASSWORD": tracking.password,
        "TRACKING_FLASK_SECRET_KEY": secrets.token_urlsafe(32),
        "TRACKING_WRITERS": json.dumps(writers),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.tracking.entrypoint", "ensure-user"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for pipeline, spec in writers.items():
        line = f"tracking: training-{pipeline} may write to experiment pipelines/{pipeline} and model {spec['model']}"
        assert line in result.stdout


@pytest.fixture
def pipeline_user(tracking, monkeypatch):
    """`training-perm` with its grants; the MLflow client in this process logs in as that user."""
    import mlflow

    password = secrets.token_urlsafe(24)
    ensure_user(tracking, {"perm": {"model": "perm-model", "password": password}})
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": tracking.url,
        "MLFLOW_TRACKING_USERNAME": writer_username("perm"),
        "MLFLOW_TRACKING_PASSWORD": password,
    }.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(tracking.url)
    yield password
    mlflow.set_tracking_uri(None)


def recording_git_and_task(tmp_path, monkeypatch) -> tuple:
    """A `git` first on PATH that appends its arguments and environment to a file on every call (and answers
    `fakerevision`: MLflow's GitPython gets nothing it can use and goes without), and a
    pipeline module (the diabetes task) that records the tracking password it sees when imported and in `fit`.
    Returns (the file git writes, the module's name)."""
    record = tmp_path / "git-env.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\n{{ echo git $*; env; }} >> {record}\necho fakerevision\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    name = f"recording_task_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(
        "import dataclasses, os\n"
        "from examples.diabetes import task as diabetes\n"
        "SEEN = {'import': os.environ.get('MLFLOW_TRACKING_PASSWORD')}\n"
        "def fit(x, y, params):\n"
        "    SEEN['fit'] = os.environ.get('MLFLOW_TRACKING_PASSWORD')\n"
        "    return diabetes().fit(x, y, params)\n"
        "task = dataclasses.replace(diabetes(), fit=fit)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return record, name


def admin_client(tracking):
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    return as_user(tracking.username, tracking.password), MlflowClient(tracking.url)


def test_a_pipeline_user_runs_its_pipeline_and_writes_nothing_else(tracking, pipeline_user, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from services.training.runner import run
    from services.training.settings import TrainingSettings

    context, admin = admin_client(tracking)
    with context:
        admin.create_registered_model("someone-elses-model")
        other_experiment = admin.create_experiment("someone-elses-experiment")

    # as on the cluster: the password in a file (the pipeline's Secret volume), not in the environment
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    password_file = tmp_path / "password"
    password_file.write_text(pipeline_user + "\n")
    git_env, task_module = recording_git_and_task(tmp_path, monkeypatch)
    outcome = run(
        TrainingSettings(
            pipeline="perm",
            model_name="perm-model",
            entry_point=f"{task_module}:task",
            data=str(write_dataset(tmp_path / "diabetes.csv")),
            tracking_password_file=str(password_file),
        )
    )
    # neither `git rev-parse` nor the pipeline's code (its import, its fit) was handed the password
    assert "git rev-parse HEAD" in git_env.read_text() and "MLFLOW_TRACKING_PASSWORD" not in git_env.read_text()
    assert sys.modules[task_module].SEEN == {"import": None, "fit": None}
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # and the run leaves the process as it found it
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", pipeline_user)
    assert (
        outcome.version == "1" and outcome.decision.promote
    )  # runs, registers, tags and moves aliases of its own model
    client = MlflowClient()
    assert client.get_model_version_by_alias("perm-model", "champion").version == "1"
    assert client.get_run(outcome.run_id).data.tags["mlops.code.revision"] == "fakerevision"

    client.set_registered_model_tag("perm-model", "team", "perm")  # tags and aliases of its own model
    client.set_registered_model_alias("perm-model", "reviewed", "1")
    assert client.get_registered_model("perm-model").tags["team"] == "perm"
    mlflow.register_model(f"runs:/{outcome.run_id}/model", "perm-model")  # "create" of its own model answers "exists"

    denied = [
        lambda: client.set_registered_model_alias("someone-elses-model", "champion", "1"),
        lambda: client.set_registered_model_tag("someone-elses-model", "team", "perm"),
        lambda: client.create_model_version("someone-elses-model", f"runs:/{outcome.run_id}/model", outcome.run_id),
        lambda: mlflow.register_model(f"runs:/{outcome.run_id}/model", "someone-elses-model"),
        lambda: mlflow.register_model(f"runs:/{outcome.run_id}/model", "perms-new-model"),
        lambda: client.create_experiment("perms-new-experiment"),
        lambda: client.create_run(other_experiment),
        lambda: client.delete_registered_model("perm-model"),  # EDIT, not MANAGE: it cannot delete its own model either
        lambda: client.delete_registered_model_alias("perm-model", "champion"),
        lambda: client.rename_registered_model("perm-model", "perm-model-2"),
        lambda: client.delete_run(outcome.run_id),
        lambda: client.update_registered_model("someone-elses-model", description="mine now"),
    ]
    for attempt in denied:
        with pytest.raises(MlflowException) as caught:
            attempt()
        assert caught.value.error_code == "PERMISSION_DENIED"
    assert mlflow.get_experiment(other_experiment) is not None  # reading is allowed
    with admin_client(tracking)[0]:
        assert {m.name for m in admin.search_registered_models()} >= {"perm-model", "someone-elses-model"}
        assert not admin.search_registered_models("name = 'perms-new-model'")
        assert not admin.get_experiment_by_name("perms-new-experiment")
        assert admin.get_model_version_by_alias("perm-model", "champion").version == "1"


def test_a_pipeline_user_creates_and_administers_nothing(tracking, pipeline_user):
    """Over HTTP, as any client could ask: creations, writes elsewhere, users and permissions, traces."""
    user, password = writer_username("perm"), pipeline_user
    context, admin = admin_client(tracking)
    with context:
        other = admin.create_experiment(f"other-{secrets.token_hex(3)}")
        own = admin.get_experiment_by_name("pipelines/perm").experiment_id
    attempts: list[tuple[str, str, dict]] = [
        ("POST", "/api/2.0/mlflow/experiments/create", {"name": "perms-own"}),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "perms-own-model"}),
        (
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            {"name": "perms-own-prompt", "tags": [{"key": "mlflow.prompt.is_prompt", "value": "true"}]},
        ),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": other}),
        ("POST", "/api/2.0/mlflow/logged-models", {"experiment_id": other, "name": "m"}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{other}/models/m-1/artifacts/evil.txt", {}),
        ("POST", "/api/2.0/mlflow/experiments/set-experiment-tag", {"experiment_id": own, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": own}),
        ("POST", "/api/2.0/mlflow/experiments/update", {"experiment_id": own, "new_name": "renamed"}),
        ("PATCH", "/api/2.0/mlflow/registered-models/update", {"name": "perm-model", "description": "x"}),
        ("POST", "/api/2.0/mlflow/users/create", {"username": "training-x", "password": secrets.token_urlsafe(18)}),
        (
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": "admin", "password": secrets.token_urlsafe(18)},
        ),
        ("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": True}),
        (
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {"username": user, "resource_type": "experiment", "resource_id": other, "permission": "EDIT"},
        ),
        (
            "POST",
            "/api/2.0/mlflow/experiments/permissions/create",
            {"experiment_id": other, "username": user, "permission": "EDIT"},
        ),
        ("POST", "/v1/traces", {}),
    ]
    answers = [(m, p, call(tracking.url, user, password, m, p, body)) for m, p, body in attempts]
    assert answers == [(m, p, 403) for m, p, _ in attempts]
    with admin_client(tracking)[0]:
        assert not admin.search_registered_models("name LIKE 'perms-own%'")
        assert not admin.get_experiment_by_name("perms-own")
        assert admin.get_experiment(own).name == "pipelines/perm"
        assert admin.get_experiment(other).lifecycle_stage == "active"


@pytest.fixture
def scope_user(tracking):
    """`training-scope` (model `scope-model`): a pipeline of its own, so the versions it registers here change
    nothing the other tests count."""
    password = secrets.token_urlsafe(24)
    ensure_user(tracking, {"scope": {"model": "scope-model", "password": password}})
    return writer_username("scope"), password


@pytest.fixture
def other_experiment(tracking):
    """Another team's experiment, with a RUNNING run, a PENDING logged model and a registered version of it."""
    from types import SimpleNamespace

    context, admin = admin_client(tracking)
    with context:
        experiment = admin.create_experiment(f"other-{secrets.token_hex(3)}")
        model = admin.create_logged_model(experiment)
        name = f"other-model-{secrets.token_hex(3)}"
        admin.create_registered_model(name)
        version = admin.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id).version
        run = admin.create_run(experiment).info.run_id
    return SimpleNamespace(id=experiment, run=run, model=model.model_id, name=name, version=version)


def upload(path: str) -> tuple[str, str]:
    return "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}"


def test_a_pipeline_user_uploads_only_into_its_running_run_and_pending_model(tracking, scope_user):
    """Item: with EDIT on its experiment a pipeline user could overwrite any artifact there, a served model's included;
    it may write only into a run that is RUNNING and a logged model that is PENDING, and cannot reopen either."""
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    user, password = scope_user
    with as_user(*scope_user):
        client = MlflowClient(tracking.url)
        own = client.get_experiment_by_name("pipelines/scope").experiment_id
        run = client.create_run(own).info.run_id
        model = client.create_logged_model(own).model_id
    run_file, model_file = f"{own}/{run}/artifacts/notes.txt", f"{own}/models/{model}/artifacts/MLmodel"
    assert call(tracking.url, user, password, *upload(run_file)) == 200  # what a training run does
    assert call(tracking.url, user, password, *upload(model_file)) == 200
    with as_user(*scope_user):
        client.set_terminated(run)
        client.finalize_logged_model(model, "READY")
    attempts = [
        (*upload(run_file), {}),  # a finished run's artifact
        (*upload(model_file), {}),  # a READY logged model's (what a model version serves)
        (*upload(f"{own}/models/{model}/artifacts/model.pkl"), {}),
        (*upload(f"{own}/{run}/artifacts/model/model.pkl"), {}),
        ("POST", "/api/2.0/mlflow/runs/update", {"run_id": run, "status": "RUNNING"}),  # reopening the run
        ("PATCH", f"/api/2.0/mlflow/logged-models/{model}", {"model_id": model, "status": 1}),  # back to PENDING
    ]
    answers = [(m, p, call(tracking.url, user, password, m, p, body)) for m, p, body in attempts]
    assert answers == [(m, p, 403) for m, p, _ in attempts]
    with admin_client(tracking)[0]:
        admin = MlflowClient(tracking.url)
        assert admin.get_run(run).info.status == "FINISHED"
        assert admin.get_logged_model(model).status.name == "READY"


def test_a_pipeline_user_registers_versions_only_from_its_own_experiment(tracking, scope_user, other_experiment):
    """Item: MLflow only asks READ on a new version's source; a pipeline's versions come from its own experiment."""
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    user, password = scope_user
    with as_user(*scope_user):
        client = MlflowClient(tracking.url)
        own = client.get_experiment_by_name("pipelines/scope").experiment_id
        run = client.create_run(own).info.run_id
        model = client.create_logged_model(own, source_run_id=run).model_id
    other = other_experiment
    create = "/api/2.0/mlflow/model-versions/create"
    refused = [
        {"source": f"models:/{other.model}", "model_id": other.model},  # another experiment's logged model
        {"source": f"models:/{other.model}"},
        {"source": f"runs:/{other.run}/model", "run_id": other.run},  # another experiment's run
        {"source": "s3://someone-elses-bucket/model"},  # an arbitrary URI
        {"source": "s3://someone-elses-bucket/model", "model_id": model},  # ... next to its own model's id
        {"source": f"models:/{other.name}/{other.version}"},  # a copy of another registered model's version
        {"source": f"models:/{other.model}", "model_id": model},
    ]
    answers = [call(tracking.url, user, password, "POST", create, {"name": "scope-model", **body}) for body in refused]
    assert answers == [403] * len(refused)
    allowed = [
        {"source": f"models:/{model}", "model_id": model, "run_id": run},  # what `mlflow.register_model` sends
        {"source": f"runs:/{run}/model", "run_id": run},
    ]
    answers = [call(tracking.url, user, password, "POST", create, {"name": "scope-model", **body}) for body in allowed]
    assert answers == [200, 200]
    with admin_client(tracking)[0]:
        versions = MlflowClient(tracking.url).search_model_versions("name = 'scope-model'")
        assert sorted(v.run_id for v in versions) == [run, run]


def test_a_pipeline_user_writes_nothing_of_another_experiment_or_model(tracking, scope_user, other_experiment):
    """Denials the sweep of every route (below) does not reach: its requests name resources that do not exist."""
    user, password = scope_user
    other = other_experiment
    attempts: list[tuple[str, str, dict]] = [
        (*upload("x"), {}),  # a path naming no experiment
        (*upload("not-an-experiment/x"), {}),
        (*upload(f"{other.id}/{other.run}/artifacts/x"), {}),  # another experiment's RUNNING run
        (*upload(f"{other.id}/models/{other.model}/artifacts/MLmodel"), {}),  # ... and PENDING logged model
        ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": other.run, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": other.run, "params": [{"key": "k", "value": "v"}]}),
        ("POST", "/api/2.0/mlflow/runs/update", {"run_id": other.run, "status": "FINISHED"}),
        ("PATCH", f"/api/2.0/mlflow/logged-models/{other.model}", {"model_id": other.model, "status": 2}),
        ("PATCH", f"/api/2.0/mlflow/logged-models/{other.model}/tags", {"tags": [{"key": "k", "value": "v"}]}),
        (
            "POST",
            "/api/2.0/mlflow/model-versions/set-tag",
            {"name": other.name, "version": other.version, "key": "k", "value": "v"},
        ),
        ("POST", "/gateway/proxy/ep/api/2.0/mlflow/runs/create", {"experiment_id": other.id}),
    ]
    answers = [(m, p, call(tracking.url, user, password, m, p, body)) for m, p, body in attempts]
    assert answers == [(m, p, 403) for m, p, _ in attempts]
    context, admin = admin_client(tracking)
    with context:
        assert admin.get_run(other.run).data.tags.get("k") is None and admin.get_run(other.run).info.status == "RUNNING"
        assert admin.get_logged_model(other.model).status.name == "PENDING"


def test_every_other_write_route_of_the_server_refuses_a_pipeline_user(tracking, pipeline_user, tmp_path):
    user, password = writer_username("perm"), pipeline_user
    routes = {
        (m, re.sub(r"<[^>]+>|\{[^}]+\}", "x", p))
        for m, p in server_routes(tmp_path)
        if m not in ("GET", "HEAD", "OPTIONS")
    }
    allowed = {
        (m, p, suffix)
        for m, p in routes
        for method, suffix in PIPELINE_ROUTES
        if m == method and re.fullmatch(r"/(?:ajax-)?api/\d\.\d" + re.escape(suffix), p)
    }
    assert {(m, suffix) for m, _, suffix in allowed} == PIPELINE_ROUTES  # each is a route of the server as it runs
    writes = sorted(routes - {(m, p) for m, p, _ in allowed} - {("POST", p) for p in READ_ONLY_POSTS})
    assert len(writes) > 250 and ("POST", "/v1/traces") in writes
    assert ("POST", "/api/2.0/mlflow/experiments/create") in writes
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda route: call(tracking.url, user, password, *route), writes))
    open_routes = [(route, status) for route, status in zip(writes, answers, strict=True) if status != 403]
    assert open_routes == [], f"{len(open_routes)} of {len(writes)} write routes did not answer 403 to a pipeline user"


def test_ensure_user_resets_the_password_and_removes_users_of_gone_pipelines(tracking):
    from mlflow.server.auth.client import AuthServiceClient

    from services.tracking.writers import as_user

    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    sync_writers(
        tracking.url,
        tracking.username,
        tracking.password,
        {writer_username("gone"): Writer("gone", "gone-model", first)},
    )
    sync_writers(
        tracking.url,
        tracking.username,
        tracking.password,
        {writer_username("gone"): Writer("gone", "gone-model", second)},
    )
    with as_user(writer_username("gone"), second):
        assert AuthServiceClient(tracking.url).get_user(writer_username("gone")).username == writer_username("gone")

    sync_writers(tracking.url, tracking.username, tracking.password, {})
    with (
        as_user(tracking.username, tracking.password),
        pytest.raises(Exception, match="not found|RESOURCE_DOES_NOT_EXIST"),
    ):
        AuthServiceClient(tracking.url).get_user(writer_username("gone"))


@pytest.mark.parametrize(
    "content, message",
    [(None, "cannot read .*: No such file or directory"), ("\n", "is empty"), (b"\xff\xfe", "not UTF-8 text")],
)
def test_an_unreadable_or_empty_password_file_stops_the_run_before_anything_is_logged(tmp_path, content, message):
    from services.training.runner import run
    from services.training.settings import TrainingSettings

    path = tmp_path / "password"
    if content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    settings = TrainingSettings(
        pipeline="perm",
        model_name="perm-model",
        entry_point="examples.diabetes:task",
        data=str(tmp_path / "none.csv"),
        tracking_password_file=str(path),
    )
    with pytest.raises(SystemExit, match=f"^TRAINING_TRACKING_PASSWORD_FILE: .*{message}$"):
        run(settings)


def test_a_missing_password_file_ends_the_run_command_with_one_line(tmp_path):
    """As the CronJob's container runs it: exit 1, the setting and the file on stderr, no traceback."""
    import subprocess

    from infra.stackfile import REPO_ROOT

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINING_", "MLFLOW_"))}
    env = {
        **clean,
        "TRAINING_PIPELINE": "perm",
        "TRAINING_MODEL_NAME": "perm-model",
        "TRAINING_ENTRY_POINT": "examples.diabetes:task",
        "TRAINING_DATA": str(tmp_path / "none.csv"),
        "TRAINING_TRACKING_PASSWORD_FILE": str(tmp_path / "missing"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.training", "run"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"TRAINING_TRACKING_PASSWORD_FILE: cannot read {tmp_path / 'missing'}: No such file or directory"
    ]


def test_git_is_run_without_the_tracking_password(tmp_path, monkeypatch):
    """Locally the password may be in the environment already (MLFLOW_TRACKING_PASSWORD): `git` still gets none."""
    from services.training.runner import code_revision
    from services.training.settings import TrainingSettings

    record, _ = recording_git_and_task(tmp_path, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-for-git")
    settings = TrainingSettings(pipeline="perm", model_name="m", entry_point="a:b", data="x.csv")
    assert code_revision(settings) == "fakerevision"
    assert "git rev-parse HEAD" in record.read_text() and "not-for-git" not in record.read_text()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "not-for-git"
