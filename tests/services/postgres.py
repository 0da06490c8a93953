"""A real PostgreSQL (Debian's `postgresql` package) for tests: a fresh cluster in a temporary
directory, listening on a free loopback port, stopped with its process group.

Like RDS with `rds.force_ssl = 1`, it accepts TCP logins over TLS only (a self-signed
certificate made with openssl, which the package depends on), with SCRAM-SHA-256 passwords,
so the URIs the platform builds (`sslmode=require`) are tested as they are.

PostgreSQL refuses to run as root; when the tests run as root (CI does), the cluster is owned
by and run as the `postgres` system user the Debian package creates (`runuser`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from infra.processes import LOOPBACK, Server, free_port, start

SUPERUSER = "postgres"


@dataclass
class Postgres:
    server: Server
    port: int
    datadir: Path

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run `statement` as the cluster's superuser (over the local socket) and return psql's output."""
        command = [
            _binary("psql"),
            "-h",
            str(self.datadir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            statement,
        ]
        result = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def stop(self) -> None:
        """A fast shutdown (open client connections don't hold it up), then the process group."""
        subprocess.run(
            _as_owner([_binary("pg_ctl"), "-D", str(self.datadir), "stop", "-m", "fast", "-w"]),
            capture_output=True,
            timeout=60,
        )
        self.server.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"{name} not found under /usr/lib/postgresql/*/bin: install Debian's postgresql package (make setup does)"
        )
    return found[-1]


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _tls_only(datadir: Path) -> None:
    """A self-signed certificate, and pg_hba rules that refuse TCP logins without TLS."""
    subprocess.run(
        _as_owner(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={LOOPBACK}",
                "-keyout",
                str(datadir / "server.key"),
                "-out",
                str(datadir / "server.crt"),
            ]
        ),
        check=True,
        capture_output=True,
        timeout=60,
    )
    (datadir / "pg_hba.conf").write_text(
        f"local all all trust\nhostssl all all {LOOPBACK}/32 scram-sha-256\nhostnossl all all {LOOPBACK}/32 reject\n"
    )


def start_postgres(log_dir: Path) -> Postgres:
    """initdb a cluster, start it on 127.0.0.1 (TLS only) and wait until it accepts connections.
    Every statement is logged (`log_statement=all`) so tests can check what reached the server."""
    datadir = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(datadir, owner.pw_uid, owner.pw_gid)
    subprocess.run(
        _as_owner(
            [
                _binary("initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    _tls_only(datadir)
    port = free_port()
    command = _as_owner(
        [
            _binary("postgres"),
            "-D",
            str(datadir),
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-k",
            str(datadir),
            "-c",
            "fsync=off",
            "-c",
            "log_statement=all",
            "-c",
            "ssl=on",
        ]
    )
    server = start("postgres", command, url=f"postgresql://{LOOPBACK}:{port}", log_dir=log_dir)
    postgres = Postgres(server=server, port=port, datadir=datadir)
    deadline = time.monotonic() + 60
    while True:
        ready = subprocess.run([_binary("pg_isready"), "-h", LOOPBACK, "-p", str(port)], capture_output=True)
        if ready.returncode == 0:
            return postgres
        if server.process.poll() is not None or time.monotonic() > deadline:
            postgres.stop()
            raise RuntimeError(f"postgres did not start:\n{server.tail()}")
        time.sleep(0.2)
