"""Real local servers for service tests: moto S3 and the platform's tracking server."""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra import local
from infra.processes import LOOPBACK, Server, free_port, start, start_moto, wait_http
from infra.stackfile import REPO_ROOT

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "artifacts"


def moto_client(service: str, moto_url: str) -> Any:
    """A boto3 client of `service` on the local moto endpoint, with the tests' credentials (AWS_ENV)."""
    return boto3.client(
        service,
        endpoint_url=moto_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    moto_client("s3", server.url).create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@dataclass
class Tracking:
    server: Server
    url: str
    username: str
    password: str
    moto_url: str


def tracking_env(tmp: Path, port: int, moto_url: str, password: str) -> dict[str, str]:
    """The local plane's tracking environment, with this session's bucket and credentials."""
    return {**local.tracking_env(tmp, port, moto_url, password, bucket=BUCKET), **AWS_ENV}


@pytest.fixture(scope="session")
def tracking(moto, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking")
    port = free_port()
    password = secrets.token_urlsafe(18)
    server = start(
        "tracking",
        [sys.executable, "-m", "services.tracking.entrypoint", "serve"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=tmp,
        env=tracking_env(tmp, port, moto.url, password),
        cwd=REPO_ROOT,
    )
    try:
        wait_http(server, "/health", timeout=90)
    except RuntimeError:
        server.stop()
        raise
    yield Tracking(server=server, url=server.url, username="admin", password=password, moto_url=moto.url)
    server.stop()


@pytest.fixture
def as_admin(tracking, monkeypatch):
    """The MLflow client in this process talks to the local server as admin."""
    import mlflow

    for key, value in {
        **AWS_ENV,
        "MLFLOW_TRACKING_URI": tracking.url,
        "MLFLOW_TRACKING_USERNAME": tracking.username,
        "MLFLOW_TRACKING_PASSWORD": tracking.password,
    }.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(tracking.url)
    yield tracking
    mlflow.set_tracking_uri(None)


def start_serving(tracking: Tracking, model_name: str, log_dir: Path, **settings: str) -> Server:
    """The model server from services/serving on a free loopback port, serving `<model_name>@champion`."""
    port = free_port()
    env = {
        **AWS_ENV,
        "MLFLOW_TRACKING_URI": tracking.url,
        "MLFLOW_TRACKING_USERNAME": tracking.username,
        "MLFLOW_TRACKING_PASSWORD": tracking.password,
        "MLFLOW_S3_ENDPOINT_URL": tracking.moto_url,
        "SERVING_MODEL_NAME": model_name,
        "SERVING_HOST": LOOPBACK,
        "SERVING_PORT": str(port),
        "SERVING_WORKERS": "1",
        "SERVING_ENDPOINT": model_name,
        **{f"SERVING_{k.upper()}": v for k, v in settings.items()},
    }
    server = start(
        f"serving-{model_name}",
        [sys.executable, "-m", "services.serving"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=log_dir,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        wait_http(server, "/readyz", timeout=120)
        if env["SERVING_WORKERS"] != "1":
            wait_all_workers_ready(server, env["SERVING_ENDPOINT"], int(env["SERVING_WORKERS"]), timeout=120)
    except RuntimeError:
        server.stop()
        raise
    return server


def wait_all_workers_ready(server: Server, endpoint: str, workers: int, *, timeout: float) -> None:
    """/readyz is answered by whichever worker takes the connection. `serving_model_ready` is the
    minimum over the workers that have written it (livemin): each writes 0 when it starts and 1
    once its model is loaded. So: every worker has its file in the metrics directory, and the
    minimum is 1."""
    import urllib.request

    ready = f'serving_model_ready{{endpoint="{endpoint}"}} 1.0'
    deadline = time.monotonic() + timeout
    directory = None
    while time.monotonic() < deadline:
        directory = directory or worker_metrics_dir(server.process.pid)  # one for all workers: found once
        started = len(list(directory.glob("gauge_livemin_*.db"))) if directory else 0
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
            if started >= workers and ready in response.read().decode().splitlines():
                return
        time.sleep(0.25)
    raise RuntimeError(f"{server.name}: not every worker loaded the model within {timeout:.0f}s:\n{server.tail()}")


def worker_metrics_dir(supervisor: int) -> Path | None:
    """The multi-process metrics directory the server's supervisor gave its workers (their environment)."""
    from benchmarks.serving import proc_stats

    for pid, fields in proc_stats():
        if int(fields[1]) != supervisor:
            continue
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environment:
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(item.split(b"=", 1)[1].decode())
    return None
