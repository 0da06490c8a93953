"""The Monitoring component under mocks: chart values, secrets, rules per endpoint, dashboards."""

from __future__ import annotations

import json

import pytest

from infra.offline import run_offline
from infra.program import main as program
from infra.settings import load_settings
from infra.stackfile import load_stack_config

RELEASE = "kubernetes:helm.sh/v3:Release"


def kps(inventory):
    return next(r for r in inventory.of_type(RELEASE) if r.inputs["chart"] == "kube-prometheus-stack")


def settings_of(stack):
    config = load_stack_config(stack)
    return load_settings(config.namespace("mlops-platform"), stack=stack, region=config.values["aws:region"])


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_alertmanager_on_retention_and_storage_per_profile(stack_inventories, stack):
    values = kps(stack_inventories[stack]).inputs["values"]
    monitoring = settings_of(stack).monitoring
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["retention"] == f"{monitoring.retention_days}d"
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == f"{monitoring.storage_gb}Gi" and claim["storageClassName"] == "gp3-encrypted"
    assert values["alertmanager"]["enabled"] is True
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False and spec["ruleSelectorNilUsesHelmValues"] is False
    assert values["grafana"]["admin"]["existingSecret"] == "grafana-admin"


def test_retention_grows_with_the_profile(stack_inventories):
    days = [int(kps(stack_inventories[s]).inputs["values"]["prometheus"]["prometheusSpec"]["retention"][:-1]) for s in ("dev", "staging", "prod")]
    assert days == sorted(days) and days[0] < days[-1]


def test_a_slack_webhook_goes_through_secrets_never_into_values():
    webhook = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"
    config = load_stack_config("dev")
    runtime = config.runtime_config()
    runtime["mlops-platform:alertSlackWebhook"] = webhook
    inventory = run_offline(program, project=config.project, stack="dev", config=runtime, secret_keys=["mlops-platform:alertSlackWebhook"])
    text = json.dumps([r.inputs for r in inventory.resources])
    assert webhook not in text  # anywhere in the inventory: values, secrets, config maps
    values = kps(inventory).inputs["values"]
    (slack,) = [r for r in values["alertmanager"]["config"]["receivers"] if r["name"] == "slack"]
    assert slack["slack_configs"][0]["api_url_file"] == "/etc/alertmanager/secrets/alertmanager-slack/url"
    assert values["alertmanager"]["alertmanagerSpec"]["secrets"] == ["alertmanager-slack"]
    assert values["alertmanager"]["config"]["route"]["receiver"] == "slack"
    (secret,) = [s for s in inventory.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == "alertmanager-slack"]
    assert secret.inputs["stringData"] == "[secret]"
    assert any(s.name.endswith("-slack-webhook-secret") for s in inventory.of_type("aws:secretsmanager/secret:Secret"))


def test_without_a_webhook_alerts_go_to_the_null_receiver(stack_inventories):
    config = kps(stack_inventories["dev"]).inputs["values"]["alertmanager"]["config"]
    assert config["route"]["receiver"] == "null" and [r["name"] for r in config["receivers"]] == ["null"]


def test_grafana_admin_password_is_generated_and_kept_in_secrets_manager(stack_inventories):
    inventory = stack_inventories["prod"]
    (secret,) = [s for s in inventory.of_type("aws:secretsmanager/secret:Secret") if s.name.endswith("-grafana-admin-secret")]
    assert secret.inputs["kmsKeyId"].startswith("arn:aws:kms:") and secret.protect
    (k8s_secret,) = [s for s in inventory.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == "grafana-admin"]
    assert k8s_secret.inputs["stringData"] == "[secret]"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_endpoint_has_a_service_monitor_and_a_latency_rule(stack_inventories, stack):
    inventory = stack_inventories[stack]
    endpoints = settings_of(stack).endpoints
    monitors = {m.inputs["metadata"]["name"] for m in inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")}
    assert {e.name for e in endpoints} <= monitors
    (rule,) = inventory.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    latency = {r["labels"]["endpoint"]: r["expr"] for g in rule.inputs["spec"]["groups"] for r in g["rules"] if r["alert"] == "EndpointLatencyHigh"}
    for e in endpoints:
        assert latency[e.name].endswith(f"> {e.latency_objective_ms / 1000:g}")
    alerts = {r["alert"] for g in rule.inputs["spec"]["groups"] for r in g["rules"]}
    assert {"EndpointErrorRatioHigh", "EndpointDown", "EndpointNoReadyReplica", "TrackingServerDown", "GpuNodeIdle", "GpuPodsPending", "DataDriftHigh"} <= alerts
    release = kps(inventory)
    for monitor in inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor"):
        assert release.urn in monitor.depends_on  # the CRDs come with the chart


def test_dcgm_exporter_runs_on_gpu_nodes_only(stack_inventories):
    dcgm = next(r for r in stack_inventories["dev"].of_type(RELEASE) if r.inputs["chart"] == "dcgm-exporter").inputs["values"]
    assert dcgm["nodeSelector"] == {"mlops.platform/pool": "gpu"}
    assert dcgm["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_dashboards_are_generated_and_provisioned_through_the_sidecar(stack_inventories):
    maps = [c for c in stack_inventories["dev"].of_type("kubernetes:core/v1:ConfigMap") if (c.inputs["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    boards = {name: json.loads(content) for c in maps for name, content in c.inputs["data"].items()}
    assert set(boards) == {"mlops-serving.json", "mlops-gpus.json", "mlops-tracking.json"}
    serving = " ".join(t["expr"] for p in boards["mlops-serving.json"]["panels"] for t in p["targets"])
    for metric in ("serving_requests_total", "serving_request_duration_seconds_bucket", "serving_batch_rows", "serving_model_version_info", "serving_feature_drift_psi"):
        assert metric in serving
    gpus = " ".join(t["expr"] for p in boards["mlops-gpus.json"]["panels"] for t in p["targets"])
    assert "DCGM_FI_DEV_GPU_UTIL" in gpus and "DCGM_FI_DEV_FB_USED" in gpus
    assert boards["mlops-tracking.json"]["panels"]


def test_rps_autoscaling_is_served_by_the_metrics_adapter():
    config = load_stack_config("dev")
    runtime = config.runtime_config()
    runtime["mlops-platform:endpoints"] = json.dumps([{"name": "busy", "model": "m", "autoscaling": {"metric": "rps", "target": 150}}])
    inventory = run_offline(program, project=config.project, stack="dev", config=runtime)
    (hpa,) = inventory.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    metric = hpa.inputs["spec"]["metrics"][0]["pods"]
    adapter = next(r for r in inventory.of_type(RELEASE) if r.inputs["chart"] == "prometheus-adapter").inputs["values"]
    (rule,) = adapter["rules"]["custom"]
    assert metric["metric"]["name"] == rule["name"]["as"] and metric["target"]["averageValue"] == "150"
    assert rule["seriesQuery"].startswith("serving_requests_total")
