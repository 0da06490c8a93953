"""Building blocks every platform workload shares, so the security baseline is written once.

Pods run as a fixed non-root user with a read-only root file system, no privilege
escalation, every capability dropped and the RuntimeDefault seccomp profile; `/tmp` is an
emptyDir because Python and MLflow write there. Namespaces enforce the `restricted` Pod
Security Standard, so a workload that drifts from this baseline is refused by the API server.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.quantities import cpu_cores

RUN_AS_USER = 10001

CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


def restricted_namespace_labels(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        **(extra or {}),
    }


def env_list(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Container `env` from a mapping (values may be Pulumi outputs)."""
    return [{"name": name, "value": value} for name, value in values.items()]


MIN_CPU_LIMIT = "1"
"""The smallest CPU limit a container gets: a Python process under a sub-core limit is throttled
through its imports for tens of seconds, past its probes."""


def default_cpu_limit(cpu: str) -> str:
    """The request, and at least MIN_CPU_LIMIT: a container may use what scheduling reserved for it
    (the model server runs one worker per requested core), a small one may burst to a core to start."""
    return cpu if cpu_cores(cpu) >= cpu_cores(MIN_CPU_LIMIT) else MIN_CPU_LIMIT


def resources(cpu: str, memory: str, *, cpu_limit: str | None = None, gpus: int = 0) -> dict[str, Any]:
    """Requests for scheduling, and limits on everything: memory at the request (an OOM stays in its
    container), CPU at `cpu_limit` or default_cpu_limit (a busy or runaway pod cannot starve its node's
    neighbours, the system add-ons among them; CKV_K8S_11, MLOPS-K8S-010)."""
    limits: dict[str, Any] = {"cpu": cpu_limit or default_cpu_limit(cpu), "memory": memory}
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def _tagged(image: str) -> bool:
    """`repo:tag` with a tag other than `latest` (a `:` in the last path segment: a registry port is not a tag)."""
    return ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def pinned_image(image: str) -> bool:
    """Whether `image` names a version (`repo:tag` or `repo@sha256:...`) other than `latest`: a
    workload must run the image that was reviewed, and a moving tag changes under a running pod."""
    return _tagged(image) or ("@" in image and not image.endswith(":latest"))


def digest_pinned(image: str) -> bool:
    """Like `pinned_image`, but a digest counts only as `@sha256:`: rule MLOPS-K8S-008's reading, for
    any image an inventory holds (the components' own images pass `pinned_image` before they get here)."""
    return "@sha256:" in image or _tagged(image)


def dns_egress_rule() -> dict[str, Any]:
    """The NetworkPolicy egress rule every workload needs first: CoreDNS (`k8s-app: kube-dns`) in
    any namespace, on UDP and TCP 53 (large answers fall back to TCP)."""
    return {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def aws_api_egress_rule() -> dict[str, Any]:
    """Egress on HTTPS 443 to any address: the AWS APIs (S3, STS, Secrets Manager) have no fixed
    blocks a policy could name; the VPC endpoints, where the stack has them, answer on the same port."""
    return {"ports": [{"protocol": "TCP", "port": 443}]}


def disruption_budget(
    resource_name: str,
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    replicas: int,
    opts: pulumi.ResourceOptions,
) -> k8s.policy.v1.PodDisruptionBudget:
    """A PodDisruptionBudget that never blocks a node drain: with several replicas one must stay up,
    with one the drain may evict it (a `minAvailable: 1` on a single pod would stall the drain forever)."""
    disruption = {"minAvailable": 1} if replicas > 1 else {"maxUnavailable": 1}
    spec: dict[str, Any] = {**disruption, "selector": {"matchLabels": dict(labels)}}
    return k8s.policy.v1.PodDisruptionBudget(
        resource_name,
        metadata={"name": name, "namespace": namespace},
        spec=spec,
        opts=opts,
    )


ALB_SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
"""TLS 1.3 and 1.2 only, on every HTTPS listener of the platform's ALBs."""


def alb_listener_annotations(certificate_arn: str | None) -> dict[str, str]:
    """Listener annotations of an Ingress on the shared internal ALB: HTTPS 443 only with a certificate
    (required in prod), else HTTP 80. Every Ingress of the group writes the same: `ssl-policy` is an
    "Exclusive" annotation (one value across the group), listen ports and certificates merge, and an
    Ingress's rules reach only the ports that Ingress lists (LB controller v2.14 annotations guide)."""
    annotations = {"alb.ingress.kubernetes.io/ssl-policy": ALB_SSL_POLICY}
    if certificate_arn:
        annotations.update(
            {
                "alb.ingress.kubernetes.io/listen-ports": '[{"HTTPS": 443}]',
                "alb.ingress.kubernetes.io/certificate-arn": certificate_arn,
            }
        )
    else:
        annotations["alb.ingress.kubernetes.io/listen-ports"] = '[{"HTTP": 80}]'
    return annotations


def internal_alb_annotations(
    *, group: str, healthcheck_path: str, certificate_arn: str | None, deregistration_delay_seconds: int
) -> dict[str, str]:
    """Annotations of an Ingress on the shared internal ALB (the tracking server's and every endpoint's):
    internal scheme, pods as IP targets (the NetworkPolicies admit the ALB's subnets), one ingress
    `group` so all of them share one load balancer, the listener of alb_listener_annotations.

    `deregistration_delay_seconds`: how long the ALB lets requests already sent to a deregistered
    (terminating) pod finish before it closes their connections. AWS's default is 300 s, far longer
    than a pod lives once it terminates: the caller states a delay within the time its pods keep
    answering after they start terminating, so the ALB, not a killed pod, ends the last request.
    `target-group-attributes` is a stringMap annotation (`key=value,...`; LB controller v2.14
    annotations guide, range 0-3600 s); it applies to the target groups of this Ingress's backends."""
    if not 0 <= deregistration_delay_seconds <= 3600:
        raise ValueError(
            f"deregistration_delay_seconds must be within 0-3600 (the ALB's range), got {deregistration_delay_seconds}"
        )
    return {
        "alb.ingress.kubernetes.io/scheme": "internal",
        "alb.ingress.kubernetes.io/target-type": "ip",
        "alb.ingress.kubernetes.io/group.name": group,
        "alb.ingress.kubernetes.io/healthcheck-path": healthcheck_path,
        "alb.ingress.kubernetes.io/target-group-attributes": (
            f"deregistration_delay.timeout_seconds={deregistration_delay_seconds}"
        ),
        **alb_listener_annotations(certificate_arn),
    }


ALB_READINESS_GATE_LABELS = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}
"""Namespace label for the LB controller's pod mutating webhook (`mpod.elbv2.k8s.aws`, selected by this
label in chart 1.14.0): pods created in the namespace behind an `ip` target group get a readiness gate
that turns true only once the ALB reports the target healthy, so a rolling update never takes an old pod
away before its replacement receives traffic (LB controller v2.14 docs, deploy/pod_readiness_gate.md).
Injected at pod creation only, when the Ingress's target group binding already exists."""


KUBERNETES_API_SKIP = "CKV_K8S_38"
"""checkov's check that pods do not mount a service-account token."""


def kubernetes_api_client(reason: str) -> dict[str, str]:
    """Annotations of a workload whose pods call the Kubernetes API and so keep a service-account token
    (`automountServiceAccountToken: true`): checkov's in-manifest skip of CKV_K8S_38 with the reason,
    which is also the mark MLOPS-K8S-011 accepts. Every other pod sets the automount off: IRSA needs no
    such token (the EKS pod identity webhook projects its own `aws-iam-token` volume)."""
    if not reason.strip() or "=" in reason:
        raise ValueError(
            "kubernetes_api_client: a reason without '=' is required (checkov splits the annotation at '='), got "
            f"{reason!r}"
        )
    return {"checkov.io/skip1": f"{KUBERNETES_API_SKIP}={reason}"}


def alb_ingress_spec(path: str, backend: dict[str, Any]) -> dict[str, Any]:
    """One `Prefix` path on the AWS Load Balancer Controller's `alb` class: each workload's share of the
    shared internal ALB (its annotations from `internal_alb_annotations`)."""
    return {
        "ingressClassName": "alb",
        "rules": [{"http": {"paths": [{"path": path, "pathType": "Prefix", "backend": backend}]}}],
    }


def load_balancer_ingress(cidrs: Sequence[str], port: int) -> dict[str, Any]:
    """The NetworkPolicy ingress rule for the internal ALB in IP mode: from its own subnets' blocks
    only. A policy cannot name the ALB's security group, and the ALB connects from its addresses in
    those subnets, where nothing else lives (components/network.py): neither the whole VPC nor the
    private subnets, which would admit every pod of the cluster as well."""
    return {"from": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs], "ports": [{"protocol": "TCP", "port": port}]}


def http_probe(path: str, port: int, *, period: int = 10, failures: int = 3, initial_delay: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "initialDelaySeconds": initial_delay,
        "timeoutSeconds": 3,
    }


def pool_placement(
    gpus: int,
    *,
    gpu_node_selector: Mapping[str, str],
    gpu_toleration: Mapping[str, str],
    node_selector: Mapping[str, str],
) -> dict[str, Any]:
    """Pod-spec fields that place a workload: a pod asking for GPUs selects the GPU pool and tolerates its
    taint; any other pod takes the stack's node selector (dev's system nodes), if it has one. One place, so
    model servers and training runs can never land differently for the same request."""
    if gpus:
        return {"nodeSelector": dict(gpu_node_selector), "tolerations": [dict(gpu_toleration)]}
    return {"nodeSelector": dict(node_selector)} if node_selector else {}


def zone_spread(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(labels)},
        }
    ]
