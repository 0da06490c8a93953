"""The EKS cluster, Karpenter pools and add-ons, built from explicit args (tests/unit/builders.py).

What each shipped stack's settings make of them is tests/stacks/test_stack_components.py's subject."""

from __future__ import annotations

import json

import pytest

from components.node_pools import controller_policy
from infra.inventory import Inventory
from infra.manifests import manifest_of, validate
from tests.conftest import declare
from tests.unit.builders import PREFIX, TAGS, Parts, cluster_args, gpu_pool_args, node_pools_args, platform

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"
GPU_POOLS = {
    "spot": gpu_pool_args(),
    "on-demand": gpu_pool_args(
        instance_families=("g6e", "p5"),
        capacity_types=("on-demand",),
        limits={"nvidia.com/gpu": "16"},
        expire_after="336h",
    ),
}
"""Two GPU pools as two profiles might ask for them: spot and capped at 2 GPUs; on-demand, 16 GPUs, other families."""


def pool(inventory, name):
    return next(r for r in inventory.of_type(NODE_POOL) if r.inputs["metadata"]["name"] == name)


def release(inventory, suffix):
    return next(r for r in inventory.of_type(RELEASE) if r.name.endswith(suffix))


@pytest.fixture(scope="module")
def full() -> Inventory:
    """Compute, monitoring, the tracking server and two endpoints: everything that makes roles and charts."""
    return declare(
        lambda: platform(Parts(monitoring={}, tracking={}, endpoints=[{"endpoint": "a"}, {"endpoint": "b"}]))
    )


@pytest.fixture(scope="module")
def compute() -> Inventory:
    return declare(lambda: platform())


@pytest.mark.parametrize("capacity", sorted(GPU_POOLS))
def test_gpu_pool_is_tainted_labelled_and_capped_as_asked(capacity):
    args = GPU_POOLS[capacity]
    gpu = pool(declare(lambda: platform(Parts(pools={"gpu": args}))), "gpu").inputs["spec"]
    assert gpu["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert gpu["template"]["metadata"]["labels"] == {"mlops.platform/pool": "gpu"}
    assert gpu["limits"] == dict(args.limits)
    requirements = {r["key"]: r["values"] for r in gpu["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == [capacity] == list(args.capacity_types)
    assert requirements["karpenter.k8s.aws/instance-family"] == list(args.instance_families)
    assert gpu["template"]["spec"]["expireAfter"] == args.expire_after


def test_both_pools_scale_to_zero_when_idle(compute):
    for name, policy in (("cpu", "WhenEmptyOrUnderutilized"), ("gpu", "WhenEmpty")):
        spec = pool(compute, name).inputs["spec"]
        assert spec["disruption"]["consolidationPolicy"] == policy
        assert spec["disruption"]["consolidateAfter"] == {"cpu": "1m", "gpu": "5m"}[name]  # minutes, not hours
        assert "replicas" not in spec  # no static capacity: an idle pool has no nodes
    assert "taints" not in pool(compute, "cpu").inputs["spec"]["template"]["spec"]


def test_cluster_endpoint_private_or_allow_listed(compute):
    private = compute.of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert private["endpointPublicAccess"] is False and private["endpointPrivateAccess"] is True
    public = declare(
        lambda: platform(
            Parts(
                cluster={
                    "endpoint_public_access": True,
                    "public_access_cidrs": ("203.0.113.0/24",),
                    "deploy_runner_cidrs": (),
                }
            )
        )
    )
    vpc = public.of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is True and vpc["publicAccessCidrs"] == ["203.0.113.0/24"]


def test_secrets_encryption_logging_and_standard_support(compute):
    args = cluster_args()
    cluster = compute.of_type("aws:eks/cluster:Cluster")[0].inputs
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    key_arn = cluster["encryptionConfig"]["provider"]["keyArn"]
    key = next(k for k in compute.of_type("aws:kms/key:Key") if "secrets-key" in k.name)
    assert key.inputs["enableKeyRotation"] is True and key_arn.rsplit("/", 1)[-1].startswith(key.name)
    assert cluster["enabledClusterLogTypes"] == list(args.log_types) == ["api", "audit"]
    assert cluster["upgradePolicy"] == {"supportType": "STANDARD"}
    assert cluster["version"] == args.kubernetes_version
    log_group = compute.of_type("aws:cloudwatch/logGroup:LogGroup")[0]
    assert log_group.inputs["name"] == f"/aws/eks/{cluster['name']}/cluster"
    assert log_group.inputs["retentionInDays"] == args.log_retention_days


def test_every_workload_role_trusts_only_its_own_service_account(full):
    federated = [r for r in full.of_type("aws:iam/role:Role") if "Federated" in r.inputs["assumeRolePolicy"]]
    expected = {
        "-karpenter": "kube-system:karpenter",
        "-lbc": "kube-system:aws-load-balancer-controller",
        "-ebs-csi": "kube-system:ebs-csi-controller-sa",
        "-tracking-workload": "mlflow:mlflow-tracking",
        "-ep-a-workload": "serving:a",
        "-ep-b-workload": "serving:b",
    }
    assert len(federated) == len(expected)
    for role in federated:
        (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        conditions = statement["Condition"]["StringEquals"]
        (sub,) = [v for k, v in conditions.items() if k.endswith(":sub")]
        (aud,) = [v for k, v in conditions.items() if k.endswith(":aud")]
        suffix = next(s for s in expected if role.name.endswith(s))
        assert sub == f"system:serviceaccount:{expected[suffix]}" and aud == "sts.amazonaws.com"
        assert "StringLike" not in statement["Condition"]  # no wildcards


def test_helm_service_accounts_use_the_role_that_trusts_them(compute):
    roles = {r.name: r for r in compute.of_type("aws:iam/role:Role")}
    for release_suffix, role_suffix in (("-karpenter", "-karpenter"), ("-aws-load-balancer-controller", "-lbc")):
        chart = release(compute, release_suffix)
        role = next(r for n, r in roles.items() if n.endswith(role_suffix))
        sa = chart.inputs["values"]["serviceAccount"]
        trusted = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
        assert any(v.endswith(f":{sa['name']}") for v in trusted.values())
        assert sa["annotations"]["eks.amazonaws.com/role-arn"].rsplit("/", 1)[-1].startswith(role.name)


def test_every_kubernetes_resource_uses_the_cluster_provider(full):
    (provider,) = full.of_type("pulumi:providers:kubernetes")
    kube = [r for r in full.resources if r.type.startswith("kubernetes:")]
    assert len(kube) >= 8
    for resource in kube:
        assert resource.provider.startswith(provider.urn + "::"), resource.name


def test_destroy_ordering_edges(full):
    inventory = full
    karpenter = release(inventory, "-pools-karpenter")
    crds = release(inventory, "-pools-karpenter-crd")
    system = inventory.of_type("aws:eks/nodeGroup:NodeGroup")[0]
    eks = inventory.of_type("aws:eks/cluster:Cluster")[0]
    # pools and node classes go before Karpenter, Karpenter before the nodes it runs on
    for resource in inventory.of_type(NODE_POOL) + inventory.of_type(NODE_CLASS):
        assert karpenter.urn in resource.depends_on, resource.name
    assert crds.urn in karpenter.depends_on and system.urn in karpenter.depends_on

    def after(resource, urn, seen=()):
        return urn in resource.depends_on or any(
            after(inventory.by_urn(d), urn, seen + (d,)) for d in resource.depends_on if d not in seen
        )

    for chart in inventory.of_type(RELEASE):
        assert after(chart, system.urn), chart.name
    # node group before the cluster, the cluster before the network's subnets
    assert eks.urn in system.depends_on
    private_subnets = [s.urn for s in inventory.of_type("aws:ec2/subnet:Subnet") if "private" in s.name]
    assert private_subnets and set(private_subnets) <= set(eks.depends_on)


def test_nodes_require_imdsv2_with_hop_limit_one(compute):
    nodes_require_imdsv2(compute, cluster_name=PREFIX, stack=TAGS["stack"])


def nodes_require_imdsv2(inventory: Inventory, *, cluster_name: str, stack: str) -> None:
    lt = inventory.of_type("aws:ec2/launchTemplate:LaunchTemplate")[0].inputs["metadataOptions"]
    assert lt["httpTokens"] == "required" and lt["httpPutResponseHopLimit"] == 1
    node_classes = inventory.of_type(NODE_CLASS)
    assert len(node_classes) == 2
    for node_class in node_classes:
        spec = node_class.inputs["spec"]
        assert (
            spec["metadataOptions"]["httpTokens"] == "required"
            and spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
        )
        assert all(b["ebs"]["encrypted"] is True for b in spec["blockDeviceMappings"])
        assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": cluster_name}}]
        assert spec["tags"]["stack"] == stack  # launched instances are cost-allocated like the rest


def test_nvidia_device_plugin_runs_only_on_gpu_nodes(compute):
    plugin = release(compute, "-nvidia-device-plugin").inputs
    terms = plugin["values"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [{"matchExpressions": [{"key": "mlops.platform/pool", "operator": "In", "values": ["gpu"]}]}]
    assert plugin["values"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_chart_versions_are_pinned(full):
    from components import versions

    releases = full.of_type(RELEASE)
    assert len(releases) == 8  # + metrics-server
    pinned = {c.version for c in vars(versions).values() if isinstance(c, versions.HelmChart)}
    for chart in releases:
        assert chart.inputs["version"] in pinned, chart.name


@pytest.mark.parametrize("capacity", sorted(GPU_POOLS))
def test_karpenter_objects_validate_against_their_schemas(capacity):
    inventory = declare(lambda: platform(Parts(pools={"gpu": GPU_POOLS[capacity]})))
    objects = inventory.of_type(NODE_POOL) + inventory.of_type(NODE_CLASS)
    assert len(objects) == 4
    for resource in objects:
        assert validate(manifest_of(resource), "1.35") == [], resource.name


def test_schema_validation_catches_a_typo():
    bad = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": "gpu"},
        "spec": {
            "template": {"spec": {"nodeClassRef": {"group": "g", "kind": "k", "name": "n"}, "requirements": []}},
            "limit": {"cpu": "1"},
        },
    }
    problems = validate(bad, "1.35")
    assert problems and "limit" in problems[0]
    bad["spec"] = {"template": bad["spec"]["template"], "disruption": {"consolidationPolicy": "Sometimes"}}
    assert any("consolidationPolicy" in p for p in validate(bad, "1.35"))


def test_karpenter_policy_is_scoped_to_this_cluster():
    statements = json.loads(
        controller_policy(
            cluster_name="c1",
            region="us-east-1",
            account="123456789012",
            partition="aws",
            queue_arn="arn:q",
            node_role_arn="arn:r",
        )
    )["Statement"]
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions
        writes = [a for a in actions if not a.split(":")[1].startswith(("Describe", "Get", "List"))]
        if statement["Resource"] == "*" and writes:
            assert statement.get("Condition") or writes == ["pricing:GetProducts"], statement["Sid"]
    terminate = next(s for s in statements if "ec2:TerminateInstances" in s["Action"])
    assert terminate["Condition"]["StringEquals"] == {"aws:ResourceTag/kubernetes.io/cluster/c1": "owned"}
    pass_role = next(s for s in statements if s["Action"] == "iam:PassRole")
    assert pass_role["Resource"] == "arn:r"


def test_node_pool_args_reject_bad_limits():
    def args(gpu_limits):
        return node_pools_args(None, gpu=gpu_pool_args(limits=gpu_limits))

    with pytest.raises(ValueError, match="must cap nvidia.com/gpu"):
        args({"cpu": "8"})
    with pytest.raises(ValueError, match=r"gpu.limits\[nvidia.com/gpu\]: got -1"):
        args({"nvidia.com/gpu": "-1"})
