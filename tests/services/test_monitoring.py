"""Monitoring for real: drift scores from a live model server, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from components.alerts import AlertThresholds, EndpointObjective, rule_groups, rules_file
from infra.processes import start_prometheus
from tests.services.conftest import start_serving
from tests.services.test_serving import get, post

MODEL = "drift-test"


@pytest.fixture(scope="module")
def drift_server(tracking, tmp_path_factory):
    import os

    import mlflow

    from examples.train import train_and_register

    os.environ.update({"MLFLOW_TRACKING_USERNAME": tracking.username, "MLFLOW_TRACKING_PASSWORD": tracking.password,
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    mlflow.set_tracking_uri(tracking.url)
    train_and_register(MODEL)
    server = start_serving(tracking, MODEL, tmp_path_factory.mktemp("drift"), drift_window="400", drift_min_rows="200", drift_interval_seconds="0.5")
    yield server
    server.stop()


def psi_scores(server) -> dict[str, float]:
    scores = {}
    for line in get(server, "/metrics")[1].splitlines():
        if line.startswith("serving_feature_drift_psi{"):
            feature = line.split('feature="')[1].split('"')[0]
            scores[feature] = float(line.rsplit(" ", 1)[1])
    return scores


def send(server, frame, rows_per_request=20):
    for start in range(0, len(frame), rows_per_request):
        chunk = frame.iloc[start:start + rows_per_request]
        status, _, _ = post(server, {"dataframe_split": {"columns": list(chunk.columns), "data": chunk.values.tolist()}})
        assert status == 200


def test_shifted_inputs_raise_the_drift_score_and_unshifted_keep_it_low(drift_server):
    from examples.train import training_data

    x_train, _, _, _ = training_data()
    threshold = AlertThresholds().drift_psi
    send(drift_server, x_train.sample(400, replace=True, random_state=11))
    time.sleep(1.5)
    calm = psi_scores(drift_server)
    assert set(calm) == set(x_train.columns)
    assert max(calm.values()) < threshold, calm

    shifted = x_train.sample(400, replace=True, random_state=12)
    shifted["bmi"] = shifted["bmi"] + 2 * x_train["bmi"].std()
    send(drift_server, shifted)
    time.sleep(1.5)
    drifted = psi_scores(drift_server)
    assert drifted["bmi"] > threshold, drifted
    assert max(v for k, v in drifted.items() if k != "bmi") < threshold, drifted


def query(prometheus, promql: str) -> list:
    url = f"{prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]


def test_a_real_prometheus_scrapes_the_model_server_with_the_rules_loaded(drift_server, tmp_path):
    from examples.train import training_data

    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_file(rule_groups(AlertThresholds(), [EndpointObjective(MODEL, 250)])))
    target = drift_server.url.removeprefix("http://")
    prometheus = start_prometheus(tmp_path, {"serving": target}, rules_file=rules, scrape_interval="1s")
    try:
        x_train, _, _, _ = training_data()
        deadline = time.time() + 45
        requests, latency = [], []
        while time.time() < deadline and not (requests and latency):
            send(drift_server, x_train.sample(40, random_state=int(time.time())))
            time.sleep(1)
            requests = query(prometheus, f'serving_requests_total{{endpoint="{MODEL}",status="200"}}')
            latency = query(prometheus, f'histogram_quantile(0.99, sum by (le) (rate(serving_request_duration_seconds_bucket{{endpoint="{MODEL}"}}[30s])))')
            latency = [r for r in latency if r["value"][1] not in ("NaN",)]
        assert requests and float(requests[0]["value"][1]) > 0, "no request series after 45 s"
        assert latency and 0 < float(latency[0]["value"][1]) < 1.0
        assert query(prometheus, 'up{job="serving"}')[0]["value"][1] == "1"
        assert query(prometheus, f'serving_feature_drift_psi{{endpoint="{MODEL}"}}')
        with urllib.request.urlopen(prometheus.url + "/api/v1/rules", timeout=10) as response:
            loaded = {r["name"] for g in json.loads(response.read())["data"]["groups"] for r in g["rules"]}
        assert {"EndpointLatencyHigh", "DataDriftHigh", "EndpointErrorRatioHigh"} <= loaded
    finally:
        prometheus.stop()
