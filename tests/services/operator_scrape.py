"""The scrape config the Prometheus Operator generates for a ServiceMonitor, for a real Prometheus.

A transcription of `generateServiceMonitorConfig` in `pkg/prometheus/promcfg.go` of Prometheus
Operator v0.93.0 (the operator kube-prometheus-stack 88.2.0 deploys), for the parts a
ServiceMonitor of this platform uses: endpoint-slice discovery, a `matchLabels` selector, a
named port, `honorLabels`, `relabelings` and `metricRelabelings`. What Kubernetes service
discovery would find (the Service, its labels, the port's name, the pod) is given as a static
target carrying the same `__meta_kubernetes_*` labels, so Prometheus runs the operator's
relabeling rules exactly as in the cluster, including the one that sets `endpoint` to the port's
name.
"""

from __future__ import annotations

import re
from typing import Any

_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}


def _sanitize(name: str) -> str:
    """`sanitizeLabelName` of the operator: every character outside [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel_configs(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`generateRelabelConfig`: the CRD's camelCase fields as Prometheus' keys, the action lower-cased."""
    return [{_RELABEL_KEYS[k]: (v.lower() if k == "action" else v) for k, v in rule.items()} for rule in rules]


def _discovered(
    monitor: dict[str, Any], service: dict[str, Any], port_name: str, pod: str, container: str
) -> dict[str, str]:
    """The meta labels endpoint-slice discovery gives a ready pod of `service` on `port_name`."""
    labels = {
        "__meta_kubernetes_namespace": service["metadata"]["namespace"],
        "__meta_kubernetes_service_name": service["metadata"]["name"],
        "__meta_kubernetes_endpointslice_port_name": port_name,
        "__meta_kubernetes_endpointslice_address_target_kind": "Pod",
        "__meta_kubernetes_endpointslice_address_target_name": pod,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for key, value in (service["metadata"].get("labels") or {}).items():
        labels[f"__meta_kubernetes_service_label_{_sanitize(key)}"] = value
        labels[f"__meta_kubernetes_service_labelpresent_{_sanitize(key)}"] = "true"
    return labels


def scrape_config(
    monitor: dict[str, Any],
    service: dict[str, Any],
    *,
    address: str,
    pod: str,
    container: str,
    interval: str | None = None,
) -> dict[str, Any]:
    """Endpoint 0 of `monitor` scraping `address` as the pod `pod` behind `service`.
    `interval` replaces the endpoint's own (tests scrape every second)."""
    ep = monitor["spec"]["endpoints"][0]
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    relabelings: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for key, value in sorted(monitor["spec"]["selector"]["matchLabels"].items()):
        relabelings.append(
            {
                "action": "keep",
                "regex": f"({value});true",
                "source_labels": [
                    f"__meta_kubernetes_service_label_{_sanitize(key)}",
                    f"__meta_kubernetes_service_labelpresent_{_sanitize(key)}",
                ],
            }
        )
    relabelings.append(
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": ep["port"]}
    )
    target = [
        "__meta_kubernetes_endpointslice_address_target_kind",
        "__meta_kubernetes_endpointslice_address_target_name",
    ]
    relabelings += [
        {
            "source_labels": target,
            "separator": ";",
            "regex": "Node;(.*)",
            "replacement": "${1}",
            "target_label": "node",
        },
        {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": ep["port"]},  # the port's name: `http`
        *_relabel_configs(ep.get("relabelings") or []),
    ]
    config: dict[str, Any] = {
        "job_name": f"serviceMonitor/{namespace}/{name}/0",
        "honor_labels": bool(ep.get("honorLabels", False)),
        "static_configs": [{"targets": [address], "labels": _discovered(monitor, service, ep["port"], pod, container)}],
        "scrape_interval": interval or ep.get("interval", "30s"),
        "metrics_path": ep.get("path", "/metrics"),
        "relabel_configs": relabelings,
    }
    if ep.get("metricRelabelings"):
        config["metric_relabel_configs"] = _relabel_configs(ep["metricRelabelings"])
    return config
