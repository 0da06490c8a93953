"""Grafana dashboards as code, built with Grafana Labs' grafana-foundation-sdk.

Three dashboards: model endpoints (traffic, latency, errors, batch sizes, model version, drift
per feature, for the endpoint picked in a variable), GPUs (utilisation and memory from the
DCGM exporter), and the tracking server. The monitoring component ships each as a ConfigMap
labelled `grafana_dashboard: "1"`, which Grafana's sidecar provisions.
"""

from __future__ import annotations

import json
import re

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from components import tracking
from components.node_pools import POOL_LABEL

EP = 'endpoint=~"$endpoint"'
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"


def ksm_label(key: str) -> str:
    """The label name kube-state-metrics gives a Kubernetes label in `kube_<kind>_labels`:
    `label_` + the key with each character outside [a-zA-Z0-9_] made `_`, then snake_cased
    (`labelName` in kube-state-metrics v2.19.1 `internal/store/utils.go`, the version
    kube-prometheus-stack 88.2.0 ships). `mlops.platform/pool` -> `label_mlops_platform_pool`.
    It exports only the labels its `metricLabelsAllowlist` names (the monitoring component's)."""
    sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return "label_" + re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", sanitized).lower()


def _panel(title: str, unit: str, *queries: tuple[str, str], width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).height(8).span(width)
    for expr, legend in queries:
        panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend))
    return panel


def serving_dashboard() -> Dashboard:
    variable = (
        dashboard.QueryVariable("endpoint")
        .label("endpoint")
        .query("label_values(serving_requests_total, endpoint)")
        .multi(True)
        .include_all(True)
    )
    board = (
        dashboard.Dashboard("Model endpoints")
        .uid("mlops-serving")
        .tags(["mlops", "serving"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(variable)
    )
    for panel in (*_traffic_panels(), *_model_panels()):
        board = board.with_panel(panel)
    return board.build()


def _traffic_panels() -> list[timeseries.Panel]:
    """Requests, latency, errors and batch sizes: how the endpoints are answering."""
    return [
        _panel(
            "Requests per second by status",
            "reqps",
            (f"sum by (endpoint, status) (rate(serving_requests_total{{{EP}}}[5m]))", "{{endpoint}} {{status}}"),
        ),
        _panel(
            "Latency p50 / p99",
            "s",
            (
                "histogram_quantile(0.5, sum by (endpoint, le) "
                f"(rate(serving_request_duration_seconds_bucket{{{EP}}}[5m])))",
                "p50 {{endpoint}}",
            ),
            (
                "histogram_quantile(0.99, sum by (endpoint, le) "
                f"(rate(serving_request_duration_seconds_bucket{{{EP}}}[5m])))",
                "p99 {{endpoint}}",
            ),
        ),
        _panel(
            "Error ratio (5xx)",
            "percentunit",
            (
                f'sum by (endpoint) (rate(serving_requests_total{{{EP},status=~"5.."}}[5m]))'
                f" / sum by (endpoint) (rate(serving_requests_total{{{EP}}}[5m]))",
                "{{endpoint}}",
            ),
        ),
        _panel(
            "Rows per model call (batching)",
            "short",
            (
                f"sum by (endpoint) (rate(serving_batch_rows_sum{{{EP}}}[5m]))"
                f" / sum by (endpoint) (rate(serving_batch_rows_count{{{EP}}}[5m]))",
                "{{endpoint}}",
            ),
        ),
    ]


def _model_panels() -> list[timeseries.Panel | stat.Panel]:
    """Which version is served, how its inputs drift, what it predicts and how often it was (re)loaded."""
    return [
        stat.Panel()
        .title("Model version served")
        .height(6)
        .span(12)
        .with_target(
            prometheus.Dataquery()
            .expr(f"max by (endpoint, version) (serving_model_version_info{{{EP}}}) == 1")
            .legend_format("{{endpoint}} v{{version}}")
        ),
        _panel(
            "Data drift (PSI) per feature",
            "short",
            (f"max by (endpoint, feature) (serving_feature_drift_psi{{{EP}}})", "{{endpoint}} {{feature}}"),
        ),
        _panel(
            "Prediction distribution (p50 / p90)",
            "short",
            (
                f"histogram_quantile(0.5, sum by (endpoint, le) (rate(serving_prediction_value_bucket{{{EP}}}[15m])))",
                "p50 {{endpoint}}",
            ),
            (
                f"histogram_quantile(0.9, sum by (endpoint, le) (rate(serving_prediction_value_bucket{{{EP}}}[15m])))",
                "p90 {{endpoint}}",
            ),
        ),
        _panel(
            "Model loads",
            "short",
            (f"sum by (endpoint) (increase(serving_model_swaps_total{{{EP}}}[1h]))", "swaps {{endpoint}}"),
            (
                f"sum by (endpoint) (increase(serving_model_load_failures_total{{{EP}}}[1h]))",
                "failed loads {{endpoint}}",
            ),
        ),
    ]


def gpu_dashboard() -> Dashboard:
    gpu_nodes, capacity = f'kube_node_labels{{{ksm_label(POOL_LABEL)}="gpu"}}', ksm_label(CAPACITY_TYPE_LABEL)
    board = (
        dashboard.Dashboard("GPUs")
        .uid("mlops-gpus")
        .tags(["mlops", "gpu"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_panel(
            _panel(
                "GPU utilisation",
                "percent",
                ("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} gpu{{gpu}}"),
            )
        )
        .with_panel(
            _panel(
                "GPU memory used",
                "decmbytes",
                ("max by (Hostname, gpu) (DCGM_FI_DEV_FB_USED)", "{{Hostname}} gpu{{gpu}}"),
            )
        )
        .with_panel(
            _panel(
                "GPUs requested by pending pods",
                "short",
                (
                    'sum(kube_pod_container_resource_requests{resource="nvidia_com_gpu"} * on (namespace, pod) '
                    "group_left ()"
                    ' max by (namespace, pod) (kube_pod_status_phase{phase="Pending"}))',
                    "pending GPUs",
                ),
            )
        )
        .with_panel(
            _panel(
                "GPU nodes",
                "short",
                (f"count({gpu_nodes}) or vector(0)", "nodes"),
                (f"count by ({capacity}) ({gpu_nodes})", f"{{{{{capacity}}}}}"),
            )
        )
    )
    return board.build()


def tracking_dashboard() -> Dashboard:
    ns = f'namespace="{tracking.NAMESPACE}"'
    board = (
        dashboard.Dashboard("Tracking server")
        .uid("mlops-tracking")
        .tags(["mlops", "mlflow"])
        .refresh("1m")
        .time("now-6h", "now")
        .with_panel(
            _panel(
                "Ready replicas",
                "short",
                (f'kube_deployment_status_replicas_available{{{ns}, deployment="{tracking.SERVICE}"}}', "ready"),
            )
        )
        .with_panel(
            _panel(
                "Container restarts",
                "short",
                (f"sum(increase(kube_pod_container_status_restarts_total{{{ns}}}[1h]))", "restarts/h"),
            )
        )
        .with_panel(
            _panel(
                "CPU",
                "short",
                (
                    f'sum(rate(container_cpu_usage_seconds_total{{{ns}, container="{tracking.CONTAINER}"}}[5m]))',
                    "cores",
                ),
            )
        )
        .with_panel(
            _panel(
                "Memory",
                "bytes",
                (f'sum(container_memory_working_set_bytes{{{ns}, container="{tracking.CONTAINER}"}})', "working set"),
            )
        )
    )
    return board.build()


def dashboards() -> dict[str, str]:
    """File name -> dashboard JSON, as Grafana's sidecar loads them."""
    return {
        "mlops-serving.json": json.dumps(serving_dashboard(), cls=JSONEncoder),
        "mlops-gpus.json": json.dumps(gpu_dashboard(), cls=JSONEncoder),
        "mlops-tracking.json": json.dumps(tracking_dashboard(), cls=JSONEncoder),
    }
