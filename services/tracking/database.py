"""Database side of `migrate`: both schemas, and the server's own login role.

The tracking server never logs in as the RDS master user: RDS rotates that password every
7 days and a running server would keep the old one. `migrate` logs in as master (credentials
fetched fresh on each run), upgrades the schemas, and creates or updates a separate role,
`database_user`, with the platform-generated password the server reads. That role gets data
privileges only (SELECT/INSERT/UPDATE/DELETE, sequences), no DDL: schema changes stay with
`migrate`. The password reaches PostgreSQL as a SCRAM-SHA-256 verifier computed here, so the
plain text is in no SQL statement and no server log.
"""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.engine import Connection, Engine

from services.tracking.credentials import DatabaseLogin

DATA_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def is_postgres(uri: str) -> bool:
    return uri.startswith("postgresql")


def ensure_database(admin_uri: str, database: str) -> bool:
    """Create `database` (the auth store) on the server of `admin_uri` unless it exists; True if created."""
    engine = sqlalchemy.create_engine(admin_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}
            ).scalar()
            if exists:
                return False
            quoted = engine.dialect.identifier_preparer.quote(database)
            connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
            return True
    finally:
        engine.dispose()


def upgrade_tracking_schema(uri: str) -> None:
    """`mlflow db upgrade`, in this process: the URI (with its password) stays off any command line."""
    from mlflow.db import upgrade

    if upgrade.callback is None:  # click declares every command's callback optional; mlflow's `db upgrade` has one
        raise TypeError("mlflow.db.upgrade has no callback")
    upgrade.callback(uri)


def upgrade_auth_schema(uri: str) -> None:
    """The basic-auth app's own migrations (it would otherwise run them as the server's role, which has no DDL)."""
    from mlflow.server.auth.db.utils import migrate

    engine = sqlalchemy.create_engine(uri)
    try:
        migrate(engine, "head")
    finally:
        engine.dispose()


def scram_verifier(connection: Connection, login: DatabaseLogin) -> str:
    """The SCRAM-SHA-256 verifier of `login`, computed by libpq on this side of the connection."""
    from psycopg2.extensions import encrypt_password

    raw = connection.connection.dbapi_connection
    return encrypt_password(login.password, login.username, raw, "scram-sha-256")


def ensure_role(admin_uri: str, login: DatabaseLogin) -> None:
    """Create the server's role, or reset its password to the stored one (idempotent)."""
    engine = sqlalchemy.create_engine(admin_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            role = engine.dialect.identifier_preparer.quote(login.username)
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": login.username}
            ).scalar()
            verb = "ALTER" if exists else "CREATE"
            # A new role is NOSUPERUSER NOCREATEDB NOCREATEROLE by default (and RDS's master may
            # not name superuser attributes in ALTER). psycopg2 binds parameters on the client,
            # so a utility statement can take one.
            connection.exec_driver_sql(
                f"{verb} ROLE {role} WITH LOGIN PASSWORD %s", (scram_verifier(connection, login),)
            )
    finally:
        engine.dispose()


def grant_data_access(admin_uri: str, role_name: str) -> None:
    """Data privileges on every table and sequence of the database of `admin_uri`, granted
    after each migration so tables a new MLflow version adds are covered too."""
    engine: Engine = sqlalchemy.create_engine(admin_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            role = engine.dialect.identifier_preparer.quote(role_name)
            if engine.url.database is None:  # quote() would fail on None the same way
                raise AttributeError(f"{engine.url.render_as_string(hide_password=True)} names no database")
            database = engine.dialect.identifier_preparer.quote(engine.url.database)
            for statement in (
                f"GRANT CONNECT ON DATABASE {database} TO {role}",
                f"GRANT USAGE ON SCHEMA public TO {role}",
                f"GRANT {DATA_PRIVILEGES} ON ALL TABLES IN SCHEMA public TO {role}",
                f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
            ):
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
