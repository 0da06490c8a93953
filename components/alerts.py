"""Alert rules as code: the PrometheusRule groups of the platform, from the stack's thresholds.

One function builds the rule groups (plain data), so the same rules are deployed as a
PrometheusRule, written to a file for `promtool check rules` / `promtool test rules`, and
loaded by the local Prometheus of `make local`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from components import tracking


@dataclass(frozen=True)
class AlertThresholds:
    """The stack's `monitoring.alerts` settings; their defaults live in infra/settings.py only
    (`infra.program.alert_thresholds()` gives them)."""

    error_ratio: float
    """Share of 5xx answers over 5 minutes that pages."""
    gpu_idle_minutes: int
    """A GPU node below 5% utilisation this long is waste (spot or not)."""
    gpu_pending_minutes: int
    """GPU pods pending this long: the pool is at its ceiling or capacity is short."""
    drift_psi: float
    """Population stability index above which a feature has drifted (0.1-0.2: moderate; >0.2: significant)."""
    drift_minutes: int


@dataclass(frozen=True)
class EndpointObjective:
    endpoint: str
    latency_objective_ms: int


def _alert(alert: str, expr: str, for_: str, severity: str, summary: str, **labels: str) -> dict[str, Any]:
    """One alerting rule, its fields in Prometheus' order (the rules file keeps it)."""
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary},
    }


def serving_rules(thresholds: AlertThresholds, endpoints: Sequence[EndpointObjective]) -> list[dict[str, Any]]:
    """What the model endpoints' users notice: latency over each endpoint's objective, 5xx answers,
    scrapes or replicas gone, and drifted input features (which may also start a retraining)."""
    latency_rules = [
        _alert(
            "EndpointLatencyHigh",
            "histogram_quantile(0.99, sum by (endpoint, le) "
            f'(rate(serving_request_duration_seconds_bucket{{endpoint="{e.endpoint}"}}[5m])))'
            f" > {e.latency_objective_ms / 1000:g}",
            "10m",
            "warning",
            f"p99 latency of {e.endpoint} is above its {e.latency_objective_ms} ms objective",
            endpoint=e.endpoint,
        )
        for e in endpoints
    ]
    return [
        *latency_rules,
        _alert(
            "EndpointErrorRatioHigh",
            'sum by (endpoint) (rate(serving_requests_total{status=~"5.."}[5m]))'
            " / sum by (endpoint) (rate(serving_requests_total[5m]))"
            f" > {thresholds.error_ratio:g}",
            "5m",
            "critical",
            "{{ $labels.endpoint }} answers more than " + f"{thresholds.error_ratio:.0%}" + " of requests with 5xx",
        ),
        _alert(
            "EndpointDown",
            'up{namespace="serving"} == 0',
            "2m",
            "critical",
            "Prometheus cannot scrape {{ $labels.pod }} of {{ $labels.service }}",
        ),
        _alert(
            "EndpointNoReadyReplica",
            'kube_deployment_status_replicas_available{namespace="serving"} == 0',
            "5m",
            "critical",
            "{{ $labels.deployment }} has no ready replica: the endpoint cannot answer",
        ),
        _alert(
            "DataDriftHigh",
            f"max by (endpoint, feature) (serving_feature_drift_psi) > {thresholds.drift_psi:g}",
            f"{thresholds.drift_minutes}m",
            "warning",
            "{{ $labels.feature }} of {{ $labels.endpoint }} has drifted from the training data (PSI above "
            + f"{thresholds.drift_psi:g})",
        ),
    ]


def platform_rules(thresholds: AlertThresholds) -> list[dict[str, Any]]:
    """What the platform team owns: the tracking server, and GPU capacity idle or short."""
    return [
        _alert(
            "TrackingServerDown",
            "kube_deployment_status_replicas_available"
            f'{{namespace="{tracking.NAMESPACE}", deployment="{tracking.SERVICE}"}} '
            "== 0",
            "5m",
            "critical",
            "the MLflow tracking server has no ready replica: no logging, no model loads",
        ),
        _alert(
            "GpuNodeIdle",
            "max by (Hostname) (DCGM_FI_DEV_GPU_UTIL) < 5",
            f"{thresholds.gpu_idle_minutes}m",
            "warning",
            "GPU node {{ $labels.Hostname }} has been idle for "
            + f"{thresholds.gpu_idle_minutes} minutes"
            + " and still costs money",
        ),
        _alert(
            "GpuPodsPending",
            'sum by (namespace, pod) (kube_pod_container_resource_requests{resource="nvidia_com_gpu"})'
            ' * on (namespace, pod) group_left () max by (namespace, pod) (kube_pod_status_phase{phase="Pending"}) > 0',
            f"{thresholds.gpu_pending_minutes}m",
            "warning",
            "{{ $labels.namespace }}/{{ $labels.pod }} waits for a GPU: the GPU pool is at its ceiling or short of "
            "capacity",
        ),
    ]


def rule_groups(thresholds: AlertThresholds, endpoints: Sequence[EndpointObjective]) -> list[dict[str, Any]]:
    return [
        {"name": "mlops-serving", "rules": serving_rules(thresholds, endpoints)},
        {"name": "mlops-platform", "rules": platform_rules(thresholds)},
    ]


def rules_file(groups: list[dict[str, Any]]) -> str:
    """The groups as a Prometheus rules file (what promtool and a plain Prometheus load)."""
    import yaml

    return yaml.safe_dump({"groups": groups}, sort_keys=False)
