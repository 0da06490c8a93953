"""What a `training-<pipeline>` user may write, judged by the resource a request names (services/tracking/auth.py
judges the route first; MLflow's own per-resource check runs after both).

MLflow's EDIT on an experiment is broader than a training run needs. It lets the holder overwrite any artifact
under the experiment, including a finished run's files and a READY logged model's `model.pkl`, the files a served
model version points at; set a finished run back to RUNNING or a READY logged model back to PENDING; and register
as a version of a model it may update any run or logged model it can read, another registered model's version, or
an arbitrary URI (`validate_can_create_model_version` only asks READ on the source). A pipeline user is held to
what a training run does:

- uploads (`PUT .../mlflow-artifacts/artifacts/<path>`) go only into `<own exp>/<run_id>/artifacts/...` of a run
  that is RUNNING, or `<own exp>/models/<model_id>/artifacts/...` of a logged model that is PENDING: once a run
  ends or a logged model is finalized, its files stay as they are;
- `runs/update` only on a run of its own experiment that is RUNNING, and finalizing a logged model
  (`PATCH logged-models/<id>`) only while it is PENDING, so neither can be reopened;
- `model-versions/create` only from its own experiment: the `model_id` and `run_id` it names, and the source
  (`models:/<logged model id>`, `runs:/<run_id>/...`, or a URI inside that run's or logged model's artifact root),
  must all be of its own experiment; a source naming neither (`s3://...`, `models:/<name>/<version>`) is refused.

"Its own experiment" is one on which the admin granted it a permission that can update (`ensure-user`: EDIT on
`pipelines/<pipeline>`); it cannot create experiments, so it holds no other. Paths are canonicalised with MLflow's
`validate_path_is_safe`, the function the upload handler and MLflow's artifact validators apply, and read in the
layout those validators read (`<experiment id>/<run id>/artifacts/...`, `<experiment id>/models/<id>/artifacts/...`).
The runs and logged models are looked up in the tracking store the server itself uses (MLflow 3.17).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Callable

RUNNING = "RUNNING"
PENDING = "PENDING"
UPLOAD_PATH = re.compile(r"(?P<experiment>\d+)/(?:models/(?P<model_id>[^/]+)|(?P<run_id>[^/]+))/artifacts/.+")
"""An upload's canonical path: into a run's artifacts, or into a logged model's."""


def _permission_can_update(get_permission: Callable[[str, str], Any], resource_id: str, username: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.permissions import get_permission as permission_named

    try:
        return permission_named(get_permission(resource_id, username).permission).can_update
    except MlflowException:  # no grant on it
        return False


def holds_model_grant(username: str, name: object) -> bool:
    """True when the admin granted `username` a permission that can update registered model `name`."""
    from mlflow.server.auth import store

    return (
        isinstance(name, str)
        and bool(name)
        and _permission_can_update(store.get_registered_model_permission, name, username)
    )


def holds_experiment_grant(username: str, experiment_id: object) -> bool:
    """True when the admin granted `username` a permission that can update experiment `experiment_id`."""
    from mlflow.server.auth import store

    return (
        isinstance(experiment_id, str)
        and bool(experiment_id)
        and _permission_can_update(store.get_experiment_permission, experiment_id, username)
    )


def _fetch(getter: Callable[[str], Any], resource_id: object) -> Any:
    from mlflow.exceptions import MlflowException

    if not isinstance(resource_id, str) or not resource_id:
        return None
    try:
        return getter(resource_id)
    except MlflowException:  # no such resource
        return None


def own_run(username: str, run_id: object) -> Any:
    """The run, when it is in an experiment `username` holds a grant on; else None."""
    from mlflow.server.handlers import _get_tracking_store

    run = _fetch(_get_tracking_store().get_run, run_id)
    return run if run is not None and holds_experiment_grant(username, run.info.experiment_id) else None


def own_logged_model(username: str, model_id: object) -> Any:
    """The logged model, when it is in an experiment `username` holds a grant on; else None."""
    from mlflow.server.handlers import _get_tracking_store

    model = _fetch(_get_tracking_store().get_logged_model, model_id)
    return model if model is not None and holds_experiment_grant(username, model.experiment_id) else None


def canonical_artifact_path(path: str) -> str | None:
    """The path as the upload handler resolves it (decoded, no `..`, relative), or None when it refuses it."""
    from mlflow.utils.uri import validate_path_is_safe

    try:
        return validate_path_is_safe(path).lstrip("/")
    except Exception:  # MlflowException for an unsafe path, ValueError for one that never stops decoding
        return None


def may_upload_artifact(username: str, artifact_path: str) -> bool:
    """An upload into a RUNNING run or a PENDING logged model of the user's own experiment (see the docstring)."""
    canonical = canonical_artifact_path(artifact_path)
    match = UPLOAD_PATH.fullmatch(canonical) if canonical else None
    if match is None:
        return False
    if match["model_id"] is not None:
        model = own_logged_model(username, match["model_id"])
        return model is not None and model.experiment_id == match["experiment"] and model.status.name == PENDING
    run = own_run(username, match["run_id"])
    return run is not None and run.info.experiment_id == match["experiment"] and run.info.status == RUNNING


def may_update_run(username: str, body: dict) -> bool:
    """`runs/update` of a RUNNING run of its own experiment (the handler reads `run_id`, else `run_uuid`)."""
    run = own_run(username, body["run_id"] if "run_id" in body else body.get("run_uuid"))
    return run is not None and run.info.status == RUNNING


def may_finalize_logged_model(username: str, model_id: str) -> bool:
    """`PATCH logged-models/<id>` (finalize) of a PENDING logged model of its own experiment."""
    model = own_logged_model(username, model_id)
    return model is not None and model.status.name == PENDING


def _source_is_own(username: str, source: str, roots: list[str]) -> bool:
    """The version's source names a logged model or run of the user's experiment, or lies inside `roots`."""
    from mlflow.server.handlers import _is_uri_within_root
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import _parse_model_uri

    scheme = urllib.parse.urlparse(source).scheme
    try:
        if scheme == "models":
            return own_logged_model(username, _parse_model_uri(source).model_id) is not None
        if scheme == "runs":
            return own_run(username, RunsArtifactRepository.parse_runs_uri(source)[0]) is not None
    except Exception:  # an unparsable models:/ or runs:/ URI
        return False
    return any(_is_uri_within_root(source, root) for root in roots)


def may_create_model_version(username: str, body: dict) -> bool:
    """`model-versions/create` from a run or logged model of its own experiment (see the module docstring)."""
    source = body.get("source")
    if not isinstance(source, str) or not ("model_id" in body or "run_id" in body):
        return False  # a version tied to nothing of the pipeline's: an arbitrary URI
    roots = []
    if "model_id" in body:
        model = own_logged_model(username, body["model_id"])
        if model is None:
            return False
        roots.append(model.artifact_location)
    if "run_id" in body:
        run = own_run(username, body["run_id"])
        if run is None:
            return False
        roots.append(run.info.artifact_uri)
    return _source_is_own(username, source, roots)
