"""The Monitoring component built from explicit args (tests/unit/builders.py): chart values, secrets,
rules per endpoint, dashboards. What each shipped stack makes of it: tests/stacks/test_stack_components.py."""

from __future__ import annotations

import json
import re

import pulumi
import pytest

from infra.inventory import Inventory
from tests.conftest import declare
from tests.unit.builders import THRESHOLDS, Parts, monitoring_args, objectives, platform

RELEASE = "kubernetes:helm.sh/v3:Release"
ENDPOINTS = [{"endpoint": "fast"}, {"endpoint": "slow"}]
OBJECTIVES = objectives(("fast", 100), ("slow", 250))


def kps(inventory):
    return next(r for r in inventory.of_type(RELEASE) if r.inputs["chart"] == "kube-prometheus-stack")


@pytest.fixture(scope="module")
def monitored() -> Inventory:
    """Monitoring of two endpoints with their own latency objectives, beside the tracking server."""
    return declare(lambda: platform(Parts(monitoring={"endpoints": OBJECTIVES}, tracking={}, endpoints=ENDPOINTS)))


@pytest.mark.parametrize(("days", "gb"), [(7, 20), (30, 200)])
def test_alertmanager_on_retention_and_storage_as_asked(days, gb):
    values = kps(declare(lambda: platform(Parts(monitoring={"retention_days": days, "storage_gb": gb})))).inputs[
        "values"
    ]
    prometheus_on_retention_and_storage(values, days, gb)


def prometheus_on_retention_and_storage(values: dict, days: int, gb: int) -> None:
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["retention"] == f"{days}d"
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == f"{gb}Gi" and claim["storageClassName"] == "gp3-encrypted"
    assert values["alertmanager"]["enabled"] is True
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False and spec["ruleSelectorNilUsesHelmValues"] is False
    assert values["grafana"]["admin"]["existingSecret"] == "grafana-admin"


def test_a_slack_webhook_goes_through_secrets_never_into_values():
    webhook = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"
    inventory = declare(lambda: platform(Parts(monitoring={"slack_webhook": pulumi.Output.secret(webhook)})))
    slack_webhook_kept_secret(inventory, webhook)


def slack_webhook_kept_secret(inventory: Inventory, webhook: str) -> None:
    text = json.dumps([r.inputs for r in inventory.resources])
    assert webhook not in text  # anywhere in the inventory: values, secrets, config maps
    values = kps(inventory).inputs["values"]
    (slack,) = [r for r in values["alertmanager"]["config"]["receivers"] if r["name"] == "slack"]
    assert slack["slack_configs"][0]["api_url_file"] == "/etc/alertmanager/secrets/alertmanager-slack/url"
    assert values["alertmanager"]["alertmanagerSpec"]["secrets"] == ["alertmanager-slack"]
    assert values["alertmanager"]["config"]["route"]["receiver"] == "slack"
    (secret,) = [
        s
        for s in inventory.of_type("kubernetes:core/v1:Secret")
        if s.inputs["metadata"]["name"] == "alertmanager-slack"
    ]
    assert secret.inputs["stringData"] == "[secret]"
    assert any(s.name.endswith("-slack-webhook-secret") for s in inventory.of_type("aws:secretsmanager/secret:Secret"))


def test_without_a_webhook_alerts_go_to_the_null_receiver(monitored):
    config = kps(monitored).inputs["values"]["alertmanager"]["config"]
    assert config["route"]["receiver"] == "null" and [r["name"] for r in config["receivers"]] == ["null"]


@pytest.mark.parametrize("protect", [True, False])
def test_grafana_admin_password_is_generated_and_kept_in_secrets_manager(protect):
    inventory = declare(lambda: platform(Parts(monitoring={"protect_secrets": protect})))
    (secret,) = [
        s for s in inventory.of_type("aws:secretsmanager/secret:Secret") if s.name.endswith("-grafana-admin-secret")
    ]
    assert secret.inputs["kmsKeyId"].startswith("arn:aws:kms:") and secret.protect is protect
    (k8s_secret,) = [
        s for s in inventory.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == "grafana-admin"
    ]
    assert k8s_secret.inputs["stringData"] == "[secret]"


def test_every_endpoint_has_a_service_monitor_and_a_latency_rule(monitored):
    endpoints_monitored(monitored, {o.endpoint: o.latency_objective_ms for o in OBJECTIVES})


def endpoints_monitored(inventory: Inventory, objectives_ms: dict[str, int]) -> None:
    monitors = {
        m.inputs["metadata"]["name"] for m in inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    }
    assert set(objectives_ms) <= monitors
    (rule,) = inventory.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    groups = rule.inputs["spec"]["groups"]
    latency = {
        r["labels"]["endpoint"]: r["expr"] for g in groups for r in g["rules"] if r["alert"] == "EndpointLatencyHigh"
    }
    assert set(latency) == set(objectives_ms)
    for endpoint, ms in objectives_ms.items():
        assert latency[endpoint].endswith(f"> {ms / 1000:g}")
    alerts = {r["alert"] for g in groups for r in g["rules"]}
    assert {
        "EndpointErrorRatioHigh",
        "EndpointDown",
        "EndpointNoReadyReplica",
        "TrackingServerDown",
        "GpuNodeIdle",
        "GpuPodsPending",
        "DataDriftHigh",
    } <= alerts
    release = kps(inventory)
    for monitor in inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor"):
        assert release.urn in monitor.depends_on  # the CRDs come with the chart


def test_dcgm_exporter_runs_on_gpu_nodes_only(monitored):
    dcgm = next(r for r in monitored.of_type(RELEASE) if r.inputs["chart"] == "dcgm-exporter").inputs["values"]
    assert dcgm["nodeSelector"] == {"mlops.platform/pool": "gpu"}
    assert dcgm["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_dashboards_are_generated_and_provisioned_through_the_sidecar(monitored):
    maps = [
        c
        for c in monitored.of_type("kubernetes:core/v1:ConfigMap")
        if (c.inputs["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"
    ]
    boards = {name: json.loads(content) for c in maps for name, content in c.inputs["data"].items()}
    assert set(boards) == {"mlops-serving.json", "mlops-gpus.json", "mlops-tracking.json"}
    serving = " ".join(t["expr"] for p in boards["mlops-serving.json"]["panels"] for t in p["targets"])
    for metric in (
        "serving_requests_total",
        "serving_request_duration_seconds_bucket",
        "serving_batch_rows",
        "serving_model_version_info",
        "serving_feature_drift_psi",
    ):
        assert metric in serving
    gpus = " ".join(t["expr"] for p in boards["mlops-gpus.json"]["panels"] for t in p["targets"])
    assert "DCGM_FI_DEV_GPU_UTIL" in gpus and "DCGM_FI_DEV_FB_USED" in gpus
    assert boards["mlops-tracking.json"]["panels"]


def test_rps_autoscaling_is_served_by_the_metrics_adapter():
    busy = {"endpoint": "busy", "autoscaling_metric": "rps", "autoscaling_target": 150}
    inventory = declare(lambda: platform(Parts(monitoring={}, tracking={}, endpoints=[busy])))
    (hpa,) = inventory.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    metric = hpa.inputs["spec"]["metrics"][0]["pods"]
    adapter = next(r for r in inventory.of_type(RELEASE) if r.inputs["chart"] == "prometheus-adapter").inputs["values"]
    (rule,) = adapter["rules"]["custom"]
    assert metric["metric"]["name"] == rule["name"]["as"] and metric["target"]["averageValue"] == "150"
    assert rule["seriesQuery"].startswith("serving_requests_total")


# -- what EKS hides (issue 11, item 11) -------------------------------------------------------
def test_control_plane_parts_eks_hides_are_neither_scraped_nor_alerted_on(monitored):
    eks_hidden_parts_off(kps(monitored).inputs["values"])


def eks_hidden_parts_off(values: dict) -> None:
    from infra.upstream import chart_defaults

    defaults = chart_defaults("kube-prometheus-stack", "88.2.0")
    # the chart's own rule groups about the scheduler, controller manager, etcd and kube-proxy
    hidden_groups = {
        g for g in defaults["defaultRules"]["rules"] if re.search("etcd|scheduler|controllermanager|proxy", g.lower())
    }
    assert hidden_groups == {
        "etcd",
        "kubeControllerManager",
        "kubeProxy",
        "kubeSchedulerAlerting",
        "kubeSchedulerRecording",
    }
    for component in ("kubeScheduler", "kubeControllerManager", "kubeEtcd", "kubeProxy"):
        assert defaults[component]["enabled"] is True and values[component] == {"enabled": False}, component
    assert values["defaultRules"]["rules"] == dict.fromkeys(hidden_groups, False)
    assert "kubeApiServer" not in values and "kubelet" not in values  # EKS serves these: still scraped


# -- the pool label of the GPU dashboard (item 13) --------------------------------------------
def test_kube_state_metrics_label_names_follow_its_sanitizer():
    from components.dashboards import ksm_label

    assert ksm_label("mlops.platform/pool") == "label_mlops_platform_pool"
    assert ksm_label("karpenter.sh/capacity-type") == "label_karpenter_sh_capacity_type"
    assert ksm_label("topology.kubernetes.io/zoneName") == "label_topology_kubernetes_io_zone_name"


def test_the_node_labels_the_dashboards_use_are_exported_by_kube_state_metrics(monitored):
    from components.dashboards import ksm_label
    from components.node_pools import POOL_LABEL

    (allowlist,) = kps(monitored).inputs["values"]["kube-state-metrics"]["metricLabelsAllowlist"]
    resource, labels = re.fullmatch(r"(\w+)=\[(.*)\]", allowlist).groups()
    assert resource == "nodes" and POOL_LABEL in labels.split(",")
    exported = {ksm_label(k) for k in labels.split(",")}
    maps = [
        c
        for c in monitored.of_type("kubernetes:core/v1:ConfigMap")
        if "mlops-gpus.json" in (c.inputs.get("data") or {})
    ]
    exprs = [t["expr"] for p in json.loads(maps[0].inputs["data"]["mlops-gpus.json"])["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\blabel_\w+", e)}
    assert ksm_label(POOL_LABEL) in used and used <= exported
    assert any(f'{ksm_label(POOL_LABEL)}="gpu"' in e for e in exprs)


# -- volumes on destroy (item 7) -------------------------------------------------------------
def test_monitoring_volumes_outlive_nothing_they_need(monitored):
    volumes_outlive_nothing_they_need(monitored)


def volumes_outlive_nothing_they_need(inventory: Inventory) -> None:
    release = kps(inventory)
    spec = release.inputs["values"]["prometheus"]["prometheusSpec"]
    class_name = spec["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"]
    (storage_class,) = [
        s
        for s in inventory.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
        if s.inputs["metadata"]["name"] == class_name
    ]
    assert storage_class.inputs["reclaimPolicy"] == "Delete"  # a deleted PVC deletes its EBS volume
    (namespace,) = [
        n for n in inventory.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == "monitoring"
    ]
    # destroy: release, then the namespace (its deletion deletes the PVCs), then the class and the CSI driver
    assert storage_class.urn in release.depends_on and storage_class.urn in namespace.depends_on
    (ebs,) = [a for a in inventory.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "aws-ebs-csi-driver"]
    assert ebs.urn in storage_class.depends_on
    # the operator recreates a StatefulSet it cannot update: the volumes must survive that
    keep = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == keep
    assert release.inputs["values"]["alertmanager"]["alertmanagerSpec"]["persistentVolumeClaimRetentionPolicy"] == keep
    alertmanager_class = release.inputs["values"]["alertmanager"]["alertmanagerSpec"]["storage"]["volumeClaimTemplate"][
        "spec"
    ]["storageClassName"]
    assert alertmanager_class == class_name


def test_monitoring_without_its_storage_class_is_rejected():
    errors = []

    def build():
        built = platform()
        try:
            monitoring_args(built, volume_dependencies=())
        except ValueError as exc:
            errors.append(str(exc))

    declare(build)
    assert len(errors) == 1 and "volume_dependencies: empty" in errors[0]


# -- the endpoint label (item 8; proven against a real Prometheus in tests/services) ----------
def test_endpoint_service_monitors_keep_the_model_servers_endpoint_label(monitored):
    service_monitors_keep_the_endpoint_label(monitored)


def service_monitors_keep_the_endpoint_label(inventory: Inventory) -> None:
    from components.monitoring import model_server_relabelings

    monitors = inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    assert monitors
    for monitor in inventory.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor"):
        (endpoint,) = monitor.inputs["spec"]["endpoints"]
        assert endpoint["metricRelabelings"] == model_server_relabelings() and not endpoint.get("honorLabels")


# -- the DCGM exporter's pinned chart (item 6) ------------------------------------------------
def test_dcgm_exporter_is_pinned_to_a_published_chart_and_its_labels_match():
    import yaml

    from components import versions
    from components.alerts import rule_groups
    from components.dashboards import dashboards
    from infra.upstream import UPSTREAM_DIR

    reference = UPSTREAM_DIR / f"dcgm-exporter-{versions.DCGM_EXPORTER.version}"
    assert yaml.safe_load((reference / "Chart.yaml").read_text())["version"] == versions.DCGM_EXPORTER.version
    written = set(
        re.findall(r'[,{](\w+)="\{\{', (reference / "render_metrics.go").read_text())
    )  # labels the exporter writes
    assert {"gpu", "Hostname"} <= written
    queries = [r["expr"] for g in rule_groups(THRESHOLDS, []) for r in g["rules"] if "DCGM_" in r["expr"]]
    queries += [
        t["expr"]
        for p in json.loads(dashboards()["mlops-gpus.json"])["panels"]
        for t in p["targets"]
        if "DCGM_" in t["expr"]
    ]
    assert len(queries) >= 3
    for expr in queries:
        for grouped in re.findall(r"by \(([^)]*)\)", expr):
            assert {label.strip() for label in grouped.split(",")} <= written, expr
