"""`ensure-user`: the read-only users of the model endpoints, kept in step with the stack.

Each endpoint logs in as its own user (`serving-<endpoint>`, read-only by name, see
services/tracking/auth.py) with a password the platform generated and keeps in Secrets
Manager. This creates missing users, resets every password to the stored one, and deletes
read-only users whose endpoint is gone (their secrets are deleted with the endpoint), all
through the server's REST API as admin.
"""

from __future__ import annotations

from typing import Mapping

from services.tracking.auth import is_read_only_user


def _call(host_creds, path: str, method: str, payload: dict | None = None) -> dict:
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = verify_rest_response(
        http_request(host_creds, path, method, **({"json": payload} if payload else {})), path
    )
    return response.json() if response.content else {}


def sync_readers(server_url: str, admin_username: str, admin_password: str, passwords: Mapping[str, str]) -> None:
    from mlflow.exceptions import RestException
    from mlflow.server.auth.routes import CREATE_USER, DELETE_USER, LIST_USERS, UPDATE_USER_PASSWORD
    from mlflow.utils.rest_utils import MlflowHostCreds

    creds = MlflowHostCreds(server_url, username=admin_username, password=admin_password)
    for username, password in sorted(passwords.items()):
        try:
            _call(creds, CREATE_USER, "POST", {"username": username, "password": password})
            print(f"tracking: created read-only user {username}")
        except RestException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            _call(creds, UPDATE_USER_PASSWORD, "PATCH", {"username": username, "password": password})
            print(f"tracking: read-only user {username} exists; password synchronised")
    existing = [u["username"] for u in _call(creds, LIST_USERS, "GET").get("users", [])]
    for username in existing:
        if is_read_only_user(username) and username not in passwords:
            _call(creds, DELETE_USER, "DELETE", {"username": username})
            print(f"tracking: deleted read-only user {username} (no such endpoint any more)")
