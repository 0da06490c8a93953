"""Tracking-server entry point: `serve` (the server) and `migrate` (database migrations).

`serve` refuses to start with a missing or weak admin password, writes the basic-auth
config to a temporary file (the root file system is read-only), and replaces itself with
`mlflow server --app-name basic-auth --serve-artifacts ...`. `migrate` runs
`mlflow db upgrade` and creates the auth database when it does not exist; the platform runs
it as a Kubernetes Job that must finish before a new server version rolls out. `ensure-user`
creates the read-only user model servers log in as (a Job after the server is up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from urllib.parse import quote

from services.tracking.settings import WEAK_PASSWORDS, TrackingSettings


class StartupError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"tracking: {message}")


def _secret(arn: str, region: str | None) -> str:
    import boto3

    return boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)["SecretString"]


def _with_database_credentials(uri: str, settings: TrackingSettings) -> str:
    if not settings.database_secret_arn:
        return uri
    credentials = json.loads(_secret(settings.database_secret_arn, settings.region))
    return uri.replace("{user}", quote(credentials["username"], safe="")).replace("{password}", quote(credentials["password"], safe=""))


def resolve_secrets(settings: TrackingSettings) -> tuple[str, str]:
    """(admin password, Flask secret key), from the environment or Secrets Manager."""
    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    if password is None and settings.admin_password_secret_arn:
        password = _secret(settings.admin_password_secret_arn, settings.region)
    key = settings.flask_secret_key.get_secret_value() if settings.flask_secret_key else None
    if key is None and settings.flask_secret_key_secret_arn:
        key = _secret(settings.flask_secret_key_secret_arn, settings.region)
    if not password:
        raise StartupError("no admin password: set TRACKING_ADMIN_PASSWORD or TRACKING_ADMIN_PASSWORD_SECRET_ARN")
    if password.lower() in WEAK_PASSWORDS or len(password) < 16:
        raise StartupError("the admin password is a default or shorter than 16 characters; generate one (the platform does)")
    if not key or len(key) < 32:
        raise StartupError("no Flask secret key of 32+ characters: set TRACKING_FLASK_SECRET_KEY or TRACKING_FLASK_SECRET_KEY_SECRET_ARN")
    return password, key


def auth_config(settings: TrackingSettings, database_uri: str) -> str:
    # `%` is configparser's interpolation character; URL-encoded passwords contain it.
    return (
        "[mlflow]\n"
        f"default_permission = {settings.default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {settings.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def server_command(settings: TrackingSettings, backend_uri: str) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--app-name", "basic-auth",
        "--backend-store-uri", backend_uri,
        "--serve-artifacts",
        "--artifacts-destination", settings.artifacts_destination,
        "--host", settings.host,
        "--port", str(settings.port),
        "--workers", str(settings.workers),
        "--allowed-hosts", settings.allowed_hosts,
        "--cors-allowed-origins", settings.cors_allowed_origins,
    ]


def serve(settings: TrackingSettings) -> None:
    password, key = resolve_secrets(settings)
    backend = _with_database_credentials(settings.backend_store_uri, settings)
    auth_db = _with_database_credentials(settings.auth_database_uri, settings)
    config_dir = tempfile.mkdtemp(prefix="mlflow-auth-")
    config_path = os.path.join(config_dir, "basic_auth.ini")
    with open(os.open(config_path, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as fh:
        fh.write(auth_config(settings, auth_db))
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": config_path,
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.admin_username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key,
        # No background job runner: 2 processes instead of ~9 (see shared/reference/toolchain-notes.md).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for name in ("TRACKING_ADMIN_PASSWORD", "TRACKING_FLASK_SECRET_KEY"):
        env.pop(name, None)
    command = server_command(settings, backend)
    os.execvpe(command[0], command, env)


def migrate(settings: TrackingSettings) -> None:
    import subprocess

    import sqlalchemy

    backend = _with_database_credentials(settings.backend_store_uri, settings)
    auth_db = _with_database_credentials(settings.auth_database_uri, settings)
    if auth_db.startswith("postgresql"):
        url = sqlalchemy.engine.make_url(auth_db)
        admin = sqlalchemy.create_engine(url.set(database=sqlalchemy.engine.make_url(backend).database), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            exists = connection.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}).scalar()
            if not exists:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{url.database}"'))
                print(f"tracking: created database {url.database}")
    print("tracking: upgrading the tracking database schema")
    subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", backend], check=True)
    print("tracking: migrations done")


def ensure_user(settings: TrackingSettings) -> None:
    """Create the read-only user model servers log in as, or reset its password to the stored one."""
    from mlflow.exceptions import RestException
    from mlflow.server.auth.client import AuthServiceClient

    admin_password, _ = resolve_secrets(settings)
    password = settings.reader_password.get_secret_value() if settings.reader_password else None
    if password is None and settings.reader_password_secret_arn:
        password = _secret(settings.reader_password_secret_arn, settings.region)
    if not password or len(password) < 16:
        raise StartupError("no reader password of 16+ characters: set TRACKING_READER_PASSWORD or TRACKING_READER_PASSWORD_SECRET_ARN")
    os.environ["MLFLOW_TRACKING_USERNAME"] = settings.admin_username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    client = AuthServiceClient(settings.server_url)
    try:
        client.create_user(settings.reader_username, password)
        print(f"tracking: created user {settings.reader_username}")
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(settings.reader_username, password)
        print(f"tracking: user {settings.reader_username} exists; password synchronised")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tracking", description="MLflow tracking server of the platform")
    parser.add_argument("command", choices=["serve", "migrate", "ensure-user"])
    args = parser.parse_args(argv)
    settings = TrackingSettings()
    {"serve": serve, "migrate": migrate, "ensure-user": ensure_user}[args.command](settings)


if __name__ == "__main__":
    main()
