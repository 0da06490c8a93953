"""Authorization function of the tracking server (`authorization_function` in MLflow's
basic-auth config): basic auth as MLflow does it, plus read-only users.

MLflow's permissions are per resource: any authenticated user may create experiments, runs,
registered models and artifacts, and owns what it creates, so a "READ" user is not read-only.
Users whose name starts with `READ_ONLY_PREFIX` (one per model endpoint, created by
`ensure-user`) may only read: GET/HEAD, and POST on the few search routes that only read.
Anything else gets 403 before MLflow's own checks run. MLflow calls this function on its
Flask routes and, through its bridge, on the FastAPI-native ones (artifact uploads, OTLP
trace ingestion, gateway, jobs).
"""

from __future__ import annotations

import re

READ_ONLY_PREFIX = "serving-"
"""Model endpoints log in as `serving-<endpoint>`; everything such a user asks must only read."""
READ_METHODS = frozenset({"GET", "HEAD"})
READ_ONLY_POSTS = (
    "/mlflow/experiments/search",
    "/mlflow/runs/search",
    "/mlflow/logged-models/search",
    "/mlflow/registered-models/get-latest-versions",
)
"""POST routes that only read (search bodies are too big for a query string)."""
_API_PREFIX = re.compile(r"^(?:/[^/]+)*?/(?:ajax-)?api/\d+\.\d+")


def reader_username(endpoint: str) -> str:
    """The tracking user of a model endpoint."""
    return f"{READ_ONLY_PREFIX}{endpoint}"


def is_read_only_user(username: str | None) -> bool:
    return bool(username and username.startswith(READ_ONLY_PREFIX))


def is_read_request(method: str, path: str) -> bool:
    """True for requests that cannot change anything on the server."""
    if method in READ_METHODS:
        return True
    if method != "POST":
        return False
    match = _API_PREFIX.match(path)
    return match is not None and path[match.end():] in READ_ONLY_POSTS


def authenticate_request_with_read_only_users():
    """MLflow's basic auth, then 403 for a read-only user's request that is not a read."""
    from flask import request
    from mlflow.server.auth import authenticate_request_basic_auth, make_forbidden_response

    result = authenticate_request_basic_auth()
    username = getattr(result, "username", None)
    if is_read_only_user(username) and not is_read_request(request.method, request.path):
        return make_forbidden_response()
    return result
