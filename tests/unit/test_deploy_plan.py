"""The deploy plan: create and destroy order of every shipped stack, from its inventory's dependency graph.

The engine creates a resource after everything it depends on (explicit `depends_on`, resources
whose outputs feed its inputs, its parent, its provider) and destroys in the reverse order, so
"B outlives A" is `plan.requires(A, B)`. Phase 1 is the first `pulumi up` of a fresh account
(`deployWorkloads: false`); phase 2 is the stack file as shipped (images pushed).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pytest

from infra.cli import settings_for
from infra.inventory import Inventory, Resource, walk
from infra.offline import ACCOUNT_ID, physical_name
from infra.plan import DeployPlan, PlanError
from infra.settings import PlatformSettings
from infra.stackfile import load_stack_config, stack_names
from tests.conftest import declare, offline_stack

STACKS = stack_names()
RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "aws:iam/role:Role"
ROLE_POLICIES = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
SERVICE = "kubernetes:core/v1:Service"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
RUNNER_RULE_TYPES = (
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "aws:ec2/securityGroupRule:SecurityGroupRule",
)


@pytest.fixture(scope="module")
def phase_one() -> dict[str, Inventory]:
    return {stack: offline_stack(stack, deployWorkloads="false") for stack in STACKS}


@pytest.fixture(scope="module")
def settings() -> dict[str, PlatformSettings]:
    return {stack: settings_for(load_stack_config(stack)) for stack in STACKS}


def platform_images(inventory: Inventory, settings: PlatformSettings) -> dict[str, set[str]]:
    """Resource name -> images of the stack's own registry its inputs mention (anywhere: pod specs, values)."""
    registry = f"{ACCOUNT_ID}.dkr.ecr.{settings.region}.amazonaws.com/{settings.name_prefix}/"
    found: dict[str, set[str]] = {}
    for resource in inventory.resources:
        images = {v for v in walk(resource.inputs) if isinstance(v, str) and v.startswith(registry)}
        if images:
            found[resource.name] = images
    return found


def one(inventory: Inventory, type_token: str, suffix: str) -> Resource:
    (found,) = [r for r in inventory.of_type(type_token) if r.name.endswith(suffix)]
    return found


def unmet(plan: DeployPlan, users: list[Resource], needed: list[Resource], why: str) -> list[str]:
    """One line per (user, needed) pair where the user does not wait for (and so may outlive) what it needs."""
    return [
        f"{u.name} does not depend on {n.name}: {why}"
        for u in users
        for n in needed
        if u.urn != n.urn and not plan.requires(u, n)
    ]


# -- the plan itself, and what the offline recorder gives it ---------------------------------------
def test_the_recorder_keeps_implicit_dependencies_parents_and_providers():
    """What the engine orders by: outputs used as inputs, parents, providers, a depends_on on a component."""

    class Box(pulumi.ComponentResource):
        def __init__(self, name: str) -> None:
            super().__init__("test:index:Box", name)
            self.bucket = aws.s3.Bucket(f"{name}-bucket", opts=pulumi.ResourceOptions(parent=self))
            # no depends_on: the bucket's id flowing into `bucket` is the only link
            self.policy = aws.s3.BucketPublicAccessBlock(
                f"{name}-block", bucket=self.bucket.id, opts=pulumi.ResourceOptions(parent=self)
            )

    def build() -> None:
        box = Box("box")
        provider = k8s.Provider("k8s", kubeconfig="{}")
        k8s.core.v1.ConfigMap("cm", data={"a": "b"}, opts=pulumi.ResourceOptions(provider=provider))
        aws.sqs.Queue("after-box", opts=pulumi.ResourceOptions(depends_on=[box]))

    inventory = declare(build)
    plan = DeployPlan(inventory)
    by_name = {r.name: r for r in inventory.resources}
    block, bucket, box = by_name["box-block"], by_name["box-bucket"], by_name["box"]
    assert bucket.urn in block.depends_on, "an output used as an input is a dependency"
    assert block.parent == box.urn
    assert plan.requires(block, bucket) and plan.requires(bucket, box), "children wait for their parent"
    assert plan.requires(by_name["cm"], by_name["k8s"]), "objects wait for their provider"
    assert {bucket.urn, block.urn} <= set(by_name["after-box"].depends_on), (
        "depends_on a component means on its children"
    )
    order = [r.name for r in plan.create_order()]
    assert order.index("box") < order.index("box-bucket") < order.index("box-block") < order.index("after-box")
    destroy = [r.name for r in plan.destroy_order()]
    assert destroy.index("after-box") < destroy.index("box-block") < destroy.index("box-bucket") < destroy.index("box")
    assert plan.path(block, box) == ["box-block", "box"]


def test_the_recorder_names_nested_resources_as_the_engine_does():
    """The engine prefixes a child's type with its parent's whole type chain; every reference uses those URNs."""

    class Outer(pulumi.ComponentResource):
        def __init__(self, name: str) -> None:
            super().__init__("test:index:Outer", name)
            self.inner = Inner(f"{name}-inner", pulumi.ResourceOptions(parent=self))

    class Inner(pulumi.ComponentResource):
        def __init__(self, name: str, opts: pulumi.ResourceOptions) -> None:
            super().__init__("test:index:Inner", name, None, opts)
            self.queue = aws.sqs.Queue(f"{name}-queue", opts=pulumi.ResourceOptions(parent=self))

    def build() -> None:
        outer = Outer("outer")
        aws.sqs.QueuePolicy("policy", queue_url=outer.inner.queue.url, policy="{}")

    inventory = declare(build)
    by_name = {r.name: r for r in inventory.resources}
    stem = "urn:pulumi:test::mlops-platform::"
    assert by_name["outer"].urn == stem + "test:index:Outer::outer"
    assert by_name["outer-inner"].urn == stem + "test:index:Outer$test:index:Inner::outer-inner"
    assert (
        by_name["outer-inner-queue"].urn
        == stem + "test:index:Outer$test:index:Inner$aws:sqs/queue:Queue::outer-inner-queue"
    )
    assert by_name["outer-inner-queue"].parent == by_name["outer-inner"].urn
    assert by_name["policy"].depends_on == [by_name["outer-inner-queue"].urn]


@pytest.mark.parametrize("stack", STACKS)
def test_every_reference_in_the_graph_names_a_declared_resource(stack_inventories, stack):
    inventory = stack_inventories[stack]
    urns = {r.urn for r in inventory.resources}
    for resource in inventory.resources:
        references = [*resource.depends_on, *([resource.parent] if resource.parent else [])]
        references += [resource.provider.rsplit("::", 1)[0]] if resource.provider else []
        assert set(references) <= urns, resource.name


def test_a_dependency_cycle_is_named():
    def resource(name: str, needs: str) -> Resource:
        return Resource(
            urn=f"urn:x::{name}",
            type="t:m:T",
            name=name,
            parent=None,
            custom=True,
            inputs={},
            depends_on=[f"urn:x::{needs}"],
        )

    plan = DeployPlan(
        Inventory(project="p", stack="s", source="offline", resources=[resource("a", "b"), resource("b", "a")])
    )
    with pytest.raises(PlanError, match=r"dependency cycle: (a -> b -> a|b -> a -> b)"):
        plan.create_order()


@pytest.mark.parametrize("stack", STACKS)
def test_destroy_runs_the_create_order_backwards(stack_inventories, stack):
    plan = DeployPlan(stack_inventories[stack])
    created = {r.urn: i for i, r in enumerate(plan.create_order())}
    destroyed = {r.urn: i for i, r in enumerate(plan.destroy_order())}
    assert len(created) == len(destroyed) == len(stack_inventories[stack].resources)
    for urn, needs in plan.needs.items():
        for needed in needs:
            assert created[needed] < created[urn] and destroyed[urn] < destroyed[needed]
    assert len(plan.create_waves) > 5  # a real graph, not everything at once


# -- create order ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_phase_one_pulls_no_platform_image(phase_one, stack_inventories, settings, stack):
    """The first `up` creates the registry; nothing in it may run an image from that registry."""
    assert platform_images(phase_one[stack], settings[stack]) == {}
    components = {r.type for r in phase_one[stack].resources if r.is_component}
    assert "mlops:k8s:ServingEndpoint" not in components and "mlops:tracking:TrackingServer" not in components
    assert phase_one[stack].outputs["deployWorkloads"] is False and phase_one[stack].outputs["endpointPaths"] == {}
    # the detector is not vacuous: phase 2 runs these images, each from a repository phase 1 created
    phase_two = platform_images(stack_inventories[stack], settings[stack])
    images = set().union(*phase_two.values())
    assert {i.split("/")[-1].split(":")[0] for i in images} == {"tracking", "serving"}
    repositories = {r.inputs["name"] for r in phase_one[stack].of_type("aws:ecr/repository:Repository")}
    for image in images:
        path = image.split("/", 1)[1].split(":")[0]  # <prefix>/<repository>
        assert path in repositories, f"{image} comes from a repository phase 1 does not create"
        assert "@sha256:" in image, f"{image} is not pinned by digest"


@pytest.mark.parametrize("stack", STACKS)
def test_phase_two_only_adds_to_phase_one(phase_one, stack_inventories, stack):
    """Turning workloads on changes nothing phase 1 created: same URNs, same inputs (no update, no replacement)."""
    after = {r.urn: r for r in stack_inventories[stack].resources}
    changed = [r.name for r in phase_one[stack].resources if r.urn not in after or after[r.urn].inputs != r.inputs]
    assert changed == []
    assert len(after) > len(phase_one[stack].resources)


@pytest.mark.parametrize("stack", STACKS)
def test_the_runbook_order_tracking_then_endpoints_only_needs_what_exists(phase_one, stack_inventories, stack):
    """README runbook: phase 2 first creates the tracking server alone (`--target`), a model is registered, then
    the endpoints. Each step may only wait for what earlier steps created."""
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    (tracking,) = [r for r in inventory.resources if r.type == "mlops:tracking:TrackingServer"]
    serving = [r for r in inventory.resources if r.type in ("mlops:k8s:ServingPlane", "mlops:k8s:ServingEndpoint")]

    def subtree(roots: list[Resource]) -> set[str]:
        return {r.urn for root in roots for r in [root, *inventory.descendants(root.urn)]}

    created = {r.urn for r in phase_one[stack].resources}
    for step in ([tracking], serving):
        members = subtree(step)
        missing = {
            inventory.by_urn(p).name for m in members for p in plan.prerequisites(m) if p not in members | created
        }
        assert missing == set(), f"{step[0].name} would wait for resources no earlier step creates"
        created |= members
    assert created == {r.urn for r in inventory.resources}


@pytest.mark.parametrize("stack", STACKS)
def test_phase_one_creates_the_platform_the_workloads_need(phase_one, stack):
    inventory = phase_one[stack]
    types = inventory.type_counts()
    assert types["aws:eks/cluster:Cluster"] == 1 and types["aws:eks/nodeGroup:NodeGroup"] == 1
    assert types["aws:ecr/repository:Repository"] >= 2
    releases = {r.inputs.get("name") for r in inventory.of_type(RELEASE)}
    assert {"aws-load-balancer-controller", "karpenter", "kube-prometheus-stack"} <= releases


@pytest.mark.parametrize("stack", STACKS)
def test_every_kubernetes_object_waits_for_the_cluster_and_its_system_nodes(stack_inventories, stack):
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    cluster = one(inventory, "aws:eks/cluster:Cluster", "-eks")
    nodes = one(inventory, "aws:eks/nodeGroup:NodeGroup", "-system")
    objects = [r for r in inventory.resources if r.type.startswith("kubernetes:")]
    assert len(objects) > 20
    assert unmet(plan, objects, [cluster, nodes], "it would be sent to an API server without nodes to run it") == []


@pytest.mark.parametrize("stack", STACKS)
def test_custom_resources_wait_for_the_release_that_installs_their_definitions(stack_inventories, stack):
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    releases = {r.inputs.get("name"): r for r in inventory.of_type(RELEASE)}
    crd_release = {
        "monitoring.coreos.com": releases["kube-prometheus-stack"],
        "karpenter.sh": releases["karpenter-crd"],
        "karpenter.k8s.aws": releases["karpenter-crd"],
    }
    problems, checked = [], 0
    for resource in inventory.resources:
        group = resource.type.removeprefix("kubernetes:").split("/")[0]
        if group in crd_release:
            checked += 1
            problems += unmet(
                plan, [resource], [crd_release[group]], f"its kind is defined by {crd_release[group].name}"
            )
    assert checked >= 4 and problems == []


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_reaches_the_api_before_the_deploy_runner_can(stack_inventories, settings, stack):
    """A private endpoint is reached through the cluster security group: HTTPS from the runner comes first."""
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    cluster = one(inventory, "aws:eks/cluster:Cluster", "-eks")
    using_api = [r for r in inventory.resources if r.type.startswith("kubernetes:")]
    if settings[stack].cluster.endpoint_public_access:
        # the runner comes in over the public endpoint, limited to the allow-list
        assert (
            cluster.inputs["vpcConfig"]["endpointPublicAccess"] is True
            and cluster.inputs["vpcConfig"]["publicAccessCidrs"]
        )
        return
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    runner_rules = [r for r in inventory.resources if _https_into_cluster_security_group(plan, r, cluster)]
    assert runner_rules, (
        "issue 11 item 3: no HTTPS (443) ingress into the cluster security group, so `pulumi up` cannot reach "
        "the private API endpoint; expected an aws:vpc/securityGroupIngressRule from the deploy runner"
    )
    problems = [
        f"{r.name} reaches the API before any deploy-runner rule exists"
        for r in using_api
        if not any(plan.requires(r, rule) for rule in runner_rules)
    ]
    assert problems == []


def _https_into_cluster_security_group(plan: DeployPlan, rule: Resource, cluster: Resource) -> bool:
    """An ingress rule admitting TCP 443 into the EKS-created cluster security group (an output of the cluster)."""
    if rule.type not in RUNNER_RULE_TYPES or rule.inputs.get("type", "ingress") != "ingress":
        return False
    protocol = rule.inputs.get("ipProtocol", rule.inputs.get("protocol"))
    ports = rule.inputs.get("fromPort", -1) <= 443 <= rule.inputs.get("toPort", -1)
    return protocol in ("tcp", "6", "-1") and ports and cluster.urn in rule.depends_on


# -- destroy order -----------------------------------------------------------------------------------
POD_OWNERS = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:Job",
)


def policies_of(inventory: Inventory, role: Resource) -> list[Resource]:
    """The role's own inline policies and attachments: their `role` input is the role's name or id
    (offline, `<physical name>` and `<physical name>-id`; see infra/offline.py)."""
    physical = physical_name(role.name, role.inputs)
    handles = {physical, f"{physical}-id"}
    return [
        r
        for r in inventory.resources
        if r.type in ROLE_POLICIES and role.urn in r.depends_on and r.inputs.get("role") in handles
    ]


def users_of(inventory: Inventory, role: Resource) -> list[Resource]:
    """What acts with the role's permissions: whatever names the role (a cluster, a node group, an add-on, a
    release passing it to its service account), and the pods running as a service account bound to it (IRSA).
    Policy documents that merely mention the role's ARN are not users; nor is the ServiceAccount object."""
    users = [
        r
        for r in inventory.resources
        if role.urn in r.depends_on
        and not r.type.startswith("aws:iam/")
        and r.type != "kubernetes:core/v1:ServiceAccount"
    ]
    accounts = {
        (sa.inputs["metadata"].get("namespace"), sa.inputs["metadata"]["name"])
        for sa in inventory.of_type("kubernetes:core/v1:ServiceAccount")
        if role.urn in sa.depends_on
    }
    for owner in (r for r in inventory.resources if r.type in POD_OWNERS):
        pod = owner.inputs["spec"]["template"]["spec"]
        if (
            owner.inputs["metadata"].get("namespace"),
            pod.get("serviceAccountName"),
        ) in accounts and owner not in users:
            users.append(owner)
    return users


@pytest.mark.parametrize("stack", STACKS)
def test_role_policies_outlive_every_user_of_the_role(stack_inventories, stack):
    """user -> role -> policy: whatever acts with a role is created after its permissions and deleted before them."""
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    problems, pairs = [], 0
    for role in inventory.of_type(ROLE):
        policies, users = policies_of(inventory, role), users_of(inventory, role)
        assert policies, f"{role.name} has no policy"
        pairs += len(policies) * len(users)
        problems += unmet(plan, users, policies, f"it acts as {role.name}, which would lose this permission first")
    assert pairs >= 10
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("stack", STACKS)
def test_storage_classes_and_their_driver_outlive_the_volumes_that_use_them(stack_inventories, stack):
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    classes = {r.inputs["metadata"]["name"]: r for r in inventory.of_type(STORAGE_CLASS)}
    driver = one(inventory, "aws:eks/addon:Addon", "-ebs-csi")
    problems, users = [], 0
    for resource in inventory.resources:
        named = {
            v["storageClassName"]
            for v in walk(resource.inputs)
            if isinstance(v, dict) and isinstance(v.get("storageClassName"), str)
        }
        for name in named:
            users += 1
            assert name in classes, f"{resource.name} asks for StorageClass {name}, which the stack does not create"
            problems += unmet(
                plan,
                [resource],
                [classes[name], driver],
                "its volumes would be orphaned (no StorageClass or CSI driver to delete them)",
            )
    assert users >= 1
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("stack", STACKS)
def test_load_balancers_go_before_their_controller_and_the_network(stack_inventories, stack):
    """An Ingress (or LoadBalancer Service) is deleted while the controller still runs and can reach AWS,
    so its ALB, listeners and security group rules go before the subnets, NAT and VPC."""
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    makers = [r for r in inventory.of_type(INGRESS)]
    makers += [r for r in inventory.of_type(SERVICE) if (r.inputs.get("spec") or {}).get("type") == "LoadBalancer"]
    controller = next(r for r in inventory.of_type(RELEASE) if r.inputs.get("name") == "aws-load-balancer-controller")
    network = [
        r
        for r in inventory.resources
        if r.type
        in (
            "aws:ec2/subnet:Subnet",
            "aws:ec2/natGateway:NatGateway",
            "aws:ec2/routeTableAssociation:RouteTableAssociation",
        )
    ]
    assert makers and network
    problems = unmet(plan, makers, [controller], "the controller would be gone before it deletes the load balancer")
    problems += unmet(
        plan, [controller], network, "the controller needs its subnets and egress to delete load balancers"
    )
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("stack", STACKS)
def test_node_pools_go_before_karpenter_and_karpenter_before_the_network(stack_inventories, stack):
    """Karpenter terminates a pool's nodes when the pool is deleted: it must still run, with egress to EC2."""
    inventory = stack_inventories[stack]
    plan = DeployPlan(inventory)
    karpenter = next(r for r in inventory.of_type(RELEASE) if r.inputs.get("name") == "karpenter")
    pools = [
        r
        for r in inventory.resources
        if r.type.startswith(("kubernetes:karpenter.sh/", "kubernetes:karpenter.k8s.aws/"))
    ]
    egress = [
        r
        for r in inventory.resources
        if r.type in ("aws:ec2/natGateway:NatGateway", "aws:ec2/routeTableAssociation:RouteTableAssociation")
    ]
    assert len(pools) >= 4 and egress
    problems = unmet(plan, pools, [karpenter], "Karpenter would be gone before it terminates the pool's nodes")
    problems += unmet(plan, [karpenter], egress, "Karpenter needs egress to EC2 while it terminates nodes")
    assert problems == [], "\n".join(problems)


# -- the command -------------------------------------------------------------------------------------
ACCESS_ENTRY = "aws:eks/accessEntry:AccessEntry"
ACCESS_POLICY = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"
WITH_CI_ADMINS = {
    "ci": {"githubRepository": "acme/platform"},
    "cluster": {
        "deployRunnerCidrs": ["10.0.0.0/19"],
        "adminRoleArns": ["arn:aws:iam::123456789012:role/platform-admin"],
    },
}


@pytest.fixture(scope="module")
def staging_with_ci() -> Inventory:
    """Staging with the CI deploy role and one admin role: the deployer's access entries as CI has them."""
    return offline_stack("staging", **WITH_CI_ADMINS)


@pytest.mark.parametrize("stack", [*STACKS, "staging with CI"])
def test_the_deployers_cluster_access_outlives_every_kubernetes_object(
    stack_inventories, settings, staging_with_ci, stack
):
    """provider -> access entry and policy association: `pulumi destroy` deletes every Kubernetes object before
    anyone's cluster-admin access goes, so the deployer (the CI deploy role) is never Unauthorized mid-destroy."""
    if stack in stack_inventories:
        inventory, cluster = stack_inventories[stack], settings[stack].cluster
        expected = len(cluster.admin_role_arns) + (settings[stack].ci is not None)
    else:
        inventory, expected = staging_with_ci, 2
    plan = DeployPlan(inventory)
    (provider,) = inventory.of_type("pulumi:providers:kubernetes")
    associations = inventory.of_type(ACCESS_POLICY)
    access = associations + [e for e in inventory.of_type(ACCESS_ENTRY) if e.inputs["type"] == "STANDARD"]
    assert len(associations) == expected
    assert (
        unmet(
            plan, [provider], access, "on destroy that access could go while Kubernetes objects are still being deleted"
        )
        == []
    )


def test_the_plan_command_prints_both_orders_and_refuses_a_cycle(tmp_path, capsys):
    from infra.cli import main

    assert main(["plan", "--stack", "dev"]) == 0
    created = capsys.readouterr().out
    assert main(["plan", "--stack", "dev", "--destroy"]) == 0
    destroyed = capsys.readouterr().out
    assert created.startswith("stack dev: ") and "waits only for the waves before it" in created
    for text, first, last in (
        (created, "mlops-dev-net-vpc ", "mlops-dev-cluster-eks "),
        (destroyed, "mlops-dev-cluster-eks ", "mlops-dev-net-vpc "),
    ):
        assert text.index(first) < text.index(last)
    assert "[mlops:" not in created  # components create nothing and are left out

    cyclic = Inventory(
        project="p",
        stack="s",
        source="offline",
        resources=[
            Resource(
                urn="urn:x::a", type="t:m:T", name="a", parent=None, custom=True, inputs={}, depends_on=["urn:x::b"]
            ),
            Resource(
                urn="urn:x::b", type="t:m:T", name="b", parent=None, custom=True, inputs={}, depends_on=["urn:x::a"]
            ),
        ],
    )
    cyclic.write(tmp_path / "cyclic.json")
    assert main(["plan", "--inventory", str(tmp_path / "cyclic.json")]) == 2
    assert "error: dependency cycle: " in capsys.readouterr().err
