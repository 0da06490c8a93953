"""Retraining on drift: a small webhook receiver for Alertmanager that starts a pipeline's run.

Alertmanager routes `DataDriftHigh` here (components/monitoring.py) with a bearer token. For each
firing alert the receiver finds the pipeline that retrains the alert's `endpoint`, and starts
it, at most once per that pipeline's `min_interval_seconds`, recording why: the run gets
`TRAINING_TRIGGER=drift` and a `TRAINING_TRIGGER_REASON` naming the alert, endpoint, features
and their summaries, which the runner writes on the MLflow run and the registered version.

Answers: 401 without the right token (compared in constant time), 413 for a body over
`max_body_bytes`, 400 for a body that is not JSON, 422 for JSON that is not Alertmanager's
webhook payload (version 4); otherwise 200 with what was started and what was skipped and why
(no pipeline for the endpoint, rate-limited, a run still going, not firing). Alertmanager does
not retry a 4xx, and a skipped alert is not an error.

Two launchers: on the cluster, `KubernetesLauncher` creates a Job from the pipeline's CronJob
template (RBAC: create Jobs in the training namespace, nothing else); the Job's name carries the
interval window, so even a restarted receiver (its memory lost) cannot start a pipeline twice
in one window: the API server answers 409. Locally (`make local`), `ProcessLauncher` starts the
runner as a process.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import SettingsConfigDict

from services.env_settings import StrictEnvSettings

log = logging.getLogger("training.receiver")
DRIFT_ALERT = "DataDriftHigh"


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    fingerprint: str = ""


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body (version 4, https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str
    groupKey: str
    alerts: list[Alert] = Field(min_length=1)


@dataclass(frozen=True)
class Pipeline:
    name: str
    endpoint: str
    """The endpoint whose drift retrains this pipeline."""
    min_interval_seconds: float
    job: dict[str, Any] = field(default_factory=dict)
    """Kubernetes: the CronJob's jobTemplate."""
    env: dict[str, str] = field(default_factory=dict)
    """Locally: the runner's TRAINING_* settings."""


class Launcher(Protocol):
    def start(self, pipeline: Pipeline, reason: str, now: float) -> str:
        """Start one run; returns a description (Job or process). Raises `Busy` when it cannot start now."""


class Busy(RuntimeError):
    """A run of the pipeline is still going, or one already started in this interval."""


def drift_reason(endpoint: str, alerts: list[Alert]) -> str:
    """Why the retrain starts, in one line: the alert, the endpoint, and each drifted feature's summary."""
    features = sorted({a.labels.get("feature", "?") for a in alerts})
    summaries = "; ".join(sorted({a.annotations.get("summary", "") for a in alerts if a.annotations.get("summary")}))
    started = min((a.startsAt for a in alerts if a.startsAt), default="")
    return (
        f"{DRIFT_ALERT} on endpoint {endpoint}: feature(s) {', '.join(features)}"
        + (f" firing since {started}" if started else "")
        + (f" ({summaries})" if summaries else "")
    )[:1000]


class Receiver:
    """The decision logic, apart from HTTP: which pipelines an alert group starts, and the rate limit."""

    def __init__(self, pipelines: Mapping[str, Pipeline], launcher: Launcher, clock=time.time) -> None:
        self.by_endpoint = {p.endpoint: p for p in pipelines.values()}
        self.launcher = launcher
        self.clock = clock
        self.last_started: dict[str, float] = {}
        self.lock = threading.Lock()

    def handle(self, payload: WebhookPayload) -> dict[str, list[dict[str, str]]]:
        started: list[dict[str, str]] = []
        skipped: list[dict[str, str]] = []
        by_endpoint: dict[str, list[Alert]] = {}
        for alert in payload.alerts:
            if (
                alert.labels.get("alertname") != DRIFT_ALERT
                or alert.status != "firing"
                or "endpoint" not in alert.labels
            ):
                skipped.append(
                    {
                        "alert": alert.labels.get("alertname", "?"),
                        "reason": f"not a firing {DRIFT_ALERT} with an endpoint label",
                    }
                )
                continue
            by_endpoint.setdefault(alert.labels["endpoint"], []).append(alert)
        for endpoint, alerts in sorted(by_endpoint.items()):
            pipeline = self.by_endpoint.get(endpoint)
            if pipeline is None:
                skipped.append({"endpoint": endpoint, "reason": f"no pipeline retrains endpoint {endpoint}"})
                continue
            outcome = self._start(pipeline, drift_reason(endpoint, alerts))
            (started if "run" in outcome else skipped).append(outcome)
        return {"started": started, "skipped": skipped}

    def _start(self, pipeline: Pipeline, reason: str) -> dict[str, str]:
        with self.lock:
            now = self.clock()
            last = self.last_started.get(pipeline.name)
            if last is not None and now - last < pipeline.min_interval_seconds:
                wait = pipeline.min_interval_seconds - (now - last)
                return {
                    "pipeline": pipeline.name,
                    "reason": f"rate-limited: started {now - last:.0f} s ago; next start allowed in {wait:.0f} s",
                }
            try:
                run = self.launcher.start(pipeline, reason, now)
            except Busy as exc:
                return {"pipeline": pipeline.name, "reason": str(exc)}
            self.last_started[pipeline.name] = now
        log.warning("retraining %s: %s (%s)", pipeline.name, reason, run)
        return {"pipeline": pipeline.name, "run": run, "reason": reason}


def run_env(base: Mapping[str, str], reason: str) -> dict[str, str]:
    return {**base, "TRAINING_TRIGGER": "drift", "TRAINING_TRIGGER_REASON": reason}


class ProcessLauncher:
    """Locally: the runner as a child process (its output in `<log_dir>/retrain-<pipeline>-<n>.log`)."""

    def __init__(
        self, command: list[str], log_dir: Path, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.command, self.log_dir, self.cwd, self.env = command, log_dir, cwd, dict(env or {})
        self.running: dict[str, Any] = {}
        self.count = 0

    def start(self, pipeline: Pipeline, reason: str, now: float) -> str:
        import os
        import subprocess

        previous = self.running.get(pipeline.name)
        if previous is not None and previous.poll() is None:
            raise Busy(f"a run of {pipeline.name} is still going (pid {previous.pid})")
        self.count += 1
        log_path = self.log_dir / f"retrain-{pipeline.name}-{self.count}.log"
        with open(log_path, "wb") as handle:
            # in the receiver's process group: stopping the receiver's group stops its runs too
            process = subprocess.Popen(
                self.command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **self.env, **run_env(pipeline.env, reason)},
            )
        self.running[pipeline.name] = process
        return f"process {process.pid} (log {log_path})"


class KubernetesLauncher:
    """On the cluster: a Job from the pipeline's CronJob template, named after the interval window."""

    def __init__(self, namespace: str, api: Any = None) -> None:
        self.namespace = namespace
        self._api = api

    @property
    def api(self):
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.BatchV1Api()
        return self._api

    def job(self, pipeline: Pipeline, reason: str, now: float) -> dict[str, Any]:
        window = int(now // pipeline.min_interval_seconds)
        template = json.loads(json.dumps(pipeline.job))  # a deep copy
        for container in template["spec"]["template"]["spec"]["containers"]:
            kept = [
                e for e in container.get("env", []) if e["name"] not in ("TRAINING_TRIGGER", "TRAINING_TRIGGER_REASON")
            ]
            container["env"] = kept + [{"name": k, "value": v} for k, v in run_env({}, reason).items()]
        metadata = template.get("metadata", {})
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": f"{pipeline.name}-drift-{window}"[:63],
                "namespace": self.namespace,
                "labels": {**metadata.get("labels", {}), "mlops.platform/trigger": "drift"},
                "annotations": {**metadata.get("annotations", {}), "mlops.platform/trigger-reason": reason},
            },
            "spec": template["spec"],
        }

    def start(self, pipeline: Pipeline, reason: str, now: float) -> str:
        from kubernetes.client.exceptions import ApiException

        body = self.job(pipeline, reason, now)
        try:
            self.api.create_namespaced_job(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Busy(
                    f"job {body['metadata']['name']} exists: {pipeline.name} already started in this interval"
                ) from None
            raise
        return f"job {self.namespace}/{body['metadata']['name']}"


class ReceiverSettings(StrictEnvSettings):
    """`RECEIVER_*` variables; an unknown one stops the receiver at start (services/env_settings.py)."""

    model_config = SettingsConfigDict(env_prefix="RECEIVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    token: str | None = None
    token_file: str | None = None
    """A file holding the bearer token (a mounted Secret on the cluster)."""
    pipelines_file: str
    """JSON: pipeline name -> {endpoint, min_interval_seconds, job | env}."""
    launcher: Literal["kubernetes", "process"] = "kubernetes"
    namespace: str = "training"
    log_dir: str = "/tmp"
    command: list[str] = Field(default_factory=list)
    """The process launcher's command (JSON list); default: this Python running `services.training run`."""
    max_body_bytes: int = Field(default=262_144, ge=1024)

    def bearer_token(self) -> str:
        token = self.token or (Path(self.token_file).read_text().strip() if self.token_file else "")
        if len(token) < 32:
            raise SystemExit("receiver: set RECEIVER_TOKEN or RECEIVER_TOKEN_FILE to a token of 32+ characters")
        return token


def load_pipelines(path: str) -> dict[str, Pipeline]:
    raw = json.loads(Path(path).read_text())
    return {
        name: Pipeline(
            name=name,
            endpoint=spec["endpoint"],
            min_interval_seconds=float(spec["min_interval_seconds"]),
            job=spec.get("job", {}),
            env=spec.get("env", {}),
        )
        for name, spec in raw.items()
    }


def create_app(receiver: Receiver, token: str, max_body_bytes: int = 262_144):
    """The ASGI app: POST /alerts (Alertmanager's webhook) and GET /healthz."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    expected = f"Bearer {token}".encode()

    async def alerts(request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return JSONResponse(
                {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await request.body()
        if len(body) > max_body_bytes:
            return JSONResponse({"error": f"body over {max_body_bytes} bytes"}, status_code=413)
        try:
            document = json.loads(body)
        except ValueError as exc:
            return JSONResponse({"error": f"not JSON: {exc}"}, status_code=400)
        try:
            payload = WebhookPayload.model_validate(document)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)]
            return JSONResponse(
                {"error": "not an Alertmanager webhook payload (version 4)", "problems": problems}, status_code=422
            )
        import anyio

        return JSONResponse(await anyio.to_thread.run_sync(receiver.handle, payload))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/alerts", alerts, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])


def serve(settings: ReceiverSettings) -> None:
    import sys

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="[receiver] %(message)s")
    pipelines = load_pipelines(settings.pipelines_file)
    if settings.launcher == "process":
        command = settings.command or [sys.executable, "-m", "services.training", "run"]
        launcher: Launcher = ProcessLauncher(command, Path(settings.log_dir), cwd=Path.cwd())
    else:
        launcher = KubernetesLauncher(settings.namespace)
    app = create_app(Receiver(pipelines, launcher), settings.bearer_token(), settings.max_body_bytes)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
