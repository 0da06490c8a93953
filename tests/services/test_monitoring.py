"""Monitoring for real: drift scores from a live model server, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

import pytest

from components.alerts import EndpointObjective, rule_groups, rules_file
from infra.processes import start_prometheus
from infra.program import alert_thresholds
from tests.services.conftest import start_serving
from tests.services.test_serving import get, post

MODEL = "drift-test"


@pytest.fixture(scope="module")
def drift_server(tracking, tmp_path_factory):
    import os

    import mlflow

    from examples.train import train_and_register

    os.environ.update(
        {
            "MLFLOW_TRACKING_USERNAME": tracking.username,
            "MLFLOW_TRACKING_PASSWORD": tracking.password,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    mlflow.set_tracking_uri(tracking.url)
    train_and_register(MODEL)
    server = start_serving(
        tracking,
        MODEL,
        tmp_path_factory.mktemp("drift"),
        drift_window="400",
        drift_min_rows="200",
        drift_interval_seconds="0.5",
    )
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
        chunk = frame.iloc[start : start + rows_per_request]
        status, _, _ = post(
            server, {"dataframe_split": {"columns": list(chunk.columns), "data": chunk.values.tolist()}}
        )
        assert status == 200


def test_shifted_inputs_raise_the_drift_score_and_unshifted_keep_it_low(drift_server):
    from examples.train import training_data

    x_train, _, _, _ = training_data()
    threshold = alert_thresholds().drift_psi
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
    rules.write_text(rules_file(rule_groups(alert_thresholds(), [EndpointObjective(MODEL, 250)])))
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
            latency = query(
                prometheus,
                "histogram_quantile(0.99, sum by (le) "
                f'(rate(serving_request_duration_seconds_bucket{{endpoint="{MODEL}"}}[30s])))',
            )
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


def serving_objects(inventory) -> tuple[dict, dict, str]:
    """The first endpoint's ServiceMonitor, the stable Service it selects, and the model server's container name."""
    from infra.manifests import manifest_of

    monitor = manifest_of(inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")[0])
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [manifest_of(s) for s in inventory.of_type("kubernetes:core/v1:Service")]
    (service,) = [
        s
        for s in services
        if s["metadata"]["namespace"] == "serving"
        and selector.items() <= (s["metadata"].get("labels") or {}).items()
        and s["metadata"]["labels"].get("mlops.platform/track") == "stable"
    ]
    (deployment,) = [
        manifest_of(d)
        for d in inventory.of_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["name"] == service["metadata"]["name"]
    ]
    return monitor, service, deployment["spec"]["template"]["spec"]["containers"][0]["name"]


def label_values(prometheus, label: str, match: str) -> list[str]:
    url = f"{prometheus.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]


def test_per_endpoint_alerts_and_dashboards_match_what_the_operator_scrapes(drift_server, stack_inventories, tmp_path):
    """Issue 11 item 8: a real Prometheus with the scrape config the operator generates for the
    ServiceMonitor the serving component declares. Without its metricRelabelings (the ServiceMonitor
    as it was, scraped as pod `unfixed`) the model server's `endpoint` label becomes
    `exported_endpoint`, and neither the latency alert nor the dashboards' variable match."""
    import copy

    from components.dashboards import dashboards
    from examples.train import training_data
    from tests.services.operator_scrape import scrape_config

    monitor, service, container = serving_objects(stack_inventories["dev"])
    assert monitor["spec"]["endpoints"][0].get("metricRelabelings")
    unfixed = copy.deepcopy(monitor)
    unfixed["metadata"]["name"] += "-unfixed"
    del unfixed["spec"]["endpoints"][0]["metricRelabelings"]
    address = drift_server.url.removeprefix("http://")
    configs = [
        scrape_config(m, service, address=address, pod=pod, container=container, interval="1s")
        for m, pod in ((monitor, "fixed"), (unfixed, "unfixed"))
    ]
    prometheus = start_prometheus(tmp_path, {}, scrape_configs=configs, scrape_interval="1s")
    try:
        x_train, _, _, _ = training_data()
        (latency_rule,) = [
            r
            for g in rule_groups(alert_thresholds(), [EndpointObjective(MODEL, 250)])
            for r in g["rules"]
            if r["alert"] == "EndpointLatencyHigh"
        ]
        latency = latency_rule["expr"].rsplit(" > ", 1)[0]  # the alert's query, without its threshold
        deadline, found = time.time() + 45, []
        while time.time() < deadline and not found:
            send(drift_server, x_train.sample(40, random_state=int(time.time())))
            time.sleep(1)
            found = [r for r in query(prometheus, latency) if r["value"][1] != "NaN"]
        assert found and found[0]["metric"] == {"endpoint": MODEL}, (
            "EndpointLatencyHigh's query matched nothing after 45 s"
        )
        (up,) = query(prometheus, 'up{pod="fixed"}')
        assert (
            up["metric"]["endpoint"] == "http"
            and up["metric"]["namespace"] == "serving"
            and up["metric"]["service"] == service["metadata"]["name"]
        )

        # the bug, reproduced by the operator's own relabeling: the port name takes `endpoint`
        assert {
            r["metric"]["exported_endpoint"] for r in query(prometheus, 'serving_requests_total{pod="unfixed"}')
        } == {MODEL}
        assert {r["metric"]["endpoint"] for r in query(prometheus, 'serving_requests_total{pod="unfixed"}')} == {"http"}
        assert query(prometheus, latency.replace(f'endpoint="{MODEL}"', f'endpoint="{MODEL}",pod="unfixed"')) == []
        # fixed: the model server's value, and no exported_endpoint left
        assert query(prometheus, 'serving_requests_total{pod="fixed",exported_endpoint!=""}') == []

        board = json.loads(dashboards()["mlops-serving.json"])
        (variable,) = [v for v in board["templating"]["list"] if v["name"] == "endpoint"]
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]).groups()
        assert label_values(prometheus, label, f'{metric}{{pod="fixed"}}') == [MODEL]
        assert label_values(prometheus, label, f'{metric}{{pod="unfixed"}}') == ["http"]
    finally:
        prometheus.stop()
