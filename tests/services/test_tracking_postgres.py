"""The tracking server on a real PostgreSQL (TLS only, like RDS with `rds.force_ssl`), with the
URIs the component builds and secrets in moto's Secrets Manager:

- the driver the URI names is the one the image ships (issue 11, item 5);
- RDS's weekly master-password rotation does not reach the running server (issue 11, item 12);
- no process command line and no SQL statement carries a database password (issue 13, item 12).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from components.tracking import database_uri
from infra.processes import LOOPBACK, Server, free_port, start, wait_http
from infra.stackfile import REPO_ROOT
from tests.services.conftest import AWS_ENV, moto_client, tracking_env
from tests.services.postgres import Postgres, start_postgres
from tests.services.test_tracking import run_entrypoint

MASTER = "mlflow"
"""The RDS master user name the component sets (`username="mlflow"`)."""
SERVER_ROLE = "mlflow_server"


@dataclass
class Platform:
    postgres: Postgres
    server: Server
    env: dict[str, str]
    secretsmanager: object
    master_arn: str
    master_password: str
    server_password: str
    admin_password: str


@pytest.fixture(scope="module")
def platform(moto, tmp_path_factory):
    """RDS as the component sets it up (a master user owning database `mlflow`), its secrets in
    Secrets Manager, `migrate` run once, and the server started on the component's URIs."""
    tmp = tmp_path_factory.mktemp("tracking-pg")
    postgres = start_postgres(tmp / "postgres")
    try:
        master_password = secrets.token_urlsafe(24)
        postgres.sql(f"CREATE ROLE {MASTER} LOGIN CREATEDB CREATEROLE PASSWORD '{master_password}'")
        postgres.sql(f"CREATE DATABASE mlflow OWNER {MASTER}")
        sm = moto_client("secretsmanager", moto.url)
        master_arn = sm.create_secret(
            Name=f"rds!db-{uuid.uuid4()}", SecretString=json.dumps({"username": MASTER, "password": master_password})
        )["ARN"]
        server_password = secrets.token_urlsafe(24)
        server_arn = sm.create_secret(Name=f"tracking-database-password-{uuid.uuid4()}", SecretString=server_password)[
            "ARN"
        ]
        admin_password = secrets.token_urlsafe(18)
        port = free_port()
        env = {
            **os.environ,
            **tracking_env(tmp, port, moto.url, admin_password),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto.url,
            # exactly what the component builds (sslmode=require included)
            "TRACKING_BACKEND_STORE_URI": database_uri(postgres.address, "mlflow"),
            "TRACKING_AUTH_DATABASE_URI": database_uri(postgres.address, "mlflow_auth"),
            "TRACKING_DATABASE_SECRET_ARN": master_arn,
            "TRACKING_DATABASE_PASSWORD_SECRET_ARN": server_arn,
        }
        migrated = run_entrypoint("migrate", env)
        assert migrated.returncode == 0, migrated.stderr
        server = start(
            "tracking-pg",
            [sys.executable, "-m", "services.tracking.entrypoint", "serve"],
            url=f"http://{LOOPBACK}:{port}",
            log_dir=tmp,
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            wait_http(server, "/health", timeout=120)
            yield Platform(postgres, server, env, sm, master_arn, master_password, server_password, admin_password)
        finally:
            server.stop()
    finally:
        postgres.stop()


@pytest.fixture
def client(platform, monkeypatch):
    import mlflow

    for key, value in {
        **AWS_ENV,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": platform.admin_password,
    }.items():
        monkeypatch.setenv(key, value)
    return mlflow.MlflowClient(tracking_uri=platform.server.url)


def log_a_run(client) -> str:
    """An experiment (get or create), a run with a metric and an artifact, all through the server."""
    name = "postgres-test"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "rmse", 1.5)
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_migrate_and_serve_on_postgres_with_the_component_uris(platform, client):
    uri = platform.env["TRACKING_BACKEND_STORE_URI"]
    assert uri.startswith("postgresql+psycopg2://{user}:{password}@") and uri.endswith("/mlflow?sslmode=require")
    run_id = log_a_run(client)
    assert client.get_run(run_id).data.metrics == {"rmse": 1.5}
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]
    assert (
        platform.postgres.sql(f"SELECT status FROM runs WHERE run_uuid = '{run_id}'", database="mlflow") == "FINISHED"
    )
    # the server holds connections as its own role only, all over TLS
    sessions = platform.postgres.sql(
        "SELECT usename || ':' || ssl FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) WHERE client_addr IS NOT NULL"
    ).split()
    assert sessions and set(sessions) == {f"{SERVER_ROLE}:true"}, sessions


def test_the_servers_role_reads_and_writes_data_but_cannot_change_the_schema(platform):
    connection = psycopg2.connect(
        host=LOOPBACK,
        port=platform.postgres.port,
        dbname="mlflow",
        user=SERVER_ROLE,
        password=platform.server_password,
        sslmode="require",
    )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM experiments")
            assert cursor.fetchone()[0] >= 1
            for statement in ("CREATE TABLE intruder (i int)", "DROP TABLE runs", "ALTER TABLE runs ADD COLUMN x int"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cursor.execute(statement)
    finally:
        connection.close()


def test_a_master_password_rotation_does_not_reach_the_running_server(platform, client):
    """What RDS does every 7 days: a new master password in the database and in its secret.
    The server's connections are dropped so it must log in again; it does, as its own role.
    The next `migrate` reads the new master password."""
    rotated = secrets.token_urlsafe(24)
    platform.postgres.sql(f"ALTER ROLE {MASTER} PASSWORD '{rotated}'")
    platform.secretsmanager.put_secret_value(
        SecretId=platform.master_arn, SecretString=json.dumps({"username": MASTER, "password": rotated})
    )
    dropped = platform.postgres.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_addr IS NOT NULL"
    )
    assert int(dropped) >= 1  # the server had connections open

    run_id = log_a_run(client)  # new connections, no restart
    assert client.get_run(run_id).info.status == "FINISHED"
    assert platform.server.process.poll() is None
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=LOOPBACK,
            port=platform.postgres.port,
            dbname="mlflow",
            user=MASTER,
            password=platform.master_password,
            sslmode="require",
        )
    again = run_entrypoint("migrate", platform.env)
    assert again.returncode == 0, again.stderr


def process_group(pgid: int) -> dict[int, list[str]]:
    """argv of every live process in process group `pgid`, as any user on the node can read it."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return found


def test_no_command_line_holds_a_database_password(platform):
    from urllib.parse import quote

    commands = process_group(platform.server.process.pid)
    assert any("server" in argv and "mlflow" in argv for argv in commands.values()), commands
    assert len(commands) >= 2, commands  # the exec'd `mlflow server` and its worker(s)
    for argv in commands.values():
        text = " ".join(argv)
        for secret in (platform.server_password, platform.master_password, platform.admin_password):
            assert secret not in text and quote(secret, safe="") not in text, argv


def test_no_sql_statement_carries_the_servers_password_in_clear(platform):
    """`log_statement=all`: the role's password reached PostgreSQL as a SCRAM verifier only."""
    log = platform.postgres.server.log.read_text(errors="replace")
    assert f'ROLE "{SERVER_ROLE}" WITH LOGIN' in log or f"ROLE {SERVER_ROLE} WITH LOGIN" in log
    assert "PASSWORD 'SCRAM-SHA-256$" in log
    assert platform.server_password not in log
