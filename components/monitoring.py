"""Monitoring: kube-prometheus-stack, the DCGM exporter, the platform's alert rules and dashboards.

Creates, in dependency order: the `monitoring` namespace (labelled so endpoints accept its
scrapes); the Grafana admin password, generated and kept in Secrets Manager; the Slack
webhook (when the stack sets one as a secret) kept in Secrets Manager; Kubernetes Secrets
holding them for Grafana and Alertmanager (values stay encrypted in Pulumi state and never
appear in Helm values); the kube-prometheus-stack release (Prometheus with retention and
encrypted gp3 storage per profile, Alertmanager with the receivers, Grafana with its dashboard
sidecar, kube-state-metrics, node-exporter, and the operator's CRDs); the DCGM exporter on GPU
nodes only; the PrometheusRule from components/alerts.py; and the dashboards from
components/dashboards.py as sidecar ConfigMaps.

The namespace enforces the `privileged` Pod Security level: node-exporter reads the host's
network and process tables. Nothing else of the platform runs there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import versions
from components.alerts import AlertThresholds, EndpointObjective, rule_groups
from components.dashboards import dashboards

TOKEN = "mlops:monitoring:Monitoring"
NAMESPACE = "monitoring"
MONITORING_NAMESPACE_LABEL = "mlops.platform/monitoring"
SLACK_SECRET = "alertmanager-slack"
RPS_METRIC = "serving_requests_per_second"
"""Pods metric the adapter serves from `serving_requests_total` (the endpoints' HPAs scale on it)."""
GRAFANA_SECRET = "grafana-admin"


@dataclass(frozen=True, kw_only=True)
class MonitoringArgs:
    retention_days: int = 15
    storage_gb: int = 50
    storage_class: str = "gp3-encrypted"
    kms_key_arn: pulumi.Input[str]
    """Encrypts the Secrets Manager secrets."""
    slack_webhook: pulumi.Input[str] | None = None
    """Slack incoming-webhook URL (a Pulumi secret); without it alerts go nowhere but Alertmanager's UI."""
    slack_channel: str = "#ml-alerts"
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    endpoints: Sequence[EndpointObjective] = ()
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_toleration: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    """Where Prometheus, Alertmanager and Grafana run (dev: the system nodes)."""
    protect_secrets: bool = False
    depends_on: Sequence[pulumi.Resource] = ()
    """What must run first (the system node group)."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.retention_days <= 3650:
            problems.append(f"retention_days: got {self.retention_days}, expected 1 to 3650")
        if self.storage_gb < 5:
            problems.append(f"storage_gb: got {self.storage_gb}, expected at least 5")
        if problems:
            raise ValueError("invalid MonitoringArgs: " + "; ".join(problems))


def alertmanager_config(has_slack: bool, channel: str) -> dict:
    """Route everything to Slack when a webhook is configured; the URL is read from a mounted Secret."""
    receivers = [{"name": "null"}]
    if has_slack:
        receivers.append({
            "name": "slack",
            "slack_configs": [{"api_url_file": f"/etc/alertmanager/secrets/{SLACK_SECRET}/url", "channel": channel, "send_resolved": True,
                               "title": "{{ .CommonLabels.alertname }}", "text": "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ end }}"}],
        })
    return {
        "route": {
            "receiver": "slack" if has_slack else "null",
            "group_by": ["alertname", "endpoint"],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            "routes": [{"receiver": "null", "matchers": ['alertname="Watchdog"']}],
        },
        "receivers": receivers,
    }


class Monitoring(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    """Depend on this from anything that declares a ServiceMonitor or PrometheusRule."""
    grafana_secret_arn: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": NAMESPACE, "labels": {MONITORING_NAMESPACE_LABEL: "true", "pod-security.kubernetes.io/enforce": "privileged"}},
            opts=child,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])

        password = random.RandomPassword(f"{name}-grafana-password", length=32, special=False, opts=child)
        grafana_secret = self._secret(name, "grafana-admin", "Grafana admin password", password.result, args)
        self.grafana_secret_arn = grafana_secret.arn
        k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata={"name": GRAFANA_SECRET, "namespace": NAMESPACE},
            string_data=pulumi.Output.secret({"admin-user": "admin", "admin-password": password.result}),
            opts=in_namespace,
        )
        secrets_for_alertmanager = []
        if args.slack_webhook is not None:
            self._secret(name, "slack-webhook", "Alertmanager Slack webhook", args.slack_webhook, args)
            k8s.core.v1.Secret(
                f"{name}-slack",
                metadata={"name": SLACK_SECRET, "namespace": NAMESPACE},
                string_data=pulumi.Output.secret({"url": args.slack_webhook}),
                opts=in_namespace,
            )
            secrets_for_alertmanager.append(SLACK_SECRET)

        storage = {"volumeClaimTemplate": {"spec": {"storageClassName": args.storage_class, "accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": f"{args.storage_gb}Gi"}}}}}
        placement = {"nodeSelector": args.node_selector} if args.node_selector else {}
        self.release = versions.helm_release(
            f"{name}-kube-prometheus-stack",
            versions.KUBE_PROMETHEUS_STACK,
            release="kube-prometheus-stack",
            namespace=NAMESPACE,
            values={
                "crds": {"enabled": True},
                "prometheus": {"prometheusSpec": {
                    "retention": f"{args.retention_days}d",
                    "storageSpec": storage,
                    # pick up every ServiceMonitor and PrometheusRule, not only the chart's own
                    "serviceMonitorSelectorNilUsesHelmValues": False,
                    "ruleSelectorNilUsesHelmValues": False,
                    **placement,
                }},
                "alertmanager": {
                    "enabled": True,
                    "config": alertmanager_config(bool(secrets_for_alertmanager), args.slack_channel),
                    "alertmanagerSpec": {"secrets": secrets_for_alertmanager, "storage": {"volumeClaimTemplate": {"spec": {
                        "storageClassName": args.storage_class, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}}, **placement},
                },
                "grafana": {
                    "admin": {"existingSecret": GRAFANA_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
                    "sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "labelValue": "1", "searchNamespace": "ALL"}},
                    **placement,
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace, *args.depends_on]),
        )
        after_stack = pulumi.ResourceOptions(parent=self, depends_on=[self.release])

        versions.helm_release(
            f"{name}-dcgm-exporter",
            versions.DCGM_EXPORTER,
            release="dcgm-exporter",
            namespace=NAMESPACE,
            values={
                "nodeSelector": args.gpu_node_selector,  # GPU nodes only: CPU nodes pay nothing for it
                "tolerations": [dict(args.gpu_toleration)] if args.gpu_toleration else [],
                "serviceMonitor": {"enabled": True, "interval": "15s"},
            },
            opts=after_stack,
        )
        versions.helm_release(
            f"{name}-prometheus-adapter",
            versions.PROMETHEUS_ADAPTER,
            release="prometheus-adapter",
            namespace=NAMESPACE,
            values={
                "prometheus": {"url": f"http://kube-prometheus-stack-prometheus.{NAMESPACE}.svc", "port": 9090},
                "rules": {"default": False, "custom": [{
                    "seriesQuery": 'serving_requests_total{namespace!="",pod!=""}',
                    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
                    "name": {"matches": "^serving_requests_total$", "as": RPS_METRIC},
                    "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
                }]},
                **placement,
            },
            opts=after_stack,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-rules",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata={"name": "mlops-platform", "namespace": NAMESPACE},
            spec={"groups": rule_groups(args.thresholds, list(args.endpoints))},
            opts=after_stack,
        )
        for file_name, content in dashboards().items():
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{file_name.removesuffix('.json')}",
                metadata={"name": file_name.removesuffix(".json"), "namespace": NAMESPACE, "labels": {"grafana_dashboard": "1"}},
                data={file_name: content},
                opts=in_namespace,
            )
        self.register_outputs({"grafana_secret_arn": self.grafana_secret_arn})

    def _secret(self, name: str, role: str, description: str, value: pulumi.Input[str], args: MonitoringArgs) -> aws.secretsmanager.Secret:
        secret = aws.secretsmanager.Secret(
            f"{name}-{role}-secret", description=description, kms_key_id=args.kms_key_arn,
            recovery_window_in_days=30 if args.protect_secrets else 7,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect_secrets),
        )
        aws.secretsmanager.SecretVersion(f"{name}-{role}-value", secret_id=secret.id, secret_string=pulumi.Output.secret(value),
                                         opts=pulumi.ResourceOptions(parent=self))
        return secret
