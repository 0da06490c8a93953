"""The drift receiver as a real server behind a real Alertmanager (Debian's prometheus-alertmanager) on loopback,
configured by the platform's own `alertmanager_config`: DataDriftHigh reaches the receiver with the bearer token
and starts the endpoint's pipeline as a process, with the reason; bad requests get their 4xx."""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request

import pytest

from infra.processes import LOOPBACK, free_port, start, start_alertmanager, wait_http
from infra.stackfile import REPO_ROOT

RECORD = (
    "import json, os; open(os.environ['RECORD_TO'], 'w').write(json.dumps({k: v for k, v in "
    "os.environ.items() if k.startswith('TRAINING_')}))"
)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """The receiver with the process launcher; the "runner" records the settings it was started with."""
    tmp = tmp_path_factory.mktemp("receiver")
    token = secrets.token_urlsafe(32)
    (tmp / "token").write_text(token + "\n")
    (tmp / "pipelines.json").write_text(
        json.dumps(
            {
                "diabetes": {
                    "endpoint": "diabetes",
                    "min_interval_seconds": 3600,
                    "env": {"TRAINING_PIPELINE": "diabetes"},
                },
            }
        )
    )
    port = free_port()
    env = {
        "RECEIVER_HOST": LOOPBACK,
        "RECEIVER_PORT": str(port),
        "RECEIVER_TOKEN_FILE": str(tmp / "token"),
        "RECEIVER_LAUNCHER": "process",
        "RECEIVER_PIPELINES_FILE": str(tmp / "pipelines.json"),
        "RECEIVER_LOG_DIR": str(tmp),
        "RECEIVER_COMMAND": json.dumps([sys.executable, "-c", RECORD]),
        "RECORD_TO": str(tmp / "started.json"),
    }
    server = start(
        "receiver",
        [sys.executable, "-m", "services.training", "receiver"],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=tmp,
        env=env,
        cwd=REPO_ROOT,
    )
    wait_http(server, "/healthz", timeout=60)
    yield server, token, tmp
    server.stop()


def post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def drift_alert(feature: str = "bmi") -> dict:
    return {
        "labels": {"alertname": "DataDriftHigh", "endpoint": "diabetes", "feature": feature, "severity": "warning"},
        "annotations": {"summary": f"{feature} of diabetes has drifted from the training data (PSI above 0.2)"},
    }


def firing_drift_body() -> bytes:
    """Alertmanager's webhook body for one firing DataDriftHigh of the diabetes endpoint."""
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "retrain",
            "groupKey": "k",
            "alerts": [{"status": "firing", **drift_alert()}],
        }
    ).encode()


def test_unauthenticated_or_malformed_requests_get_4xx_and_start_nothing(receiver):
    server, token, tmp = receiver
    url = server.url + "/alerts"
    valid = firing_drift_body()
    assert post(url, valid, None)[0] == 401
    assert post(url, valid, "x" * len(token))[0] == 401
    assert post(url, b"{not json", token)[0] == 400
    status, answer = post(url, json.dumps({"version": "4", "alerts": "none"}).encode(), token)
    assert status == 422 and any(p.startswith("alerts:") for p in answer["problems"])
    assert post(url, b"[" + b" " * 300_000 + b"]", token)[0] == 413
    assert not (tmp / "started.json").exists()


def test_alertmanager_routes_drift_to_the_receiver_which_starts_the_pipeline_once(receiver, tmp_path):
    from components.monitoring import RetrainRoute, alertmanager_config

    server, token, tmp = receiver
    config = alertmanager_config(
        False, "#ml-alerts", RetrainRoute(server.url + "/alerts", credentials_file=str(tmp / "token"), group_wait="1s")
    )
    alertmanager = start_alertmanager(tmp_path, config)
    try:
        body = json.dumps([drift_alert("bmi"), drift_alert("age")]).encode()
        request = urllib.request.Request(
            alertmanager.url + "/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        deadline = time.monotonic() + 30
        while not (tmp / "started.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (tmp / "started.json").exists(), server.tail() + "\n" + alertmanager.tail()
        time.sleep(0.5)  # the recording process finishes writing
        started = json.loads((tmp / "started.json").read_text())
    finally:
        alertmanager.stop()
    assert started["TRAINING_PIPELINE"] == "diabetes" and started["TRAINING_TRIGGER"] == "drift"
    assert started["TRAINING_TRIGGER_REASON"].startswith(
        "DataDriftHigh on endpoint diabetes: feature(s) age, bmi firing since "
    )
    assert "retraining diabetes: DataDriftHigh on endpoint diabetes" in server.tail()

    again = firing_drift_body()
    status, answer = post(server.url + "/alerts", again, token)
    assert (
        status == 200
        and answer["started"] == []
        and answer["skipped"][0]["reason"].startswith("rate-limited: started ")
    )


def test_the_deployed_alertmanager_config_routes_drift_to_both_receivers(tmp_path):
    """`amtool` on the configuration as the chart merges it: valid, and DataDriftHigh goes to the receiver and Slack."""
    import shutil
    import subprocess

    import yaml

    from components.monitoring import RetrainRoute, alertmanager_config
    from components.training import RECEIVER_URL
    from infra.upstream import chart_defaults, helm_merge

    amtool = shutil.which("amtool") or pytest.fail(
        "amtool is missing: `make setup` installs Debian's prometheus-alertmanager"
    )
    config = helm_merge(
        chart_defaults("kube-prometheus-stack", "88.2.0")["alertmanager"]["config"],
        alertmanager_config(True, "#ml-alerts", RetrainRoute(RECEIVER_URL)),
    )
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config))
    checked = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and " - 3 receivers" in checked.stdout, checked.stdout + checked.stderr

    def receivers(*labels: str) -> str:
        routed = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={path}", *labels], capture_output=True, text=True
        )
        return routed.stdout.strip()

    assert receivers("alertname=DataDriftHigh", "endpoint=diabetes", "feature=bmi") == "retrain,slack"
    assert receivers("alertname=EndpointDown", "endpoint=diabetes") == "slack"
