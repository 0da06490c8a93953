"""Every chart and add-on version the platform deploys, pinned in one place.

Upgrading one is a one-line change here, reviewed like any other, and visible in the
offline preview. Check the compatibility notes before bumping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class HelmChart:
    chart: str
    """Chart name, or a full `oci://` reference."""
    version: str
    repo: str | None = None
    """Classic Helm repository URL; None for OCI charts."""


KARPENTER_CRD = HelmChart(chart="oci://public.ecr.aws/karpenter/karpenter-crd", version="1.11.1")
"""Karpenter's CRDs as their own release, so chart upgrades also upgrade the CRDs."""
KARPENTER = HelmChart(chart="oci://public.ecr.aws/karpenter/karpenter", version="1.11.1")
"""Karpenter 1.11 supports Kubernetes 1.29-1.35 (the `karpenter.sh/v1` API)."""
NVIDIA_DEVICE_PLUGIN = HelmChart(
    chart="nvidia-device-plugin", version="0.18.2", repo="https://nvidia.github.io/k8s-device-plugin"
)
AWS_LOAD_BALANCER_CONTROLLER = HelmChart(
    chart="aws-load-balancer-controller", version="1.14.0", repo="https://aws.github.io/eks-charts"
)
"""Controller v2.14.0; provisions the ALBs/NLBs that Ingresses and Services ask for."""

KUBE_PROMETHEUS_STACK = HelmChart(
    chart="kube-prometheus-stack", version="88.2.0", repo="https://prometheus-community.github.io/helm-charts"
)
"""Prometheus, Alertmanager, Grafana, kube-state-metrics, node-exporter and the operator CRDs."""
PROMETHEUS_ADAPTER = HelmChart(
    chart="prometheus-adapter", version="5.2.0", repo="https://prometheus-community.github.io/helm-charts"
)
"""Serves `serving_requests_per_second` to HPAs of endpoints with `autoscaling.metric: rps`."""
DCGM_EXPORTER = HelmChart(
    chart="dcgm-exporter", version="4.8.2", repo="https://nvidia.github.io/dcgm-exporter/helm-charts"
)
"""NVIDIA GPU metrics (DCGM_FI_DEV_*), on GPU nodes only. Chart 4.8.2 (exporter 4.5.3-4.8.2, label
`Hostname`) is the newest in NVIDIA's chart index: `helm-charts/index.yaml` on the gh-pages branch of
github.com/NVIDIA/dcgm-exporter (commit ecd340dc) lists 4.8.2, 4.8.1, 4.8.0 and no 4.8.3; its
`deployment/Chart.yaml` at tag 4.5.3-4.8.2 (commit 691c9276) says version 4.8.2."""
METRICS_SERVER = HelmChart(
    chart="metrics-server", version="3.13.1", repo="https://kubernetes-sigs.github.io/metrics-server/"
)
"""metrics-server 0.8.1: the `metrics.k8s.io` API CPU HorizontalPodAutoscalers read; EKS ships none."""

EBS_CSI_ADDON = "aws-ebs-csi-driver"
"""EKS managed add-on; its version defaults to the one AWS marks default for the cluster's
Kubernetes version, so it moves only when the cluster version does (override in settings)."""


def helm_release(
    resource_name: str,
    chart: HelmChart,
    *,
    release: str,
    namespace: str,
    opts: pulumi.ResourceOptions,
    values: dict[str, Any] | None = None,
    **extra: Any,
) -> k8s.helm.v3.Release:
    """A Helm release of a pinned chart (the one way the platform installs charts)."""
    return k8s.helm.v3.Release(
        resource_name,
        name=release,
        chart=chart.chart,
        version=chart.version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo) if chart.repo else None,
        namespace=namespace,
        values=values or {},
        opts=opts,
        **extra,
    )
