"""Serving: model endpoints on the cluster, each serving `models:/<model>@<alias>`.

`ServingPlane` owns the `serving` namespace (restricted Pod Security, allowed to reach the
tracking server) and one `ServingEndpoint` per endpoint of the stack file. An endpoint is,
in dependency order: its workload role (write its own capture prefix, read the tracking
reader's password; models come through the tracking server, so no S3 read); a service
account; a stable Deployment (and, with a canary, a second Deployment serving the canary
alias); a Service per Deployment; a HorizontalPodAutoscaler on the stable Deployment (CPU or
requests per second); PodDisruptionBudgets; a NetworkPolicy; a ServiceMonitor; and a path on
the shared internal ALB (`/<endpoint>/invocations`), weighted between stable and canary.

Promote a canary: point the stable alias at the canary's version
(`client.set_registered_model_alias(model, "champion", v)`); the stable pods load it within
`poll_seconds`, no redeploy; then remove `canary` from the stack file. Roll back: remove
`canary` from the stack file (all traffic returns to stable on `pulumi up`), or point the
canary alias back at the stable version (immediate, no deploy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.identity import OidcIdentity, workload_role
from components.k8s_workload import (
    ALB_READINESS_GATE_LABELS,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TMP_MOUNT,
    TMP_VOLUME,
    alb_ingress_spec,
    aws_api_egress_rule,
    disruption_budget,
    dns_egress_rule,
    env_list,
    http_probe,
    internal_alb_annotations,
    load_balancer_ingress,
    pinned_image,
    pool_placement,
    resources,
    restricted_namespace_labels,
    zone_spread,
)
from components.quantities import cpu_cores
from components.tracking import CLIENT_NAMESPACE_LABEL, client_egress_rule
from services.tracking.auth import reader_username

PLANE_TOKEN = "mlops:k8s:ServingPlane"
ENDPOINT_TOKEN = "mlops:k8s:ServingEndpoint"
NAMESPACE = "serving"
PORT = 8080
CAPTURE_PREFIX = "captures"
"""Top-level prefix of captured records in the artifact bucket: `captures/<endpoint>/...`."""
PRESTOP_SECONDS = 15
"""preStop sleep (Kubernetes' sleep action, GA in 1.34, on by default since 1.30): the load balancer
controller deregisters a terminating pod from the ALB within seconds; until then requests still come."""

from components.monitoring import MONITORING_NAMESPACE_LABEL, RPS_METRIC, model_server_relabelings  # noqa: E402


def termination_grace_seconds() -> int:
    """Room for the preStop sleep, then the model server's own drain (services/serving/lifecycle.py):
    not ready but still serving for its shutdown delay, then in-flight requests, plus a margin."""
    from services.serving.settings import ServingSettings

    fields = ServingSettings.model_fields
    return PRESTOP_SECONDS + math.ceil(fields["shutdown_delay_seconds"].default + fields["drain_seconds"].default) + 5


def deregistration_delay_seconds() -> int:
    """The ALB target groups' deregistration delay: how long requests already sent to a terminating pod
    may take before the ALB closes their connections (AWS's default, 300 s, outlives the pod).

    Timeline from the pod's deletion (t = 0): the LB controller deregisters the target within the
    preStop sleep (t <= PRESTOP_SECONDS = 15; after that no new request reaches the pod); the server
    answers everything until SIGTERM (t = 15), then for its shutdown delay (5 s) with
    `Connection: close`, then gives in-flight requests its drain time (20 s): it answers until t = 40,
    and the kubelet kills it at the grace period (t = 45). A request in flight at deregistration
    therefore has shutdown delay + drain = 25 s of server left in the worst case: the ALB waits that
    long and no longer, so it has ended every request (answered, or cut by the ALB) by t = 40, before
    the server stops and 5 s before the kill, instead of holding the target draining for 300 s."""
    from services.serving.settings import ServingSettings

    fields = ServingSettings.model_fields
    return math.floor(fields["shutdown_delay_seconds"].default + fields["drain_seconds"].default)


@dataclass(frozen=True, kw_only=True)
class CanaryArgs:
    alias: str
    weight: int
    """Percent of requests to the canary (1-99); the stable Deployment gets 100 - weight."""


@dataclass(frozen=True, kw_only=True)
class ServingEndpointArgs:
    """One endpoint's settings (defaults in infra/settings.py only) and what it runs beside: no field has a default."""

    endpoint: str
    model: str
    alias: str
    image: str
    min_replicas: int
    max_replicas: int
    cpu: str
    memory: str
    gpu: int
    autoscaling_metric: Literal["cpu", "rps"]
    autoscaling_target: int
    canary: CanaryArgs | None
    capture_fraction: float
    artifact_bucket: pulumi.Input[str]
    artifact_bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    tracking_url: str
    """In-cluster URL of the tracking server."""
    tracking_reader_secret_arn: pulumi.Input[str]
    """Password secret of this endpoint's own read-only tracking user (`serving-<endpoint>`)."""
    identity: OidcIdentity
    load_balancer_cidrs: Sequence[str]
    """Blocks of the internal load balancers' subnets (components/network.py): the ALB reaches the pods from them."""
    gpu_node_selector: Mapping[str, str]
    gpu_toleration: Mapping[str, str]
    ingress_group: str
    certificate_arn: str | None
    """The shared internal ALB's certificate (`tracking.certificateArn`): with it the endpoint's path is on HTTPS 443
    only."""
    node_selector: Mapping[str, str]
    """Where CPU pods run when not on the Karpenter CPU pool (dev: the system nodes; empty: anywhere)."""
    load_balancer_controller: pulumi.Resource | None
    monitoring_crds: pulumi.Resource | None

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append(f"replicas: expected 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})")
        if self.canary is not None and not 1 <= self.canary.weight <= 99:
            problems.append(f"canary.weight: got {self.canary.weight}, expected 1 to 99")
        if not pinned_image(self.image):
            problems.append(f"image: got {self.image!r}, expected a pinned tag")
        if not self.load_balancer_cidrs:
            problems.append("load_balancer_cidrs: required (the internal ALB reaches the pods from these subnets)")
        if problems:
            raise ValueError(f"invalid ServingEndpointArgs for {self.endpoint}: " + "; ".join(problems))

    @property
    def workers(self) -> int:
        """Worker processes per pod: one per requested CPU (at least one)."""
        return max(1, math.floor(cpu_cores(self.cpu)))


def endpoint_policy(bucket_arn: str, prefix: str, kms_key_arn: str, reader_secret_arn: str) -> str:
    """Write captured records under the endpoint's own prefix; read the tracking reader's password."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "WriteOwnCaptures",
                    "Effect": "Allow",
                    "Action": "s3:PutObject",
                    "Resource": f"{bucket_arn}/{prefix}/*",
                },
                {"Sid": "BucketKey", "Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": kms_key_arn},
                {
                    "Sid": "TrackingReader",
                    "Effect": "Allow",
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": reader_secret_arn,
                },
            ],
        }
    )


def capture_prefix(endpoint: str) -> str:
    """Where the endpoint writes captured records in the artifact bucket (and nothing else)."""
    return f"{CAPTURE_PREFIX}/{endpoint}"


def network_policy_spec(args: ServingEndpointArgs) -> dict[str, Any]:
    """Who reaches an endpoint's pods (the ALB's subnets, Prometheus) and what they reach (DNS, the
    tracking server, the AWS APIs)."""
    return {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": args.endpoint}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            load_balancer_ingress(args.load_balancer_cidrs, PORT),
            {
                "from": [{"namespaceSelector": {"matchLabels": {MONITORING_NAMESPACE_LABEL: "true"}}}],  # Prometheus
                "ports": [{"protocol": "TCP", "port": PORT}],
            },
        ],
        "egress": [
            dns_egress_rule(),
            client_egress_rule(),  # the tracking server (models, their aliases)
            aws_api_egress_rule(),  # S3 (captures), STS, Secrets Manager
        ],
    }


class ServingPlane(pulumi.ComponentResource):
    """The namespace every endpoint lives in."""

    namespace: k8s.core.v1.Namespace

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(PLANE_TOKEN, name, None, opts)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={
                "name": NAMESPACE,
                "labels": restricted_namespace_labels({CLIENT_NAMESPACE_LABEL: "true", **ALB_READINESS_GATE_LABELS}),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"namespace": NAMESPACE})


def server_env(args: ServingEndpointArgs, alias: str) -> dict:
    """The model server's settings: services/serving/settings.py reads each `SERVING_*` one (the contract test
    checks)."""
    ep = args.endpoint
    return {
        "SERVING_MODEL_NAME": args.model,
        "SERVING_MODEL_ALIAS": alias,
        "SERVING_ENDPOINT": ep,
        "SERVING_HOST": "0.0.0.0",
        "SERVING_PORT": str(PORT),
        "SERVING_WORKERS": str(args.workers),
        "SERVING_PATH_PREFIX": f"/{ep}",
        "SERVING_CAPTURE_FRACTION": str(args.capture_fraction),
        "SERVING_CAPTURE_BUCKET": args.artifact_bucket,
        "SERVING_CAPTURE_PREFIX": CAPTURE_PREFIX,
        "SERVING_TRACKING_USERNAME": reader_username(ep),  # this endpoint's own read-only user
        "SERVING_TRACKING_PASSWORD_SECRET_ARN": args.tracking_reader_secret_arn,
        "MLFLOW_TRACKING_URI": args.tracking_url,
    }


class ServingEndpoint(pulumi.ComponentResource):
    endpoint: str
    """The endpoint's name in the stack file."""
    url_path: str
    """Path on the serving ALB: `/<endpoint>/invocations`."""
    role_arn: pulumi.Output[str]
    """The endpoint's workload role (IRSA)."""
    deployments: dict[str, k8s.apps.v1.Deployment]

    def __init__(self, name: str, args: ServingEndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ENDPOINT_TOKEN, name, None, opts)
        ep = self.endpoint = args.endpoint
        self.role_arn = self._identity(name, args)
        tracks = {"stable": args.alias}
        if args.canary is not None:
            tracks["canary"] = args.canary.alias
        self.deployments, services = {}, {}
        for track, alias in tracks.items():
            self.deployments[track], services[track] = self._track(name, args, track, alias)
        self._autoscaler(name, args)
        child = pulumi.ResourceOptions(parent=self)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", metadata={"name": ep, "namespace": NAMESPACE}, spec=network_policy_spec(args), opts=child
        )
        self._service_monitor(name, args, after=list(services.values()))
        self.url_path = f"/{ep}/invocations"
        self._ingress(name, args, after=list(services.values()))
        self.register_outputs({"url_path": self.url_path, "role_arn": self.role_arn})

    def _identity(self, name: str, args: ServingEndpointArgs) -> pulumi.Output[str]:
        """The workload role (write its own capture prefix, read its tracking reader's password) and the
        service account that carries it; the role's ARN."""
        ep = args.endpoint
        role = workload_role(
            f"{name}-workload",
            identity=args.identity,
            namespace=NAMESPACE,
            service_account=ep,
            policy=pulumi.Output.all(args.artifact_bucket_arn, args.kms_key_arn, args.tracking_reader_secret_arn).apply(
                lambda a: endpoint_policy(a[0], capture_prefix(ep), a[1], a[2])
            ),
            parent=self,
        )
        self._role_ready = role.ready  # the pods use the role: its policy outlives them on destroy
        k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": ep, "namespace": NAMESPACE, "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
            automount_service_account_token=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return role.arn

    def _track(
        self, name: str, args: ServingEndpointArgs, track: str, alias: str
    ) -> tuple[k8s.apps.v1.Deployment, k8s.core.v1.Service]:
        """One track (stable, or the canary): its Deployment, Service and PodDisruptionBudget."""
        ep, child = args.endpoint, pulumi.ResourceOptions(parent=self)
        labels = {
            "app.kubernetes.io/name": ep,
            "app.kubernetes.io/part-of": "mlops-serving",
            "mlops.platform/track": track,
        }
        replicas = args.min_replicas if track == "stable" else 1
        deployment = self._deployment(name, args, track, alias, labels, replicas)
        service = k8s.core.v1.Service(
            f"{name}-{track}-svc",
            metadata={"name": f"{ep}-{track}", "namespace": NAMESPACE, "labels": labels},
            # Service port = container port: the VPC CNI matches ClusterIP traffic only then
            # (components/tracking.CLUSTER_URL)
            spec={"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]},
            opts=child,
        )
        disruption_budget(
            f"{name}-{track}-pdb",
            name=f"{ep}-{track}",
            namespace=NAMESPACE,
            labels=labels,
            replicas=replicas,
            opts=child,
        )
        return deployment, service

    def _autoscaler(self, name: str, args: ServingEndpointArgs) -> None:
        """The stable Deployment's HorizontalPodAutoscaler, on CPU or on requests per second (prometheus-adapter)."""
        ep = args.endpoint
        metric = (
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": args.autoscaling_target},
                },
            }
            if args.autoscaling_metric == "cpu"
            else {
                "type": "Pods",
                "pods": {
                    "metric": {"name": RPS_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(args.autoscaling_target)},
                },
            }
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={"name": ep, "namespace": NAMESPACE},
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{ep}-stable"},
                "minReplicas": args.min_replicas,
                "maxReplicas": args.max_replicas,
                "metrics": [metric],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployments["stable"]]),
        )

    def _service_monitor(self, name: str, args: ServingEndpointArgs, *, after: list[pulumi.Resource]) -> None:
        """Prometheus scrapes every track's `/metrics` through its Service."""
        ep = args.endpoint
        k8s.apiextensions.CustomResource(
            f"{name}-monitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata={"name": ep, "namespace": NAMESPACE, "labels": {"mlops.platform/scrape": "true"}},
            spec={
                "selector": {"matchLabels": {"app.kubernetes.io/name": ep}},
                "namespaceSelector": {"matchNames": [NAMESPACE]},
                # the model server's own `endpoint` label wins over the operator's (the port name)
                "endpoints": [
                    {
                        "port": "http",
                        "path": "/metrics",
                        "interval": "15s",
                        "metricRelabelings": model_server_relabelings(),
                    }
                ],
            },
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[*after, *([args.monitoring_crds] if args.monitoring_crds else [])]
            ),
        )

    def _ingress(
        self, name: str, args: ServingEndpointArgs, *, after: list[pulumi.Resource]
    ) -> k8s.networking.v1.Ingress:
        """`/<endpoint>/` on the shared internal ALB; with a canary, a weighted forward between the two Services."""
        ep = args.endpoint
        annotations = internal_alb_annotations(
            group=args.ingress_group,
            healthcheck_path="/readyz",
            certificate_arn=args.certificate_arn,
            deregistration_delay_seconds=deregistration_delay_seconds(),
        )
        if args.canary is not None:
            weights = [
                {"serviceName": f"{ep}-stable", "servicePort": PORT, "weight": 100 - args.canary.weight},
                {"serviceName": f"{ep}-canary", "servicePort": PORT, "weight": args.canary.weight},
            ]
            annotations[f"alb.ingress.kubernetes.io/actions.{ep}-weighted"] = json.dumps(
                {"type": "forward", "forwardConfig": {"targetGroups": weights}}
            )
            backend = {"service": {"name": f"{ep}-weighted", "port": {"name": "use-annotation"}}}
        else:
            backend = {"service": {"name": f"{ep}-stable", "port": {"number": PORT}}}
        return k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata={"name": ep, "namespace": NAMESPACE, "annotations": annotations},
            spec=alb_ingress_spec(f"/{ep}/", backend),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*after, *([args.load_balancer_controller] if args.load_balancer_controller else [])],
            ),
        )

    def _deployment(
        self, name: str, args: ServingEndpointArgs, track: str, alias: str, labels: dict, replicas: int
    ) -> k8s.apps.v1.Deployment:
        ep = args.endpoint
        env = server_env(args, alias)
        pod_spec: dict = {
            "serviceAccountName": ep,
            # no Kubernetes API calls: no API token (IRSA's token is a volume the EKS pod identity webhook projects
            # itself)
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "terminationGracePeriodSeconds": termination_grace_seconds(),
            "topologySpreadConstraints": zone_spread(labels),
            "volumes": [TMP_VOLUME],
            "containers": [
                {
                    "name": "server",
                    "image": args.image,
                    "ports": [{"name": "http", "containerPort": PORT}],
                    "env": env_list(env),
                    "resources": resources(args.cpu, args.memory, gpus=args.gpu),
                    "readinessProbe": http_probe("/readyz", PORT, period=5),
                    "livenessProbe": http_probe("/healthz", PORT, period=10, initial_delay=10),
                    # model download may take minutes
                    "startupProbe": http_probe("/readyz", PORT, period=5, failures=60),
                    # the ALB keeps sending for a while after a pod starts terminating: serve on until it has
                    # deregistered it
                    "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
                    "securityContext": CONTAINER_SECURITY_CONTEXT,
                    "volumeMounts": [TMP_MOUNT],
                }
            ],
        }
        pod_spec.update(
            pool_placement(
                args.gpu,
                gpu_node_selector=args.gpu_node_selector,
                gpu_toleration=args.gpu_toleration,
                node_selector=args.node_selector,
            )
        )
        spec: dict = {
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }
        if track == "canary":
            spec["replicas"] = replicas  # the stable Deployment's replicas belong to its HPA
        return k8s.apps.v1.Deployment(
            f"{name}-{track}",
            metadata={"name": f"{ep}-{track}", "namespace": NAMESPACE, "labels": labels},
            spec=spec,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self._role_ready),
        )
