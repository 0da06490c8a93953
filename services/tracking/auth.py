"""Authorization function of the tracking server (`authorization_function` in MLflow's
basic-auth config): basic auth as MLflow does it, plus two kinds of scoped users.

MLflow's permissions are per resource: any authenticated user may create experiments, runs,
registered models and artifacts, and owns what it creates, so a "READ" user is not read-only
and an "EDIT" grant on one model does not stop a user from creating others. The platform's own
users are therefore limited by name, before MLflow's own checks run:

- `serving-<endpoint>` (READ_ONLY_PREFIX, one per model endpoint) may only read: GET/HEAD, and
  POST on the few search routes that only read.
- `training-<pipeline>` (WRITER_PREFIX, one per training pipeline, see writers.py) may read,
  and write only through PIPELINE_WRITES: the routes a training run uses to log a run and its
  model into an experiment, and to register a version of a model and set its tags and aliases.
  Which experiment and which model is MLflow's own per-resource check on each of those routes:
  `ensure-user` grants the user EDIT on its pipeline's experiment and model, and everything else
  falls to the server's `default_permission` (READ; settings.py refuses EDIT and MANAGE while
  such users exist). Where EDIT is broader than a training run (artifact uploads, reopening a
  run or logged model, the source of a new version), pipeline_scope.py narrows it to the
  pipeline's own running run or pending logged model. The one creation it may ask for is
  `registered-models/create` under the name of a model it holds a grant on (MLflow's
  `register_model` asks for it first and accepts "already exists"); any other name, any new
  experiment, deletes, renames, users, permissions, the gateway, traces and the rest get 403.

Routes are recognised only under MLflow's own API prefixes, `/api/<N.N>` and `/ajax-api/<N.N>`
at the start of the path (the server runs without `--static-prefix`, see entrypoint.server_command),
so a path that merely contains one, such as `/gateway/proxy/<endpoint>/api/2.0/mlflow/runs/create`,
is neither a pipeline write nor a read-only search. Anything refused here gets 403. MLflow calls
this function on its Flask routes and, through its bridge, on the FastAPI-native ones (artifact
uploads and downloads, OTLP trace ingestion, gateway, jobs); the bridge passes no request body,
so the decisions that read one (registered-models/create, model-versions/create, runs/update)
are all on Flask routes; an upload is judged by its path alone.
"""

from __future__ import annotations

import re

READ_ONLY_PREFIX = "serving-"
"""Model endpoints log in as `serving-<endpoint>`; everything such a user asks must only read."""
WRITER_PREFIX = "training-"
"""Training pipelines log in as `training-<pipeline>`; they write through PIPELINE_WRITES only."""
READ_METHODS = frozenset({"GET", "HEAD"})
READ_ONLY_POSTS = (
    "/mlflow/experiments/search",
    "/mlflow/runs/search",
    "/mlflow/logged-models/search",
    "/mlflow/registered-models/get-latest-versions",
)
"""POST routes that only read (search bodies are too big for a query string)."""
PIPELINE_WRITES = tuple(
    (method, re.compile(pattern))
    for method, pattern in (
        # a run in the pipeline's experiment: create, log, tag, end (MLflow checks EDIT on the run's experiment;
        # pipeline_scope: `update` only while the run is RUNNING)
        ("POST", r"/mlflow/runs/(?:create|update|log-metric|log-parameter|log-batch|log-inputs|outputs|set-tag)"),
        # the run's logged model (MLflow 3): create, finalize, tag, params (EDIT on its experiment; pipeline_scope:
        # finalize only while it is PENDING)
        ("POST", r"/mlflow/logged-models"),
        ("PATCH", r"/mlflow/logged-models/[^/]+(?:/tags)?"),
        ("POST", r"/mlflow/logged-models/[^/]+/params"),
        # artifact uploads through the server's proxy (EDIT on the experiment the path names; pipeline_scope: only
        # into a RUNNING run or a PENDING logged model of its own experiment)
        ("PUT", r"/mlflow-artifacts/artifacts/.+"),
        # a version of the pipeline's model, its tags and aliases (EDIT on the registered model; pipeline_scope: a
        # version only from a run or logged model of its own experiment)
        ("POST", r"/mlflow/model-versions/(?:create|set-tag)"),
        ("POST", r"/mlflow/registered-models/(?:alias|set-tag)"),
    )
)
"""(method, path after the API prefix) a pipeline user may write through; the training flow's calls, nothing more."""
CREATE_REGISTERED_MODEL = "/mlflow/registered-models/create"
_DECISION = "platform_scoped_users_decision"
"""Where a request's decision is kept (flask.g), see authenticate_request_with_scoped_users."""
ARTIFACT_UPLOAD = re.compile(r"/mlflow-artifacts/artifacts/(?P<path>.+)")
FINALIZE_LOGGED_MODEL = re.compile(r"/mlflow/logged-models/(?P<model_id>[^/]+)")
_API_PREFIX = re.compile(r"/(?:ajax-)?api/\d+\.\d+(?=/)")
"""MLflow's REST and UI API prefixes (handlers._get_rest_path, _get_ajax_path), only at the start of the path."""


def reader_username(endpoint: str) -> str:
    """The tracking user of a model endpoint."""
    return f"{READ_ONLY_PREFIX}{endpoint}"


def is_read_only_user(username: str | None) -> bool:
    return bool(username and username.startswith(READ_ONLY_PREFIX))


def is_pipeline_user(username: str | None) -> bool:
    return bool(username and username.startswith(WRITER_PREFIX))


def _api_route(path: str) -> str | None:
    """The path after a leading `/api/2.0` (or `/ajax-api/3.0`, ...), or None for a path outside the API."""
    match = _API_PREFIX.match(path)
    return path[match.end() :] if match else None


def is_read_request(method: str, path: str) -> bool:
    """True for requests that cannot change anything on the server."""
    if method in READ_METHODS:
        return True
    return method == "POST" and _api_route(path) in READ_ONLY_POSTS


def is_pipeline_write(method: str, path: str) -> bool:
    """True for the writes of a training run (PIPELINE_WRITES); MLflow then checks the resource."""
    route = _api_route(path)
    return route is not None and any(method == m and pattern.fullmatch(route) for m, pattern in PIPELINE_WRITES)


def _json_body() -> dict:
    """The request's JSON object as MLflow's handlers parse it (`get_json(force=True)`), or {} for anything else."""
    from flask import request

    body = request.get_json(force=True, silent=True)
    return body if isinstance(body, dict) else {}


def pipeline_may(username: str, method: str, path: str) -> bool:
    """What a `training-<pipeline>` user may ask beyond reads (see the module docstring)."""
    from services.tracking import pipeline_scope

    route = _api_route(path)
    if route is None:
        return False
    if method == "POST" and route == CREATE_REGISTERED_MODEL:
        return pipeline_scope.holds_model_grant(username, _json_body().get("name"))
    if not is_pipeline_write(method, path):
        return False
    if method == "PUT" and (upload := ARTIFACT_UPLOAD.fullmatch(route)):
        return pipeline_scope.may_upload_artifact(username, upload["path"])
    if method == "PATCH" and (finalize := FINALIZE_LOGGED_MODEL.fullmatch(route)):
        return pipeline_scope.may_finalize_logged_model(username, finalize["model_id"])
    if method == "POST" and route == "/mlflow/runs/update":
        return pipeline_scope.may_update_run(username, _json_body())
    if method == "POST" and route == "/mlflow/model-versions/create":
        return pipeline_scope.may_create_model_version(username, _json_body())
    return True


def _decide():
    from flask import request
    from mlflow.server.auth import authenticate_request_basic_auth, make_forbidden_response

    result = authenticate_request_basic_auth()
    username = getattr(result, "username", None)
    if is_read_request(request.method, request.path):
        return result
    if is_read_only_user(username):
        return make_forbidden_response()
    if username and is_pipeline_user(username) and not pipeline_may(username, request.method, request.path):
        return make_forbidden_response()
    return result


def authenticate_request_with_scoped_users():
    """MLflow's basic auth, then 403 for a scoped user's request that its scope does not cover.

    MLflow calls this more than once per request: before the handler, and again in after-request handlers (to ask
    whether the sender is an admin, e.g. `redact_finalize_logged_model_run_ids`), when the write has happened and a
    PENDING logged model is READY. The decision is made once, on the request as it arrived, and kept for the request
    (Flask's `g` lives as long as its request)."""
    from flask import g

    if _DECISION not in g:
        setattr(g, _DECISION, _decide())
    return getattr(g, _DECISION)
