"""`ensure-user`: the tracking users of the training pipelines, kept in step with the stack.

Each pipeline logs in as its own user (`training-<pipeline>`) with a password the platform
generated. That user may write to exactly two things: the pipeline's experiment
(`pipelines/<pipeline>`) and the registered model it trains, each granted EDIT (log runs;
create versions, set their tags and aliases); everything else it may only read (the server's
`default_permission` is READ), and the server's authorization function (services/tracking/auth.py)
lets it write only through the routes a training run uses, so a pipeline can neither change
another team's model, create experiments or models of its own, nor delete its own. The admin
creates the experiment and the model when they do not exist yet, so the grant always has
something to name. Users of pipelines that are gone are deleted.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

from services.tracking.auth import WRITER_PREFIX

WRITE_PERMISSION = "EDIT"


def writer_username(pipeline: str) -> str:
    """The tracking user of a training pipeline."""
    return f"{WRITER_PREFIX}{pipeline}"


def pipeline_experiment(pipeline: str) -> str:
    """The experiment a pipeline's runs are logged in (services/training/settings.py uses the same)."""
    return f"pipelines/{pipeline}"


@dataclass(frozen=True)
class Writer:
    pipeline: str
    model: str
    password: str


def writers_from_settings(settings) -> dict[str, Writer]:
    """`TRACKING_WRITERS` resolved: each pipeline's user with its password, checked for strength."""
    from services.tracking.credentials import require_strong, resolve

    found = {}
    for pipeline, spec in settings.writers.items():
        username = writer_username(pipeline)
        secret = resolve(spec.password, spec.password_secret_arn, settings.region)
        password = require_strong(
            f"password of pipeline user {username}", secret, setting="TRACKING_WRITERS", context=[username, pipeline]
        )
        found[username] = Writer(pipeline, spec.model, password)
    return found


def _already_exists(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def _grant(auth, username: str, resource_type: str, resource_id: str) -> None:
    """Grant WRITE_PERMISSION on one resource, replacing whatever grant the user had on it."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, WRITE_PERMISSION)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, WRITE_PERMISSION)


def _ensure_resources(client, writer: Writer) -> str:
    """The pipeline's experiment and registered model, created by the admin if missing; returns the experiment id."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(writer.model)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    experiment = client.get_experiment_by_name(pipeline_experiment(writer.pipeline))
    return experiment.experiment_id if experiment else client.create_experiment(pipeline_experiment(writer.pipeline))


@contextmanager
def as_user(username: str, password: str):
    """MLflow's clients read their credentials from the environment: set them for this block only."""
    import os

    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict(zip(keys, (username, password), strict=True)))
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def sync_writers(server_url: str, admin_username: str, admin_password: str, writers: Mapping[str, Writer]) -> None:
    """Create or update each pipeline's user with its grants; delete `training-` users of pipelines that are gone."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.server.auth.routes import LIST_USERS
    from mlflow.utils.rest_utils import MlflowHostCreds

    from services.tracking.readers import _call

    with as_user(admin_username, admin_password):
        auth, client = AuthServiceClient(server_url), MlflowClient(server_url)
        for username, writer in sorted(writers.items()):
            try:
                auth.create_user(username, writer.password)
                print(f"tracking: created pipeline user {username}")
            except MlflowException as exc:
                if not _already_exists(exc):
                    raise
                auth.update_user_password(username, writer.password)
                print(f"tracking: pipeline user {username} exists; password synchronised")
            _grant(auth, username, "experiment", _ensure_resources(client, writer))
            _grant(auth, username, "registered_model", writer.model)
            print(
                f"tracking: {username} may write to experiment {pipeline_experiment(writer.pipeline)} and model "
                f"{writer.model}"
            )
        existing = _call(
            MlflowHostCreds(server_url, username=admin_username, password=admin_password), LIST_USERS, "GET"
        ).get("users", [])
        for user in existing:
            if user["username"].startswith(WRITER_PREFIX) and user["username"] not in writers:
                auth.delete_user(user["username"])
                print(f"tracking: deleted pipeline user {user['username']} (no such pipeline any more)")
