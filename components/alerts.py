"""Alert rules as code: the PrometheusRule groups of the platform, from the stack's thresholds.

One function builds the rule groups (plain data), so the same rules are deployed as a
PrometheusRule, written to a file for `promtool check rules` / `promtool test rules`, and
loaded by the local Prometheus of `make local`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class AlertThresholds:
    error_ratio: float = 0.01
    """Share of 5xx answers over 5 minutes that pages."""
    gpu_idle_minutes: int = 30
    """A GPU node below 5% utilisation this long is waste (spot or not)."""
    gpu_pending_minutes: int = 15
    """GPU pods pending this long: the pool is at its ceiling or capacity is short."""
    drift_psi: float = 0.2
    """Population stability index above which a feature has drifted (0.1-0.2: moderate; >0.2: significant)."""
    drift_minutes: int = 30


@dataclass(frozen=True)
class EndpointObjective:
    endpoint: str
    latency_objective_ms: int


def rule_groups(thresholds: AlertThresholds, endpoints: Sequence[EndpointObjective]) -> list[dict[str, Any]]:
    latency_rules = [
        {
            "alert": "EndpointLatencyHigh",
            "expr": (
                f'histogram_quantile(0.99, sum by (endpoint, le) (rate(serving_request_duration_seconds_bucket{{endpoint="{e.endpoint}"}}[5m])))'
                f" > {e.latency_objective_ms / 1000:g}"
            ),
            "for": "10m",
            "labels": {"severity": "warning", "endpoint": e.endpoint},
            "annotations": {"summary": f"p99 latency of {e.endpoint} is above its {e.latency_objective_ms} ms objective"},
        }
        for e in endpoints
    ]
    serving = [
        *latency_rules,
        {
            "alert": "EndpointErrorRatioHigh",
            "expr": (
                'sum by (endpoint) (rate(serving_requests_total{status=~"5.."}[5m]))'
                " / sum by (endpoint) (rate(serving_requests_total[5m]))"
                f" > {thresholds.error_ratio:g}"
            ),
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "{{ $labels.endpoint }} answers more than " + f"{thresholds.error_ratio:.0%}" + " of requests with 5xx"},
        },
        {
            "alert": "EndpointDown",
            "expr": 'up{namespace="serving"} == 0',
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "Prometheus cannot scrape {{ $labels.pod }} of {{ $labels.service }}"},
        },
        {
            "alert": "EndpointNoReadyReplica",
            "expr": 'kube_deployment_status_replicas_available{namespace="serving"} == 0',
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "{{ $labels.deployment }} has no ready replica: the endpoint cannot answer"},
        },
        {
            "alert": "DataDriftHigh",
            "expr": f"max by (endpoint, feature) (serving_feature_drift_psi) > {thresholds.drift_psi:g}",
            "for": f"{thresholds.drift_minutes}m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "{{ $labels.feature }} of {{ $labels.endpoint }} has drifted from the training data (PSI above " + f"{thresholds.drift_psi:g})"},
        },
    ]
    platform = [
        {
            "alert": "TrackingServerDown",
            "expr": 'kube_deployment_status_replicas_available{namespace="mlflow", deployment="mlflow-tracking"} == 0',
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "the MLflow tracking server has no ready replica: no logging, no model loads"},
        },
        {
            "alert": "GpuNodeIdle",
            "expr": "max by (Hostname) (DCGM_FI_DEV_GPU_UTIL) < 5",
            "for": f"{thresholds.gpu_idle_minutes}m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "GPU node {{ $labels.Hostname }} has been idle for " + f"{thresholds.gpu_idle_minutes} minutes" + " and still costs money"},
        },
        {
            "alert": "GpuPodsPending",
            "expr": (
                'sum by (namespace, pod) (kube_pod_container_resource_requests{resource="nvidia_com_gpu"})'
                ' * on (namespace, pod) group_left () max by (namespace, pod) (kube_pod_status_phase{phase="Pending"}) > 0'
            ),
            "for": f"{thresholds.gpu_pending_minutes}m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "{{ $labels.namespace }}/{{ $labels.pod }} waits for a GPU: the GPU pool is at its ceiling or short of capacity"},
        },
    ]
    return [{"name": "mlops-serving", "rules": serving}, {"name": "mlops-platform", "rules": platform}]


def rules_file(groups: list[dict[str, Any]]) -> str:
    """The groups as a Prometheus rules file (what promtool and a plain Prometheus load)."""
    import yaml

    return yaml.safe_dump({"groups": groups}, sort_keys=False)
