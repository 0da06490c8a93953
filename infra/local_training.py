"""The training loop of `make local`: versioned data, the pipeline's runs, and retraining on drift.

On the local plane (infra/local.py) this does what the platform does on the cluster, with the
same code: the example data set is tracked in DVC's formats and pushed to a DVC remote on the
moto S3 endpoint (`s3://mlops-local-datasets/dvc`); the pipeline's tracking user
`training-diabetes` is created the way the tracking server's `ensure-user` creates it; the
runner (services/training) trains version 1 as that user; and the drift receiver runs with
the process launcher behind a real Alertmanager (Debian's) that Prometheus sends its alerts to,
routed by the platform's own `alertmanager_config`.

`follow_retraining` then runs the loop and prints each step: a newer data version is pushed
(the clinic's scale now reads bmi two standard deviations higher), traffic with the same shift
raises the model server's drift score, `DataDriftHigh` fires, Alertmanager delivers it, the
receiver starts a retrain on the newer version, the gate decides, and the model server swaps
to the promoted version.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from infra.processes import LOOPBACK, Server, free_port, start, start_alertmanager, wait_http
from infra.stackfile import REPO_ROOT

DATASETS_BUCKET = "mlops-local-datasets"
PIPELINE = "diabetes"
ENTRY_POINT = "examples.diabetes:task"
RETRAIN_INTERVAL_SECONDS = 600
"""The local receiver starts the pipeline at most once per 10 minutes."""
BMI_SHIFT = 2.0


@dataclass
class LocalPipeline:
    workdir: Path
    s3_url: str
    tracking_url: str
    model: str
    password: str = ""

    @property
    def data(self) -> Path:
        return self.workdir / "data" / "diabetes.csv"

    @property
    def remote(self) -> str:
        from services.training.dvc import DVC_PREFIX

        return f"s3://{DATASETS_BUCKET}/{DVC_PREFIX}"

    def env(self) -> dict[str, str]:
        """The runner's settings for this pipeline, as the CronJob sets them on the cluster."""
        from services.tracking.writers import writer_username

        return {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_TRACKING_URI": self.tracking_url,
            "MLFLOW_TRACKING_USERNAME": writer_username(PIPELINE),
            "MLFLOW_TRACKING_PASSWORD": self.password,
            "TRAINING_PIPELINE": PIPELINE,
            "TRAINING_MODEL_NAME": self.model,
            "TRAINING_ENTRY_POINT": ENTRY_POINT,
            "TRAINING_DATA": str(self.data) + ".dvc",
            "TRAINING_DVC_REMOTE": self.remote,
            "TRAINING_S3_ENDPOINT_URL": self.s3_url,
            "TRAINING_CACHE_DIR": str(self.workdir / "training-cache"),
            "TRAINING_IMAGE": "local",
        }


def say(message: str) -> None:
    print(f"[local] {message}", flush=True)


def publish_data(pipeline: LocalPipeline, bmi_shift: float = 0.0) -> str:
    """Write a version of the example data, `dvc add` it and `dvc push` it to the moto remote; returns its md5."""
    import boto3

    from examples.diabetes import write_dataset
    from services.training import dvc

    write_dataset(pipeline.data, bmi_shift=bmi_shift)
    cache = pipeline.workdir / "dvc-cache"
    _, out = dvc.add(pipeline.data, cache)
    s3 = boto3.client(
        "s3",
        endpoint_url=pipeline.s3_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    dvc.push(out, cache, dvc.Remote.parse(pipeline.remote), s3)
    return out.md5


def create_pipeline_user(pipeline: LocalPipeline, admin_password: str) -> None:
    """`training-diabetes`, as the tracking server's `ensure-user` Job creates it.

    It gets write access to its experiment and model only.
    """
    from services.tracking.writers import Writer, sync_writers, writer_username

    password_file = pipeline.workdir / "pipeline-password"
    pipeline.password = password_file.read_text().strip() if password_file.is_file() else secrets.token_urlsafe(24)
    password_file.write_text(pipeline.password + "\n")
    password_file.chmod(0o600)
    sync_writers(
        pipeline.tracking_url,
        "admin",
        admin_password,
        {writer_username(PIPELINE): Writer(PIPELINE, pipeline.model, pipeline.password)},
    )


def train(pipeline: LocalPipeline, **settings: str) -> str:
    """One run of the pipeline as a process, as the pipeline's user; returns the version it registered."""
    extra = {f"TRAINING_{key.upper()}": value for key, value in settings.items()}
    result = subprocess.run(
        [sys.executable, "-m", "services.training", "run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **pipeline.env(), **extra},
    )
    if result.returncode != 0:
        raise RuntimeError(f"the training run failed:\n{result.stdout}\n{result.stderr}")
    for line in result.stdout.splitlines():
        if line.startswith(
            ("[training] data checks", "[training] gate:", "[training] registered", "[training] promoted")
        ):
            say(line.removeprefix("[training] "))
    registered = re.search(r"registered \S+ version (\d+)", result.stdout)
    if registered is None:
        raise AttributeError(
            f"the training run succeeded but printed no `registered <model> version <n>` line:\n{result.stdout}"
        )
    return registered.group(1)


def start_receiver(pipeline: LocalPipeline, workdir: Path) -> tuple[Server, Path]:
    """The drift receiver with the process launcher; returns it and its token file."""
    token = workdir / "receiver-token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    pipelines = workdir / "receiver-pipelines.json"
    pipelines.write_text(
        json.dumps(
            {
                PIPELINE: {
                    "endpoint": pipeline.model,
                    "min_interval_seconds": RETRAIN_INTERVAL_SECONDS,
                    "env": pipeline.env(),
                }
            }
        )
    )
    pipelines.chmod(0o600)  # it holds the pipeline user's password
    port = free_port()
    env = {
        "RECEIVER_HOST": LOOPBACK,
        "RECEIVER_PORT": str(port),
        "RECEIVER_TOKEN_FILE": str(token),
        "RECEIVER_LAUNCHER": "process",
        "RECEIVER_PIPELINES_FILE": str(pipelines),
        "RECEIVER_LOG_DIR": str(workdir),
    }
    server = start(
        "receiver",
        [sys.executable, "-m", "services.training", "receiver"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=workdir,
        env=env,
        cwd=REPO_ROOT,
    )
    wait_http(server, "/healthz", timeout=60)
    return server, token


def start_local_alertmanager(workdir: Path, receiver: Server, token: Path) -> Server:
    """A real Alertmanager with the platform's routing: DataDriftHigh to the receiver, with its bearer token."""
    from components.monitoring import RetrainRoute, alertmanager_config

    config = alertmanager_config(
        False, "#ml-alerts", RetrainRoute(receiver.url + "/alerts", credentials_file=str(token), group_wait="1s")
    )
    return start_alertmanager(workdir / "alertmanager", config)


def _until(what: str, check: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(
        f"retraining loop: {what} did not happen within {timeout:.0f} s" + (f"; see {log}" if log else "")
    )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _psi(serving_url: str, feature: str) -> float:
    match = re.search(
        rf'serving_feature_drift_psi{{[^}}]*feature="{feature}"[^}}]*}} ([0-9.e+-]+)', _get(serving_url + "/metrics")
    )
    return float(match.group(1)) if match else 0.0


def _drift_alert_state(prometheus_url: str) -> str | None:
    alerts = json.loads(_get(prometheus_url + "/api/v1/alerts"))["data"]["alerts"]
    return next(
        (
            a["state"]
            for a in alerts
            if a["labels"].get("alertname") == "DataDriftHigh" and a["labels"].get("feature") == "bmi"
        ),
        None,
    )


def shifted_request(count: int = 300) -> bytes:
    """`count` rows of the example data with bmi shifted as in the newer data version, as a scoring request."""
    from examples.diabetes import TARGET, dataset

    rows = dataset(bmi_shift=BMI_SHIFT).drop(columns=[TARGET]).sample(count, replace=True, random_state=7)
    return json.dumps({"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}).encode()


def served_version(serving_url: str, body: bytes) -> str:
    request = urllib.request.Request(
        serving_url + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["x-model-version"]


def follow_retraining(
    pipeline: LocalPipeline, servers: dict[str, Server], admin_password: str, *, timeout: float
) -> dict[str, str]:
    """The loop, step by step (see the module docstring); returns the gate's tags on the promoted version."""
    serving, prometheus, receiver = servers["serving"].url, servers["prometheus"].url, servers["receiver"]
    before = served_version(serving, shifted_request(2))
    md5 = publish_data(pipeline, bmi_shift=BMI_SHIFT)
    say(
        f"1. a newer data version arrives (bmi reads {BMI_SHIFT:g} standard deviations higher): md5 {md5}, pushed "
        f"to {pipeline.remote}"
    )
    served_version(serving, shifted_request(300))
    say("2. 300 rows with the same shift scored by the model server")
    psi = _until(
        "the drift score rising above 0.2", lambda: (lambda v: v if v > 0.2 else None)(_psi(serving, "bmi")), timeout
    )
    say(f"3. the model server's drift score for bmi: PSI {psi:.2f}")
    _until("DataDriftHigh firing in Prometheus", lambda: _drift_alert_state(prometheus) == "firing", timeout)
    say('4. DataDriftHigh{feature="bmi"} is firing; Prometheus sent it to Alertmanager')
    line = _until(
        "the receiver starting a retrain",
        lambda: next((row for row in receiver.tail(200).splitlines() if "retraining " in row), None),
        timeout,
        receiver.log,
    )
    say("5. Alertmanager delivered it; the receiver started the pipeline: " + line.split("retraining ", 1)[1])
    version = _until(
        "a new champion",
        lambda: (lambda v: v if v and v != before else None)(_champion(pipeline, admin_password)),
        timeout,
        pipeline.workdir / "retrain-diabetes-1.log",
    )
    tags = _version_tags(pipeline, admin_password, version)
    say(
        f"6. the gate: {tags['mlops.gate.decision']}: {tags['mlops.gate.reason']} (trigger: "
        f"{tags['mlops.trigger.reason']})"
    )
    probe = shifted_request(2)
    # every worker process of the model server polls the alias on its own: all must answer with the new version
    _until(
        "the model server swapping to the new version",
        lambda: all(served_version(serving, probe) == version for _ in range(20)),
        timeout,
    )
    say(f"7. the model server now serves version {version} (was {before})")
    return tags


def _champion(pipeline: LocalPipeline, admin_password: str) -> str | None:
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    try:
        with as_user("admin", admin_password):
            return MlflowClient(pipeline.tracking_url).get_model_version_by_alias(pipeline.model, "champion").version
    except Exception:  # the registry answers while a run registers; a transient error is "not yet"
        return None


def _version_tags(pipeline: LocalPipeline, admin_password: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    from services.tracking.writers import as_user

    with as_user("admin", admin_password):
        return dict(MlflowClient(pipeline.tracking_url).get_model_version(pipeline.model, version).tags)
