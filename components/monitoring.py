"""Monitoring: kube-prometheus-stack, the DCGM exporter, the platform's alert rules and dashboards.

Creates, in dependency order: the `monitoring` namespace (labelled so endpoints accept its
scrapes); the Grafana admin password, generated and kept in Secrets Manager; the Slack
webhook (when the stack sets one as a secret) kept in Secrets Manager; with pipelines that
retrain on drift, a generated token for the retraining receiver; Kubernetes Secrets holding
them for Grafana and Alertmanager (values stay encrypted in Pulumi state and never
appear in Helm values); the kube-prometheus-stack release (Prometheus with retention and
encrypted gp3 storage per profile, Alertmanager with the receivers, Grafana with its dashboard
sidecar, kube-state-metrics, node-exporter, and the operator's CRDs); the DCGM exporter on GPU
nodes only; the PrometheusRule from components/alerts.py; and the dashboards from
components/dashboards.py as sidecar ConfigMaps.

The namespace enforces the `privileged` Pod Security level: node-exporter reads the host's
network and process tables. Nothing else of the platform runs there.

EKS runs the control plane: kube-scheduler, kube-controller-manager and etcd cannot be scraped,
and the kube-proxy add-on serves its metrics on 127.0.0.1 only. The chart's scrape jobs and
default alert rules for all four are off, or their "down" alerts would fire forever.

Destroy order: Prometheus' and Alertmanager's volumes are PVCs of the operator's StatefulSets;
they are retained when a StatefulSet is deleted (the operator deletes and recreates it when an
update is impossible, e.g. a new volume size, and the data must survive that) and deleted with
the namespace. The namespace and the release depend on `volume_dependencies` (the StorageClass,
which depends on the EBS CSI driver), so on `pulumi destroy` the namespace, whose deletion
Pulumi awaits, is gone before the driver that deletes the EBS volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import versions
from components.alerts import AlertThresholds, EndpointObjective, rule_groups
from components.dashboards import CAPACITY_TYPE_LABEL, dashboards
from components.node_pools import POOL_LABEL
from components.options import dependencies

TOKEN = "mlops:monitoring:Monitoring"
NAMESPACE = "monitoring"
MONITORING_NAMESPACE_LABEL = "mlops.platform/monitoring"
SLACK_SECRET = "alertmanager-slack"
RETRAIN_SECRET = "alertmanager-retrain"
"""The bearer token Alertmanager presents to the drift retraining receiver (components/training.py)."""
RPS_METRIC = "serving_requests_per_second"
"""Pods metric the adapter serves from `serving_requests_total` (the endpoints' HPAs scale on it)."""
GRAFANA_SECRET = "grafana-admin"
NODE_LABELS_FOR_METRICS = (POOL_LABEL, "karpenter.sh/nodepool", CAPACITY_TYPE_LABEL, "node.kubernetes.io/instance-type")
"""Node labels kube-state-metrics copies into `kube_node_labels` (by default it copies none): the
platform's pool (the GPU dashboard counts GPU nodes by it), Karpenter's NodePool and capacity type
(spot or on-demand), and the instance type."""
EKS_HIDDEN_COMPONENTS = ("kubeScheduler", "kubeControllerManager", "kubeEtcd", "kubeProxy")
"""kube-prometheus-stack scrape targets EKS does not expose (see the module docstring)."""
EKS_HIDDEN_RULES = ("kubeSchedulerAlerting", "kubeSchedulerRecording", "kubeControllerManager", "etcd", "kubeProxy")
"""The chart's `defaultRules.rules` groups about those components."""


def model_server_relabelings() -> list[dict[str, Any]]:
    """`metricRelabelings` for a ServiceMonitor of model servers: their `endpoint` label wins.

    The Prometheus Operator gives every target of a ServiceMonitor an `endpoint` label, the
    scraped port's name (`http`). The model server labels its series with `endpoint` too (the
    endpoint's name); on that collision Prometheus keeps the target's value and renames the
    scraped one `exported_endpoint`, so `EndpointLatencyHigh{endpoint="<name>"}` and the
    dashboards' endpoint variable would match nothing. These rules run after the scrape and move
    the model server's value back to `endpoint` (series without one, `process_*`, keep `http`).

    Chosen over `honorLabels: true`, which would let scraped series override every target label
    (`namespace`, `pod`, `job`: what HPAs, the adapter and `EndpointDown` select on) and which a
    Prometheus with `overrideHonorLabels` ignores.
    """
    return [
        {
            "sourceLabels": ["exported_endpoint"],
            "regex": "(.+)",
            "targetLabel": "endpoint",
            "replacement": "$1",
            "action": "replace",
        },
        {"action": "labeldrop", "regex": "exported_endpoint"},
    ]


@dataclass(frozen=True, kw_only=True)
class MonitoringArgs:
    """Values from the stack's `monitoring` settings (defaults in infra/profiles.py and infra/settings.py only)
    and from the components monitoring watches."""

    retention_days: int
    storage_gb: int
    storage_class: str
    """The encrypted StorageClass of the volumes (`ClusterAddons.storage_class`)."""
    kms_key_arn: pulumi.Input[str]
    """Encrypts the Secrets Manager secrets."""
    slack_webhook: pulumi.Input[str] | None
    """Slack incoming-webhook URL (a Pulumi secret); None: alerts go nowhere but Alertmanager's UI."""
    slack_channel: str
    thresholds: AlertThresholds
    endpoints: Sequence[EndpointObjective]
    gpu_node_selector: dict[str, str]
    gpu_toleration: dict[str, str]
    node_selector: dict[str, str]
    """Where Prometheus, Alertmanager and Grafana run (dev: the system nodes; empty: anywhere)."""
    protect_secrets: bool
    retrain_webhook_url: str | None
    """The drift retraining receiver (components/training.py): `DataDriftHigh` is routed there too, with a generated
    token."""
    volume_dependencies: Sequence[pulumi.Resource]
    """What the volumes need: the `storage_class` StorageClass (which depends on the EBS CSI
    driver). The namespace and the release depend on it, so it outlives their PVCs on destroy."""

    def __post_init__(self) -> None:
        problems = []
        if not self.volume_dependencies:
            problems.append(
                "volume_dependencies: empty; pass the StorageClass of storage_class, or destroy orphans the EBS volumes"
            )
        if not 1 <= self.retention_days <= 3650:
            problems.append(f"retention_days: got {self.retention_days}, expected 1 to 3650")
        if self.storage_gb < 5:
            problems.append(f"storage_gb: got {self.storage_gb}, expected at least 5")
        if problems:
            raise ValueError("invalid MonitoringArgs: " + "; ".join(problems))


@dataclass(frozen=True)
class RetrainRoute:
    """Where Alertmanager sends `DataDriftHigh` to start a pipeline's retraining (services/training/receiver.py)."""

    url: str
    credentials_file: str = f"/etc/alertmanager/secrets/{RETRAIN_SECRET}/token"
    group_wait: str = "30s"


def alertmanager_config(has_slack: bool, channel: str, retrain: RetrainRoute | None = None) -> dict:
    """Route everything to Slack when a webhook is configured; the URL is read from a mounted Secret.
    With `retrain`, `DataDriftHigh` also goes to the retraining receiver, with a bearer token read
    from a mounted Secret, and then on to the default receiver, so people still see it."""
    receivers: list[dict[str, Any]] = [{"name": "null"}]
    if has_slack:
        receivers.append(
            {
                "name": "slack",
                "slack_configs": [
                    {
                        "api_url_file": f"/etc/alertmanager/secrets/{SLACK_SECRET}/url",
                        "channel": channel,
                        "send_resolved": True,
                        "title": "{{ .CommonLabels.alertname }}",
                        "text": "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ end }}",
                    }
                ],
            }
        )
    default = "slack" if has_slack else "null"
    routes: list[dict[str, Any]] = [{"receiver": "null", "matchers": ['alertname="Watchdog"']}]
    if retrain is not None:
        receivers.append(
            {
                "name": "retrain",
                "webhook_configs": [
                    {
                        "url": retrain.url,
                        "send_resolved": False,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": retrain.credentials_file}
                        },
                    }
                ],
            }
        )
        drift = ['alertname="DataDriftHigh"']
        routes += [
            {"receiver": "retrain", "matchers": drift, "group_wait": retrain.group_wait, "continue": True},
            {"receiver": default, "matchers": drift},
        ]
    return {
        "route": {
            "receiver": default,
            "group_by": ["alertname", "endpoint"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": routes,
        },
        "receivers": receivers,
    }


def _volume(storage_class: str, size_gb: int) -> dict[str, Any]:
    return {
        "volumeClaimTemplate": {
            "spec": {
                "storageClassName": storage_class,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": f"{size_gb}Gi"}},
            }
        }
    }


# The operator deletes and recreates a StatefulSet it cannot update (a new volume size, say):
# `Delete` here would delete the volumes with it. The namespace's deletion removes them on destroy.
_KEEP_VOLUMES = {"whenDeleted": "Retain", "whenScaled": "Retain"}


def kube_prometheus_stack_values(args: MonitoringArgs, alertmanager_secrets: list[str]) -> dict[str, Any]:
    """The chart's values: retention and storage per profile, Alertmanager's receivers, Grafana's
    secret and sidecar, node labels for kube-state-metrics, and nothing EKS hides."""
    placement = {"nodeSelector": args.node_selector} if args.node_selector else {}
    return {
        "crds": {"enabled": True},
        "prometheus": {
            "prometheusSpec": {
                "retention": f"{args.retention_days}d",
                "storageSpec": _volume(args.storage_class, args.storage_gb),
                "persistentVolumeClaimRetentionPolicy": _KEEP_VOLUMES,
                # pick up every ServiceMonitor and PrometheusRule, not only the chart's own
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                **placement,
            }
        },
        "alertmanager": {
            "enabled": True,
            "config": alertmanager_config(
                SLACK_SECRET in alertmanager_secrets,
                args.slack_channel,
                RetrainRoute(args.retrain_webhook_url) if args.retrain_webhook_url else None,
            ),
            "alertmanagerSpec": {
                "secrets": alertmanager_secrets,
                "storage": _volume(args.storage_class, 2),
                "persistentVolumeClaimRetentionPolicy": _KEEP_VOLUMES,
                **placement,
            },
        },
        "grafana": {
            "admin": {"existingSecret": GRAFANA_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": "grafana_dashboard",
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                }
            },
            **placement,
        },
        "kube-state-metrics": {"metricLabelsAllowlist": [f"nodes=[{','.join(NODE_LABELS_FOR_METRICS)}]"]},
        **{component: {"enabled": False} for component in EKS_HIDDEN_COMPONENTS},
        "defaultRules": {"rules": {group: False for group in EKS_HIDDEN_RULES}},
    }


class Monitoring(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    """Depend on this from anything that declares a ServiceMonitor or PrometheusRule."""
    retrain_token: pulumi.Output[str] | None
    """The bearer token Alertmanager sends the retraining receiver (with `retrain_webhook_url`)."""
    grafana_secret_arn: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """`opts.depends_on`: what must run before the Prometheus stack installs (the system node group)."""
        super().__init__(TOKEN, name, None, opts)
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={
                "name": NAMESPACE,
                "labels": {MONITORING_NAMESPACE_LABEL: "true", "pod-security.kubernetes.io/enforce": "privileged"},
            },
            # deleting the namespace deletes the PVCs: the StorageClass and the CSI driver must still be there
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.volume_dependencies)),
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        self.grafana_secret_arn = self._grafana_admin(name, args, in_namespace)
        secrets_for_alertmanager = self._alertmanager_secrets(name, args, in_namespace)
        self.release = versions.helm_release(
            f"{name}-kube-prometheus-stack",
            versions.KUBE_PROMETHEUS_STACK,
            release="kube-prometheus-stack",
            namespace=NAMESPACE,
            values=kube_prometheus_stack_values(args, secrets_for_alertmanager),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[namespace, *dependencies(opts), *args.volume_dependencies]
            ),
        )
        self._exporters(name, args, after_stack=pulumi.ResourceOptions(parent=self, depends_on=[self.release]))
        for file_name, content in dashboards().items():
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{file_name.removesuffix('.json')}",
                metadata={
                    "name": file_name.removesuffix(".json"),
                    "namespace": NAMESPACE,
                    "labels": {"grafana_dashboard": "1"},
                },
                data={file_name: content},
                opts=in_namespace,
            )
        self.register_outputs({"grafana_secret_arn": self.grafana_secret_arn})

    def _grafana_admin(
        self, name: str, args: MonitoringArgs, in_namespace: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        """Grafana's generated admin password: in Secrets Manager for people, in a Secret for the chart;
        the Secrets Manager secret's ARN."""
        password = random.RandomPassword(
            f"{name}-grafana-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        grafana_secret = self._secret(name, "grafana-admin", "Grafana admin password", password.result, args)
        k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata={"name": GRAFANA_SECRET, "namespace": NAMESPACE},
            string_data=pulumi.Output.secret({"admin-user": "admin", "admin-password": password.result}),
            opts=in_namespace,
        )
        return grafana_secret.arn

    def _alertmanager_secrets(self, name: str, args: MonitoringArgs, in_namespace: pulumi.ResourceOptions) -> list[str]:
        """The Secrets Alertmanager mounts: the Slack webhook (when configured) and the retraining
        receiver's generated token (with `retrain_webhook_url`, also kept as `retrain_token`); their names."""
        mounted = []
        if args.slack_webhook is not None:
            self._secret(name, "slack-webhook", "Alertmanager Slack webhook", args.slack_webhook, args)
            k8s.core.v1.Secret(
                f"{name}-slack",
                metadata={"name": SLACK_SECRET, "namespace": NAMESPACE},
                string_data=pulumi.Output.secret({"url": args.slack_webhook}),
                opts=in_namespace,
            )
            mounted.append(SLACK_SECRET)
        self.retrain_token = None
        if args.retrain_webhook_url is not None:
            token = random.RandomPassword(
                f"{name}-retrain-token", length=40, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            k8s.core.v1.Secret(
                f"{name}-retrain",
                metadata={"name": RETRAIN_SECRET, "namespace": NAMESPACE},
                string_data=pulumi.Output.secret({"token": token.result}),
                opts=in_namespace,
            )
            mounted.append(RETRAIN_SECRET)
            self.retrain_token = token.result
        return mounted

    def _exporters(self, name: str, args: MonitoringArgs, *, after_stack: pulumi.ResourceOptions) -> None:
        """What needs the stack's CRDs: DCGM exporter on GPU nodes, prometheus-adapter (the RPS metric
        for HPAs), and the platform's alert rules."""
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
                "rules": {
                    "default": False,
                    "custom": [
                        {
                            "seriesQuery": 'serving_requests_total{namespace!="",pod!=""}',
                            "resources": {
                                "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                            },
                            "name": {"matches": "^serving_requests_total$", "as": RPS_METRIC},
                            "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
                        }
                    ],
                },
                **({"nodeSelector": args.node_selector} if args.node_selector else {}),
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

    def _secret(
        self, name: str, role: str, description: str, value: pulumi.Input[str], args: MonitoringArgs
    ) -> aws.secretsmanager.Secret:
        secret = aws.secretsmanager.Secret(
            f"{name}-{role}-secret",
            description=description,
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=30 if args.protect_secrets else 7,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect_secrets),
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-{role}-value",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(value),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return secret
