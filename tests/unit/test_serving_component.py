"""ServingEndpoint built from explicit args (tests/unit/builders.py): resources per args, GPU placement, pod
security, canary weights. What each shipped stack makes of its endpoints: tests/stacks/test_stack_components.py."""

from __future__ import annotations

import json

import pytest

from components.cluster import SYSTEM_POOL_LABEL
from infra.inventory import Inventory
from infra.settings import SettingsError, load_settings
from tests.conftest import declare
from tests.unit.builders import CERTIFICATE_ARN, PREFIX, SERVING_IMAGE, Parts, canary, platform

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
DIABETES = {
    "endpoint": "diabetes",
    "model": "diabetes",
    "min_replicas": 1,
    "max_replicas": 2,
    "cpu": "500m",
    "memory": "1Gi",
    "capture_fraction": 0.1,
    "node_selector": SYSTEM_POOL_LABEL,
}
"""A CPU endpoint pinned to the system nodes (as dev's is)."""
RERANKER = {
    "endpoint": "reranker",
    "model": "reranker",
    "gpu": 1,
    "cpu": "4",
    "memory": "16Gi",
    "min_replicas": 1,
    "max_replicas": 4,
    "canary": canary(weight=5),
}
"""A GPU endpoint with a canary (as prod's is)."""


def serving(*endpoints: dict, certificate: str | None = None, tracking: dict | None = None) -> Inventory:
    """The endpoints beside the tracking server they read models from (`tracking`: its args overrides), all
    on the shared internal ALB."""
    at = {"certificate_arn": certificate}
    parts = Parts(monitoring={}, tracking={**at, **(tracking or {})}, endpoints=[{**e, **at} for e in endpoints])
    return declare(lambda: platform(parts))


@pytest.fixture(scope="module")
def both() -> Inventory:
    """The two endpoints; the tracking server on the system nodes like the CPU endpoint."""
    return serving(DIABETES, RERANKER, tracking={"node_selector": SYSTEM_POOL_LABEL})


def endpoint_objects(inventory, endpoint):
    return [r for r in inventory.resources if f"-ep-{endpoint}" in r.name]


def of(objects, type_token):
    return [r for r in objects if r.type == type_token]


def test_an_endpoint_follows_its_args(both):
    objects = endpoint_objects(both, "diabetes")
    (deployment,) = of(objects, DEPLOYMENT)
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SERVING_MODEL_NAME"] == "diabetes" and env["SERVING_MODEL_ALIAS"] == "champion"
    assert env["SERVING_CAPTURE_FRACTION"] == "0.1" and env["SERVING_PATH_PREFIX"] == "/diabetes"
    assert env["SERVING_TRACKING_PASSWORD_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert container["image"] == SERVING_IMAGE  # pinned by the digest the registry holds
    # no pool node at idle
    assert deployment.inputs["spec"]["template"]["spec"]["nodeSelector"] == {"mlops.platform/pool": "system"}
    (hpa,) = of(objects, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert (hpa.inputs["spec"]["minReplicas"], hpa.inputs["spec"]["maxReplicas"]) == (1, 2)
    assert hpa.inputs["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert len(of(objects, "kubernetes:policy/v1:PodDisruptionBudget")) == 1
    assert len(of(objects, "kubernetes:networking.k8s.io/v1:NetworkPolicy")) == 1
    (monitor,) = of(objects, "kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    assert monitor.inputs["spec"]["endpoints"][0]["path"] == "/metrics"


def test_pods_are_locked_down(both):
    pods_locked_down(both)


def pods_locked_down(inventory: Inventory) -> None:
    deployments = [d for d in inventory.of_type(DEPLOYMENT) if "-ep-" in d.name]
    assert deployments
    for deployment in deployments:
        pod = deployment.inputs["spec"]["template"]["spec"]
        assert (
            pod["securityContext"]["runAsNonRoot"] is True
            and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        )
        context = pod["containers"][0]["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and context["runAsUser"] != 0
        assert {p for p in ("readinessProbe", "livenessProbe", "startupProbe")} <= set(pod["containers"][0])
        assert pod["automountServiceAccountToken"] is False  # no API token (issue 13 item 9, CKV_K8S_38)
        resources = pod["containers"][0]["resources"]
        assert (
            resources["limits"]["cpu"] == resources["requests"]["cpu"] or resources["limits"]["cpu"] == "1"
        )  # CKV_K8S_11


def test_gpu_endpoints_land_on_the_gpu_pool(both):
    gpu_endpoints_on_the_gpu_pool(both, gpu="reranker", cpu="diabetes")


def gpu_endpoints_on_the_gpu_pool(inventory: Inventory, *, gpu: str, cpu: str) -> None:
    objects = endpoint_objects(inventory, gpu)
    assert of(objects, DEPLOYMENT)
    for deployment in of(objects, DEPLOYMENT):
        pod = deployment.inputs["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"mlops.platform/pool": "gpu"}
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ]
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    cpu_only = of(endpoint_objects(inventory, cpu), DEPLOYMENT)[0].inputs["spec"]["template"]["spec"]
    assert "tolerations" not in cpu_only and "nvidia.com/gpu" not in cpu_only["containers"][0]["resources"]["requests"]


@pytest.mark.parametrize("weight", [10, 5])
def test_canary_weights_add_up_and_each_track_serves_its_alias(weight):
    canary_weights_add_up(serving({**DIABETES, "canary": canary(weight=weight)}), "diabetes", weight)


def canary_weights_add_up(inventory: Inventory, endpoint: str, weight: int) -> None:
    objects = endpoint_objects(inventory, endpoint)
    (ingress,) = of(objects, "kubernetes:networking.k8s.io/v1:Ingress")
    action = json.loads(
        ingress.inputs["metadata"]["annotations"][f"alb.ingress.kubernetes.io/actions.{endpoint}-weighted"]
    )
    groups = {g["serviceName"]: g["weight"] for g in action["forwardConfig"]["targetGroups"]}
    assert groups == {f"{endpoint}-stable": 100 - weight, f"{endpoint}-canary": weight}
    assert sum(groups.values()) == 100
    aliases = {}
    for deployment in of(objects, DEPLOYMENT):
        env = {e["name"]: e["value"] for e in deployment.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
        aliases[deployment.inputs["metadata"]["labels"]["mlops.platform/track"]] = env["SERVING_MODEL_ALIAS"]
    assert aliases == {"stable": "champion", "canary": "challenger"}
    backend = ingress.inputs["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{endpoint}-weighted", "port": {"name": "use-annotation"}}


def test_endpoints_share_one_internal_alb_with_the_tracking_server(both):
    one_internal_alb(both, f"{PREFIX}-internal")


def one_internal_alb(inventory: Inventory, group: str) -> None:
    ingresses = inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert len(ingresses) == 3
    groups = {i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"] for i in ingresses}
    assert groups == {group}
    assert all(i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/scheme"] == "internal" for i in ingresses)


@pytest.mark.parametrize("certificate", [CERTIFICATE_ARN, None])
def test_with_a_certificate_every_ingress_of_the_shared_alb_listens_on_https_only(certificate):
    """Tracking and endpoints alike: one listener set, one certificate, one TLS policy (an "Exclusive"
    annotation of the ingress group), so no path of the shared ALB is reachable in plain HTTP with a certificate."""
    one_listener_set(serving(DIABETES, certificate=certificate), certificate)


def one_listener_set(inventory: Inventory, certificate: str | None) -> None:
    listen = '[{"HTTPS": 443}]' if certificate else '[{"HTTP": 80}]'
    ingresses = inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert {i.name.rsplit("-", 2)[-2] for i in ingresses} >= {"tracking", "diabetes"}
    for ingress in ingresses:
        annotations = ingress.inputs["metadata"]["annotations"]
        assert annotations["alb.ingress.kubernetes.io/listen-ports"] == listen
        assert annotations.get("alb.ingress.kubernetes.io/certificate-arn") == certificate
        assert annotations["alb.ingress.kubernetes.io/ssl-policy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"


def test_endpoint_role_writes_only_its_capture_prefix(both):
    inventory = both
    (policy,) = [
        p for p in inventory.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-ep-diabetes-workload-policy")
    ]
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert statements["WriteOwnCaptures"]["Action"] == "s3:PutObject"
    assert statements["WriteOwnCaptures"]["Resource"].endswith("/captures/diabetes/*")
    assert not any(
        "s3:GetObject" in json.dumps(s) for s in statements.values()
    )  # models come through the tracking server


BASE = {
    "profile": "dev",
    "budget": {"alertEmails": ["a@example.com"]},
    "cluster": {"publicAccessCidrs": ["203.0.113.0/24"]},
}


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([{"name": "ab", "model": "m"}, {"name": "ab", "model": "n"}], 'endpoints[1].name: got "ab" twice'),
        (
            [{"name": "ab", "model": "m", "replicas": {"min": 3, "max": 2}}],
            "endpoints[0].replicas.min: got 3, above replicas.max 2",
        ),
        (
            [{"name": "ab", "model": "m", "gpu": 2, "replicas": {"min": 2, "max": 2}}],
            "endpoints[0].gpu: needs 4 GPUs at minimum replicas; cluster.gpuPool.maxGpus is 2",
        ),
        (
            [{"name": "ab", "model": "m", "canary": {"alias": "champion", "weight": 10}}],
            'endpoints[0].canary.alias: got "champion"',
        ),
        (
            [{"name": "ab", "model": "m", "canary": {"alias": "c", "weight": 100}}],
            "endpoints[0].canary.weight: got 100",
        ),
        ([{"name": "Bad_Name", "model": "m"}], 'endpoints[0].name: got "Bad_Name"'),
        (
            [{"name": "ab", "model": "m", "autoscaling": {"metric": "memory"}}],
            'endpoints[0].autoscaling.metric: got "memory"; allowed: "cpu", "rps"',
        ),
        ([{"name": "ab", "model": "m", "imageTag": "latest"}], 'endpoints[0].imageTag: got "latest"'),
    ],
)
def test_bad_endpoint_settings_fail_before_anything_is_declared(endpoints, message):
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, "endpoints": endpoints}, stack="dev", region="us-east-1")
    assert any(message in p for p in info.value.problems), info.value.problems


def test_pool_floor_counts_always_on_pods(both):
    from infra.cost.estimate import workload_demand

    assert workload_demand(both, "cpu", "cpu") == (0.0, 0)  # pinned to the system nodes, the tracking server too
    unpinned = serving({**DIABETES, "node_selector": {}, "min_replicas": 3, "max_replicas": 10, "cpu": "2"})
    cpus, pods = workload_demand(unpinned, "cpu", "cpu")
    assert cpus == pytest.approx(3 * 2 + 1 * 0.25) and pods == 4  # 3 endpoint pods + the tracking server's
    assert workload_demand(both, "gpu", "gpu") == (2.0, 2)  # reranker stable + canary


LBC_UPSTREAM = "aws-load-balancer-controller-v2.14.0"
NAMESPACE_TYPE = "kubernetes:core/v1:Namespace"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"


def upstream_text(name: str) -> str:
    from infra.stackfile import REPO_ROOT

    return (REPO_ROOT / "components" / "upstream" / LBC_UPSTREAM / name).read_text()


def test_the_alb_lets_a_terminating_pod_finish_within_its_own_drain_not_awss_300_s(both):
    target_groups_drain_within_the_pods_grace(both)


def target_groups_drain_within_the_pods_grace(inventory: Inventory) -> None:
    """Every target group of the shared ALB has a deregistration delay the pods outlive: for endpoints,
    within the model server's shutdown delay + drain after the preStop sleep, before the kill."""
    from components import serving, tracking
    from services.serving.settings import ServingSettings

    fields = ServingSettings.model_fields
    server_left = fields["shutdown_delay_seconds"].default + fields["drain_seconds"].default
    delay = serving.deregistration_delay_seconds()
    # deregistered by the end of the preStop sleep at the latest; the ALB is done before the server stops
    assert 0 < delay <= server_left and serving.PRESTOP_SECONDS + delay < serving.termination_grace_seconds()
    assert tracking.DEREGISTRATION_DELAY_SECONDS < 30  # Kubernetes' default grace period (the tracking pod sets none)
    expected = {"tracking": tracking.DEREGISTRATION_DELAY_SECONDS}
    ingresses = inventory.of_type(INGRESS)
    assert {i.inputs["metadata"]["namespace"] for i in ingresses} == {tracking.NAMESPACE, serving.NAMESPACE}
    for ingress in ingresses:
        owner = "tracking" if ingress.inputs["metadata"]["namespace"] == tracking.NAMESPACE else "endpoint"
        attributes = ingress.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-group-attributes"]
        assert attributes == f"deregistration_delay.timeout_seconds={expected.get(owner, delay)}", ingress.name
    # the annotation and its value syntax as the LB controller v2.14.0 guide documents them
    guide = upstream_text("annotations-target-group-attributes.md")
    assert "`alb.ingress.kubernetes.io/target-group-attributes`" in guide
    assert "alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=30" in guide


def test_a_deregistration_delay_outside_the_albs_range_is_refused():
    from components.k8s_workload import internal_alb_annotations

    with pytest.raises(ValueError, match="deregistration_delay_seconds must be within 0-3600"):
        internal_alb_annotations(
            group="g", healthcheck_path="/readyz", certificate_arn=None, deregistration_delay_seconds=3601
        )


def test_pods_behind_the_alb_get_the_load_balancer_controllers_readiness_gate(both):
    readiness_gate_on_every_alb_namespace(both)


def readiness_gate_on_every_alb_namespace(inventory: Inventory) -> None:
    """The namespaces of every ip-target Ingress carry the label the controller's pod webhook selects on,
    so a rollout keeps old pods until the new ones are healthy in the target group."""
    from components.k8s_workload import ALB_READINESS_GATE_LABELS

    labels = {
        n.inputs["metadata"]["name"]: n.inputs["metadata"].get("labels", {}) for n in inventory.of_type(NAMESPACE_TYPE)
    }
    ingresses = inventory.of_type(INGRESS)
    assert ingresses
    for ingress in ingresses:
        assert (
            ingress.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"] == "ip"
        )  # the gate needs ip targets
        namespace = ingress.inputs["metadata"]["namespace"]
        assert labels[namespace]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled", namespace
    # the chart's default pod webhook selects namespaces by exactly this label (no stack overrides the selector)
    ((key, value),) = ALB_READINESS_GATE_LABELS.items()
    webhook = upstream_text("webhook.yaml")
    assert (
        "name: mpod.elbv2.k8s.aws" in webhook
        and f"- key: {key}\n      operator: In\n      values:\n      - {value}" in webhook
    )
    assert f"`{key}: {value}`" in upstream_text("pod_readiness_gate.md")
    (controller,) = [
        r
        for r in inventory.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs["chart"] == "aws-load-balancer-controller"
    ]
    assert "webhookNamespaceSelectors" not in controller.inputs["values"]
