"""Tracking-server entry point: `serve` (the server), `migrate` (database) and `ensure-user`
(read-only users of the model endpoints).

`serve` refuses to start with a missing or weak admin password, writes the basic-auth config
to a private temporary file (the root file system is read-only), and replaces itself with
`mlflow server --app-name basic-auth --serve-artifacts ...`; the backend URI, which holds the
database password, goes in the environment (`MLFLOW_BACKEND_STORE_URI`), never in the argv,
which any process on the node can read. `migrate` upgrades both schemas and keeps the server's
own database role (see services/tracking/database.py); the platform runs it as a Kubernetes
Job that must finish before a new server version rolls out. `ensure-user` creates or updates
one read-only user per model endpoint (a Job after the server is up).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.env_settings import UnknownSettingError
from services.tracking.auth import READ_ONLY_PREFIX
from services.tracking.credentials import (
    DatabaseLogin,
    StartupError,
    has_placeholders,
    master_login,
    require_strong,
    resolve,
    with_login,
)
from services.tracking.settings import TrackingSettings

AUTHORIZATION_FUNCTION = "services.tracking.auth:authenticate_request_with_scoped_users"
APP_ROOT = Path(__file__).resolve().parents[2]
"""Where `services` is importable from: the server's workers import the authorization function."""


def resolve_secrets(settings: TrackingSettings) -> tuple[str, str]:
    """(admin password, Flask secret key), from the environment or Secrets Manager."""
    password = resolve(settings.admin_password, settings.admin_password_secret_arn, settings.region)
    password = require_strong(
        "admin password",
        password,
        setting="TRACKING_ADMIN_PASSWORD or TRACKING_ADMIN_PASSWORD_SECRET_ARN",
        context=[settings.admin_username],
    )
    key = resolve(settings.flask_secret_key, settings.flask_secret_key_secret_arn, settings.region)
    if not key or len(key) < 32:
        raise StartupError(
            "no Flask secret key of 32+ characters: set TRACKING_FLASK_SECRET_KEY or "
            "TRACKING_FLASK_SECRET_KEY_SECRET_ARN"
        )
    return password, key


def server_login(settings: TrackingSettings) -> DatabaseLogin | None:
    """The server's own database login (`database_user`), or None when the URIs carry none."""
    if not has_placeholders(settings.backend_store_uri):
        return None
    password = resolve(settings.database_password, settings.database_password_secret_arn, settings.region)
    password = require_strong(
        "database password",
        password,
        setting="TRACKING_DATABASE_PASSWORD or TRACKING_DATABASE_PASSWORD_SECRET_ARN",
        context=[settings.database_user],
    )
    return DatabaseLogin(settings.database_user, password)


def auth_config(settings: TrackingSettings, database_uri: str) -> str:
    # `%` is configparser's interpolation character; URL-encoded passwords contain it.
    return (
        "[mlflow]\n"
        f"default_permission = {settings.default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {settings.admin_username}\n"
        f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
    )


def server_command(settings: TrackingSettings) -> list[str]:
    """The argv of the server: no credentials (the backend URI travels in the environment)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        settings.artifacts_destination,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--allowed-hosts",
        settings.allowed_hosts,
        "--cors-allowed-origins",
        settings.cors_allowed_origins,
    ]


def server_environment(
    settings: TrackingSettings, *, backend_uri: str, config_path: str, password: str, key: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_AUTH_CONFIG_PATH": config_path,
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.admin_username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key,
        # Routes without an authorization decision answer 403 (MLflow's default; pinned here).
        "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",
        # No background job runner: 2 processes instead of ~9 (see shared/reference/toolchain-notes.md).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(APP_ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in (
        "TRACKING_ADMIN_PASSWORD",
        "TRACKING_FLASK_SECRET_KEY",
        "TRACKING_DATABASE_PASSWORD",
        "TRACKING_READER_PASSWORDS",
        "TRACKING_WRITERS",
    ):
        env.pop(name, None)
    return env


def serve(settings: TrackingSettings) -> None:
    password, key = resolve_secrets(settings)
    login = server_login(settings)
    backend = with_login(settings.backend_store_uri, login)
    auth_db = with_login(settings.auth_database_uri, login)
    config_dir = tempfile.mkdtemp(prefix="mlflow-auth-")
    config_path = os.path.join(config_dir, "basic_auth.ini")
    with open(os.open(config_path, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as fh:
        fh.write(auth_config(settings, auth_db))
    command = server_command(settings)
    os.execvpe(
        command[0],
        command,
        server_environment(settings, backend_uri=backend, config_path=config_path, password=password, key=key),
    )


def migrate(settings: TrackingSettings) -> None:
    """Schemas up to date; with placeholder URIs, as the master user, and the server's role in step."""
    from sqlalchemy.engine import make_url

    from services.tracking import database

    master = (
        master_login(settings.database_secret_arn, settings.region)
        if has_placeholders(settings.backend_store_uri)
        else None
    )
    backend = with_login(settings.backend_store_uri, master)
    auth_db = with_login(settings.auth_database_uri, master)
    if database.is_postgres(auth_db):
        auth_name = make_url(auth_db).database
        if auth_name is None:  # ensure_database would fail quoting None the same way, after connecting
            raise AttributeError(f"{make_url(auth_db).render_as_string(hide_password=True)} names no database")
        if database.ensure_database(backend, auth_name):
            print(f"tracking: created database {auth_name}")
    print("tracking: upgrading the tracking and auth database schemas")
    database.upgrade_tracking_schema(backend)
    database.upgrade_auth_schema(auth_db)
    if master is not None:
        login = server_login(settings)
        assert login is not None
        database.ensure_role(backend, login)
        for uri in (backend, auth_db):
            database.grant_data_access(uri, login.username)
        print(f"tracking: database role {login.username} has data access to both databases")
    print("tracking: migrations done")


def reader_passwords(settings: TrackingSettings) -> dict[str, str]:
    """Each read-only user's password, checked: names must carry the read-only prefix."""
    wanted = {name: secret.get_secret_value() for name, secret in settings.reader_passwords.items()}
    for name, arn in settings.readers.items():
        wanted.setdefault(name, resolve(None, arn, settings.region) or "")
    for name, password in wanted.items():
        if not name.startswith(READ_ONLY_PREFIX):
            raise StartupError(f"reader {name!r}: read-only user names start with {READ_ONLY_PREFIX!r}")
        require_strong(
            f"password of reader {name}",
            password,
            setting="TRACKING_READERS or TRACKING_READER_PASSWORDS",
            context=[name],
        )
    return wanted


def ensure_user(settings: TrackingSettings) -> None:
    """Create each endpoint's read-only user and each training pipeline's user, or reset its
    password to the stored one; delete such users of endpoints and pipelines that are gone."""
    from services.tracking.readers import sync_readers
    from services.tracking.writers import sync_writers, writers_from_settings

    admin_password, _ = resolve_secrets(settings)
    sync_readers(settings.server_url, settings.admin_username, admin_password, reader_passwords(settings))
    sync_writers(settings.server_url, settings.admin_username, admin_password, writers_from_settings(settings))


def _validation_message(error) -> str:
    """`TRACKING_<FIELD>: <problem>`; a check across fields names its variables in its own message."""
    if not error["loc"]:
        return error["msg"].removeprefix("Value error, ")
    return f"TRACKING_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"


def load_settings() -> TrackingSettings:
    """The settings, or a StartupError naming each bad `TRACKING_*` variable (no traceback)."""
    try:
        return TrackingSettings()
    except UnknownSettingError as exc:  # a TRACKING_* variable that names no setting (a typo, a removed setting)
        raise StartupError(exc.message) from None
    except ValidationError as exc:
        raise StartupError("; ".join(_validation_message(e) for e in exc.errors())) from None
    except SettingsError as exc:  # a JSON value (TRACKING_READERS) that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        raise StartupError(
            f"TRACKING_{field.group(1).upper() if field else '?'}: not valid JSON ({exc.__cause__})"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tracking", description="MLflow tracking server of the platform")
    parser.add_argument("command", choices=["serve", "migrate", "ensure-user"])
    args = parser.parse_args(argv)
    settings = load_settings()
    {"serve": serve, "migrate": migrate, "ensure-user": ensure_user}[args.command](settings)


if __name__ == "__main__":
    main()
