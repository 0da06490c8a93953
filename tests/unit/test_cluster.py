"""The EKS cluster, Karpenter pools and add-ons, checked on every shipped stack's inventory."""

from __future__ import annotations

import json

import pytest

from components.node_pools import NodePoolsArgs, PoolArgs, controller_policy
from infra.manifests import manifest_of, validate
from infra.settings import load_settings
from infra.stackfile import load_stack_config

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"


def pool(inventory, name):
    return next(r for r in inventory.of_type(NODE_POOL) if r.inputs["metadata"]["name"] == name)


def release(inventory, suffix):
    return next(r for r in inventory.of_type(RELEASE) if r.name.endswith(suffix))


def settings_of(stack):
    config = load_stack_config(stack)
    return load_settings(config.namespace("mlops-platform"), stack=stack, region=config.values["aws:region"])


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_gpu_pool_is_tainted_labelled_and_capped_per_profile(stack_inventories, stack):
    gpu = pool(stack_inventories[stack], "gpu").inputs["spec"]
    settings = settings_of(stack).cluster.gpu_pool
    assert gpu["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert gpu["template"]["metadata"]["labels"] == {"mlops.platform/pool": "gpu"}
    assert gpu["limits"] == {"nvidia.com/gpu": str(settings.max_gpus)}
    requirements = {r["key"]: r["values"] for r in gpu["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == [settings.capacity_type]
    assert requirements["karpenter.k8s.aws/instance-family"] == list(settings.instance_families)
    assert gpu["template"]["spec"]["expireAfter"] == settings.expire_after


def test_gpu_defaults_spot_in_dev_on_demand_in_prod(stack_inventories):
    capacity = {
        stack: {r["key"]: r["values"] for r in pool(stack_inventories[stack], "gpu").inputs["spec"]["template"]["spec"]["requirements"]}[
            "karpenter.sh/capacity-type"
        ]
        for stack in ("dev", "prod")
    }
    assert capacity == {"dev": ["spot"], "prod": ["on-demand"]}
    limits = {s: int(pool(stack_inventories[s], "gpu").inputs["spec"]["limits"]["nvidia.com/gpu"]) for s in ("dev", "prod")}
    assert limits["dev"] < limits["prod"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_both_pools_scale_to_zero_when_idle(stack_inventories, stack):
    for name, policy in (("cpu", "WhenEmptyOrUnderutilized"), ("gpu", "WhenEmpty")):
        spec = pool(stack_inventories[stack], name).inputs["spec"]
        assert spec["disruption"]["consolidationPolicy"] == policy
        assert spec["disruption"]["consolidateAfter"].endswith(("s", "m"))  # minutes, not hours
        assert "replicas" not in spec  # no static capacity: an idle pool has no nodes
    assert "taints" not in pool(stack_inventories[stack], "cpu").inputs["spec"]["template"]["spec"]


def test_cluster_endpoint_private_in_prod_allow_listed_in_dev(stack_inventories):
    prod = stack_inventories["prod"].of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert prod["endpointPublicAccess"] is False and prod["endpointPrivateAccess"] is True
    dev = stack_inventories["dev"].of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert dev["endpointPublicAccess"] is True and dev["publicAccessCidrs"] == ["203.0.113.0/24"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_secrets_encryption_logging_and_standard_support(stack_inventories, stack):
    inventory = stack_inventories[stack]
    cluster = inventory.of_type("aws:eks/cluster:Cluster")[0].inputs
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    key_arn = cluster["encryptionConfig"]["provider"]["keyArn"]
    key = next(k for k in inventory.of_type("aws:kms/key:Key") if "secrets-key" in k.name)
    assert key.inputs["enableKeyRotation"] is True and key_arn.rsplit("/", 1)[-1].startswith(key.name)
    assert cluster["enabledClusterLogTypes"] == settings_of(stack).cluster.log_types
    assert cluster["upgradePolicy"] == {"supportType": "STANDARD"}
    assert cluster["version"] == settings_of(stack).cluster.kubernetes_version
    log_group = inventory.of_type("aws:cloudwatch/logGroup:LogGroup")[0]
    assert log_group.inputs["name"] == f"/aws/eks/{cluster['name']}/cluster"
    assert log_group.inputs["retentionInDays"] == settings_of(stack).cluster.log_retention_days


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_workload_role_trusts_only_its_own_service_account(stack_inventories, stack):
    inventory = stack_inventories[stack]
    federated = [r for r in inventory.of_type("aws:iam/role:Role") if "Federated" in r.inputs["assumeRolePolicy"]]
    expected = {
        "-karpenter": "kube-system:karpenter",
        "-lbc": "kube-system:aws-load-balancer-controller",
        "-ebs-csi": "kube-system:ebs-csi-controller-sa",
        "-tracking-workload": "mlflow:mlflow-tracking",
    }
    settings = settings_of(stack)
    expected.update({f"-ep-{e.name}-workload": f"serving:{e.name}" for e in settings.endpoints})
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


def test_helm_service_accounts_use_the_role_that_trusts_them(stack_inventories):
    inventory = stack_inventories["dev"]
    roles = {r.name: r for r in inventory.of_type("aws:iam/role:Role")}
    for release_suffix, role_suffix in (("-karpenter", "-karpenter"), ("-aws-load-balancer-controller", "-lbc")):
        chart = release(inventory, release_suffix)
        role = next(r for n, r in roles.items() if n.endswith(role_suffix))
        sa = chart.inputs["values"]["serviceAccount"]
        trusted = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
        assert any(v.endswith(f":{sa['name']}") for v in trusted.values())
        assert sa["annotations"]["eks.amazonaws.com/role-arn"].rsplit("/", 1)[-1].startswith(role.name)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_kubernetes_resource_uses_the_cluster_provider(stack_inventories, stack):
    inventory = stack_inventories[stack]
    (provider,) = inventory.of_type("pulumi:providers:kubernetes")
    kube = [r for r in inventory.resources if r.type.startswith("kubernetes:")]
    assert len(kube) >= 8
    for resource in kube:
        assert resource.provider.startswith(provider.urn + "::"), resource.name


def test_destroy_ordering_edges(stack_inventories):
    inventory = stack_inventories["dev"]
    karpenter = release(inventory, "-pools-karpenter")
    crds = release(inventory, "-pools-karpenter-crd")
    system = inventory.of_type("aws:eks/nodeGroup:NodeGroup")[0]
    eks = inventory.of_type("aws:eks/cluster:Cluster")[0]
    # pools and node classes go before Karpenter, Karpenter before the nodes it runs on
    for resource in inventory.of_type(NODE_POOL) + inventory.of_type(NODE_CLASS):
        assert karpenter.urn in resource.depends_on, resource.name
    assert crds.urn in karpenter.depends_on and system.urn in karpenter.depends_on
    def after(resource, urn, seen=()):
        return urn in resource.depends_on or any(after(inventory.by_urn(d), urn, seen + (d,)) for d in resource.depends_on if d not in seen)

    for chart in inventory.of_type(RELEASE):
        assert after(chart, system.urn), chart.name
    # node group before the cluster, the cluster before the network's subnets
    assert eks.urn in system.depends_on
    private_subnets = [s.urn for s in inventory.of_type("aws:ec2/subnet:Subnet") if "private" in s.name]
    assert set(private_subnets) <= set(eks.depends_on)


def test_nodes_require_imdsv2_with_hop_limit_one(stack_inventories):
    inventory = stack_inventories["dev"]
    lt = inventory.of_type("aws:ec2/launchTemplate:LaunchTemplate")[0].inputs["metadataOptions"]
    assert lt["httpTokens"] == "required" and lt["httpPutResponseHopLimit"] == 1
    for node_class in inventory.of_type(NODE_CLASS):
        spec = node_class.inputs["spec"]
        assert spec["metadataOptions"]["httpTokens"] == "required" and spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert all(b["ebs"]["encrypted"] is True for b in spec["blockDeviceMappings"])
        assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "mlops-dev"}}]
        assert spec["tags"]["stack"] == "dev"  # launched instances are cost-allocated like the rest


def test_nvidia_device_plugin_runs_only_on_gpu_nodes(stack_inventories):
    plugin = release(stack_inventories["dev"], "-nvidia-device-plugin").inputs
    terms = plugin["values"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "mlops.platform/pool", "operator": "In", "values": ["gpu"]}]}]
    assert plugin["values"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_chart_versions_are_pinned(stack_inventories):
    from components import versions

    releases = stack_inventories["prod"].of_type(RELEASE)
    assert len(releases) == 8  # + metrics-server
    pinned = {c.version for c in vars(versions).values() if isinstance(c, versions.HelmChart)}
    for chart in releases:
        assert chart.inputs["version"] in pinned, chart.name


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_karpenter_objects_validate_against_their_schemas(stack_inventories, stack):
    inventory = stack_inventories[stack]
    objects = inventory.of_type(NODE_POOL) + inventory.of_type(NODE_CLASS)
    assert len(objects) == 4
    for resource in objects:
        assert validate(manifest_of(resource), "1.35") == [], resource.name


def test_schema_validation_catches_a_typo():
    bad = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": "gpu"},
        "spec": {"template": {"spec": {"nodeClassRef": {"group": "g", "kind": "k", "name": "n"}, "requirements": []}}, "limit": {"cpu": "1"}},
    }
    problems = validate(bad, "1.35")
    assert problems and "limit" in problems[0]
    bad["spec"] = {"template": bad["spec"]["template"], "disruption": {"consolidationPolicy": "Sometimes"}}
    assert any("consolidationPolicy" in p for p in validate(bad, "1.35"))


def test_karpenter_policy_is_scoped_to_this_cluster():
    statements = json.loads(
        controller_policy(
            cluster_name="c1", region="us-east-1", account="123456789012", partition="aws", queue_arn="arn:q", node_role_arn="arn:r"
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
        pool = PoolArgs(instance_families=("m6i",), instance_sizes=("large",), capacity_types=("spot",), limits={"cpu": "4"})
        gpu = PoolArgs(instance_families=("g5",), instance_sizes=("xlarge",), capacity_types=("spot",), limits=gpu_limits)
        return NodePoolsArgs(
            cluster_name="c", cluster_endpoint="e", cluster_security_group_id="sg", identity=None, node_role=None, cpu=pool, gpu=gpu  # type: ignore[arg-type]
        )

    with pytest.raises(ValueError, match="must cap nvidia.com/gpu"):
        args({"cpu": "8"})
    with pytest.raises(ValueError, match=r"gpu.limits\[nvidia.com/gpu\]: got -1"):
        args({"nvidia.com/gpu": "-1"})
