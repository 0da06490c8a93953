"""The platform's service plane on this machine, on loopback only.

Starts, each in its own process group on a free 127.0.0.1 port: a moto S3 endpoint (the
artifact bucket), the tracking server from `services/tracking` (sqlite backend, basic auth
with a generated admin password, artifacts proxied into the moto bucket); trains the
example pipeline (its data versioned with DVC on a moto remote, trained by the runner from
`services/training` as the pipeline's own tracking user), which registers version 1 and points
`champion` at it; starts the model server from `services/serving` on
`models:/diabetes@champion` and sends it a sample request; starts the drift receiver and a real
Alertmanager routing `DataDriftHigh` to it, and a real Prometheus (Debian's) scraping the model
server with the platform's alert rules, sending alerts to that Alertmanager
(infra/local_training.py). With `retrain_demo`, it then runs the retraining loop and prints
each step. Ctrl-C (or the end of `--once`) stops everything, whole process groups included.
`LocalTimings` says how fast drift is noticed.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from infra.local_training import DATASETS_BUCKET, LocalPipeline
from infra.processes import LOOPBACK, Server, free_port, start, start_moto, wait_http
from infra.stackfile import REPO_ROOT

BUCKET = "mlops-local-artifacts"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
DRIFT_ALERT = "DataDriftHigh"
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m|h)$")


def prometheus_duration(text: str) -> str:
    """`text` if it is a Prometheus duration of one unit (`500ms`, `5s`, `30m`, `1h`); else ValueError."""
    if not _DURATION.match(text):
        raise ValueError(f"got {text!r}; allowed: a positive whole number followed by ms, s, m or h (e.g. 5s, 30m)")
    return text


@dataclass(frozen=True)
class LocalTimings:
    """How fast the local plane notices drift. The defaults are the platform's (the model server
    scores drift every 15 s, Prometheus scrapes every 5 s, `DataDriftHigh` fires after 30 minutes
    above the threshold); a demo or a test shortens them to see the alert in seconds."""

    scrape_interval: str = "5s"
    """Prometheus's scrape and rule evaluation interval."""
    drift_interval_seconds: float = 15.0
    """SERVING_DRIFT_INTERVAL_SECONDS of the model server."""
    drift_for: str = "30m"
    """The `for` of DataDriftHigh: how long PSI must stay above the threshold before it fires."""

    def __post_init__(self) -> None:
        prometheus_duration(self.scrape_interval)
        prometheus_duration(self.drift_for)
        if not self.drift_interval_seconds > 0:
            raise ValueError(f"drift interval: got {self.drift_interval_seconds}; allowed: seconds > 0")


@dataclass
class LocalPlane:
    workdir: Path
    timings: LocalTimings = field(default_factory=LocalTimings)
    servers: dict[str, Server] = field(default_factory=dict)
    admin_password: str = ""
    model_name: str = "diabetes"
    model_version: str = ""
    notes: list[str] = field(default_factory=list)
    pipeline: LocalPipeline | None = None

    @property
    def tracking_url(self) -> str:
        return self.servers["tracking"].url

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs to talk to the local server as admin."""
        return {
            **AWS_ENV,
            "MLFLOW_TRACKING_URI": self.tracking_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }


def say(message: str) -> None:
    print(f"[local] {message}", flush=True)


def tracking_env(workdir: Path, port: int, moto_url: str, admin_password: str, bucket: str = BUCKET) -> dict[str, str]:
    """Environment of a tracking server on loopback: sqlite in `workdir`, artifacts in the moto bucket, auth on."""
    return {
        **AWS_ENV,
        "MLFLOW_S3_ENDPOINT_URL": moto_url,
        "TRACKING_BACKEND_STORE_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "TRACKING_AUTH_DATABASE_URI": f"sqlite:///{workdir / 'mlflow-auth.db'}",
        "TRACKING_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow",
        "TRACKING_HOST": LOOPBACK,
        "TRACKING_PORT": str(port),
        "TRACKING_WORKERS": "1",
        "TRACKING_ALLOWED_HOSTS": f"{LOOPBACK}:{port},localhost:{port}",
        "TRACKING_CORS_ALLOWED_ORIGINS": f"http://{LOOPBACK}:{port},http://localhost:{port}",
        "TRACKING_ADMIN_PASSWORD": admin_password,
        "TRACKING_FLASK_SECRET_KEY": secrets.token_urlsafe(32),
    }


def start_tracking(plane: LocalPlane, moto: Server) -> Server:
    port = free_port()
    # The auth database keeps the admin user of an earlier run, with that run's password.
    password_file = plane.workdir / "admin-password"
    if password_file.is_file() and (plane.workdir / "mlflow-auth.db").is_file():
        plane.admin_password = password_file.read_text().strip()
    else:
        plane.admin_password = secrets.token_urlsafe(18)
        password_file.write_text(plane.admin_password + "\n")
        password_file.chmod(0o600)
    env = tracking_env(plane.workdir, port, moto.url, plane.admin_password)
    server = start(
        "tracking",
        [sys.executable, "-m", "services.tracking.entrypoint", "serve"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=plane.workdir,
        env=env,
        cwd=REPO_ROOT,
    )
    wait_http(server, "/health", timeout=120)
    return server


def register_example(plane: LocalPlane, moto: Server) -> None:
    """Version the example data with DVC on the moto remote, create the pipeline's tracking user,
    and train, register and promote version 1 with the runner, as the platform's CronJob would."""
    from infra import local_training

    pipeline = plane.pipeline = LocalPipeline(plane.workdir, moto.url, plane.tracking_url, plane.model_name)
    md5 = local_training.publish_data(pipeline)
    say(f"example data tracked with DVC: {pipeline.data}.dvc (md5 {md5}), pushed to {pipeline.remote}")
    local_training.create_pipeline_user(pipeline, plane.admin_password)
    plane.model_version = local_training.train(pipeline)


def start_serving(plane: LocalPlane, moto: Server) -> Server:
    port = free_port()
    env = {
        **plane.client_env(),
        "MLFLOW_S3_ENDPOINT_URL": moto.url,
        "SERVING_MODEL_NAME": plane.model_name,
        "SERVING_MODEL_ALIAS": "champion",
        "SERVING_ENDPOINT": plane.model_name,
        "SERVING_HOST": LOOPBACK,
        "SERVING_PORT": str(port),
        "SERVING_POLL_SECONDS": "5",
        "SERVING_CAPTURE_FRACTION": "1.0",
        "SERVING_CAPTURE_BUCKET": BUCKET,
        "SERVING_CAPTURE_FLUSH_SECONDS": "5",
        "SERVING_S3_ENDPOINT_URL": moto.url,
        "SERVING_DRIFT_INTERVAL_SECONDS": str(plane.timings.drift_interval_seconds),
    }
    server = start(
        "serving",
        [sys.executable, "-m", "services.serving"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=plane.workdir,
        env=env,
        cwd=REPO_ROOT,
    )
    wait_http(server, "/readyz", timeout=120)
    return server


def sample_request(plane: LocalPlane) -> str:
    """Score two rows of held-out data, as a client would; returns a one-line summary."""
    import json
    import urllib.request

    from examples.train import training_data

    _, x_test, _, _ = training_data()
    rows = x_test.head(2)
    body = json.dumps({"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}).encode()
    request = urllib.request.Request(
        plane.servers["serving"].url + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
        version = response.headers["x-model-version"]
    return f"POST /invocations (2 rows) -> {answer['predictions']} from version {version}"


def start_tracking_plane(plane: LocalPlane, stack: ExitStack) -> Server:
    """S3 (moto) with the artifact bucket, the tracking server, and the example model as
    @champion; each server stops when `stack` closes. Returns the S3 server."""
    say("starting S3 (moto) on loopback")
    moto = start_moto(plane.workdir)
    stack.callback(moto.stop)
    plane.servers["s3"] = moto
    s3 = boto3.client(
        "s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
    )
    for bucket in (BUCKET, DATASETS_BUCKET):
        s3.create_bucket(Bucket=bucket)

    say("starting the tracking server (MLflow, basic auth, artifacts in S3)")
    tracking = start_tracking(plane, moto)
    stack.callback(tracking.stop)
    plane.servers["tracking"] = tracking

    say("training the example pipeline and registering it as @champion")
    register_example(plane, moto)
    return moto


def start_local_prometheus(plane: LocalPlane) -> Server:
    from components.alerts import EndpointObjective, rule_groups, rules_file
    from infra.processes import start_prometheus
    from infra.program import alert_thresholds  # the settings' default thresholds

    groups = rule_groups(alert_thresholds(), [EndpointObjective(plane.model_name, 250)])
    rules = plane.workdir / "rules.yaml"
    rules.write_text(rules_file(with_drift_for(groups, plane.timings.drift_for)))
    target = plane.servers["serving"].url.removeprefix("http://")
    alertmanagers = (
        [plane.servers["alertmanager"].url.removeprefix("http://")] if "alertmanager" in plane.servers else []
    )
    return start_prometheus(
        plane.workdir / "prometheus",
        {"serving": target},
        rules_file=rules,
        scrape_interval=plane.timings.scrape_interval,
        alertmanagers=alertmanagers,
    )


def with_drift_for(groups: list[dict], duration: str) -> list[dict]:
    """`groups` with the `for` of DataDriftHigh set to `duration`. The platform's thresholds count
    whole minutes; the local plane may wait seconds, so it rewrites its own copy of the rule."""
    found = 0
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == DRIFT_ALERT:
                rule["for"] = duration
                found += 1
    if not found:
        raise RuntimeError(f"no {DRIFT_ALERT} rule among the platform's alert rules")
    return groups


def _stop_on_sigterm() -> None:
    """SIGTERM (a supervisor, `kill`, `timeout`) stops everything, as Ctrl-C does."""
    import signal

    def interrupt(signum, frame):  # noqa: ARG001 - the signal handler's signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(workdir: Path, *, once: bool, timings: LocalTimings = LocalTimings(), retrain_demo: bool = False) -> LocalPlane:
    _stop_on_sigterm()
    workdir = workdir.resolve()  # the servers run from the repository, the caller maybe not
    workdir.mkdir(parents=True, exist_ok=True)
    plane = LocalPlane(workdir=workdir, timings=timings)
    try:
        with ExitStack() as stack:
            moto = start_tracking_plane(plane, stack)

            say("starting the model server on models:/diabetes@champion")
            serving = start_serving(plane, moto)
            stack.callback(serving.stop)
            plane.servers["serving"] = serving
            plane.notes.append("sample request    " + sample_request(plane))

            start_retraining(plane, stack)

            say("starting Prometheus, scraping the model server, with the platform's alert rules")
            prometheus = start_local_prometheus(plane)
            stack.callback(prometheus.stop)
            plane.servers["prometheus"] = prometheus

            print_summary(plane)
            if retrain_demo:
                follow_retraining(plane)
            if not once:
                say("running; press Ctrl-C to stop everything")
                try:
                    while all(s.process.poll() is None for s in plane.servers.values()):
                        time.sleep(1)
                    dead = [s for s in plane.servers.values() if s.process.poll() is not None]
                    for server in dead:
                        say(f"{server.name} exited with {server.process.returncode}; its log: {server.log}")
                except KeyboardInterrupt:
                    print()
            say("stopping")
    except KeyboardInterrupt:  # during start-up: the ExitStack has stopped what was started
        print()
        say("interrupted; everything started so far is stopped")
    return plane


def start_retraining(plane: LocalPlane, stack: ExitStack) -> None:
    """The drift receiver (the runner as a process) and a real Alertmanager routing DataDriftHigh to it."""
    from infra import local_training

    say("starting the drift receiver and Alertmanager (DataDriftHigh -> retrain the pipeline)")
    assert plane.pipeline is not None, "start_tracking_plane registers the example pipeline first"
    receiver, token = local_training.start_receiver(plane.pipeline, plane.workdir)
    stack.callback(receiver.stop)
    plane.servers["receiver"] = receiver
    alertmanager = local_training.start_local_alertmanager(plane.workdir, receiver, token)
    stack.callback(alertmanager.stop)
    plane.servers["alertmanager"] = alertmanager


def follow_retraining(plane: LocalPlane) -> None:
    """The retraining loop, each step printed; it may take the alert's `for` plus a training run."""
    from infra import local_training

    say("retraining loop: newer data, shifted traffic, drift, alert, retrain, gate, swap")
    timeout = 300 + 3 * _seconds(plane.timings.drift_for)  # a training run on a busy machine takes minutes
    assert plane.pipeline is not None, "start_tracking_plane registers the example pipeline first"
    local_training.follow_retraining(plane.pipeline, plane.servers, plane.admin_password, timeout=timeout)
    say("retraining loop done")


def _seconds(duration: str) -> float:
    parsed = re.match(r"^(\d+)(ms|s|m|h)$", duration)
    assert parsed is not None, f"{duration!r}: LocalTimings admits only Prometheus durations of one unit"
    value, unit = parsed.groups()
    return int(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def print_summary(plane: LocalPlane) -> None:
    print()
    print(
        "  tracking server   "
        + plane.tracking_url
        + "   (user admin, password in "
        + str(plane.workdir / "admin-password")
        + ")"
    )
    print("  S3 (moto)         " + plane.servers["s3"].url + f"   bucket {BUCKET}")
    print(f"  model             models:/{plane.model_name}@champion -> version {plane.model_version}")
    if "serving" in plane.servers:
        url = plane.servers["serving"].url
        print(f"  model server      {url}/invocations   ({url}/metrics, {url}/readyz)")
    if "prometheus" in plane.servers:
        url = plane.servers["prometheus"].url
        print(f"  prometheus        {url}/graph   (alerts: {url}/alerts; try serving_feature_drift_psi)")
        t = plane.timings
        print(
            f"  drift alert       {DRIFT_ALERT} after {t.drift_for} above the threshold "
            f"(drift scored every {t.drift_interval_seconds:g} s, scraped every {t.scrape_interval})"
        )
    if "receiver" in plane.servers:
        print(
            f"  alertmanager      {plane.servers['alertmanager'].url}   (DataDriftHigh -> receiver "
            f"{plane.servers['receiver'].url}/alerts)"
        )
    if plane.pipeline is not None:
        print(
            f"  DVC remote        {plane.pipeline.remote}   (endpoint {plane.pipeline.s3_url}; data "
            f"{plane.pipeline.data}.dvc)"
        )
        print(
            f"  pipeline user     training-diabetes   (password in {plane.workdir / 'pipeline-password'}; runs in "
            "experiment pipelines/diabetes)"
        )
    for note in plane.notes:
        print("  " + note)
    print(f"  logs              {plane.workdir}/*.log")
    print()
