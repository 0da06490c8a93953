"""What a first real `pulumi up` and `pulumi destroy` of the cluster need (issue 11, items 2, 3, 7, 9, 10, 13).

Mocks accept anything, so each test reads the offline inventory for the property a real account
enforces: one access entry per principal, a path to a private API endpoint, permissions that
outlive their users on destroy, add-on settings named as upstream names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from components.cluster import Cluster
from infra.inventory import Inventory, Resource
from infra.settings import SettingsError, load_settings
from infra.upstream import chart_defaults, unknown_value_keys
from tests.conftest import declare
from tests.unit.builders import RUNNER_CIDR, TAGS, Parts, cluster_args, platform, program_inventory

UPSTREAM = Path(__file__).resolve().parents[2] / "components" / "upstream"
RELEASE = "kubernetes:helm.sh/v3:Release"
ADDON = "aws:eks/addon:Addon"
ACCESS_ENTRY = "aws:eks/accessEntry:AccessEntry"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ROLE = "aws:iam/role:Role"
GRANTS = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
PUBLIC = {"endpoint_public_access": True, "public_access_cidrs": ("203.0.113.0/24",), "deploy_runner_cidrs": ()}
"""ClusterArgs overrides of an allow-listed public API endpoint (builders.py's is private, with a runner range)."""
SHAPES = {
    "private": Parts(),
    "public": Parts(cluster=PUBLIC),
    "admins": Parts(
        cluster={"admin_role_arns": {"platform-admin": "arn:aws:iam::123456789012:role/platform-admin"}},
        addons={"replicas": 2},
    ),
}


@pytest.fixture(scope="module")
def compute() -> Inventory:
    return declare(lambda: platform())


@pytest.fixture(scope="module")
def full() -> Inventory:
    """Compute, monitoring, the tracking server and one CPU endpoint: every role the platform makes."""
    return declare(lambda: platform(Parts(monitoring={}, tracking={}, endpoints=[{}])))


def release(inventory: Inventory, suffix: str) -> Resource:
    (found,) = [r for r in inventory.of_type(RELEASE) if r.name.endswith(suffix)]
    return found


def addon(inventory: Inventory, name: str) -> Resource:
    (found,) = [r for r in inventory.of_type(ADDON) if r.inputs["addonName"] == name]
    return found


def grants_of(inventory: Inventory, role: Resource) -> list[Resource]:
    """The role's inline policies and attachments (components/identity.py names them after the role)."""
    return [
        g
        for g in inventory.resources
        if g.type in GRANTS and g.name.startswith(f"{role.name}-") and g.parent == role.parent
    ]


def role_name(inventory: Inventory, role: Resource) -> str:
    """The role's physical name, as its grants received it (`role.name` or `role.id`, `<name>-id` offline)."""
    (name,) = {g.inputs["role"].removesuffix("-id") for g in grants_of(inventory, role)}
    return name


def role_arn(inventory: Inventory, role: Resource) -> str:
    return f"arn:aws:iam::123456789012:role/{role_name(inventory, role)}"


def closure(inventory: Inventory, resource: Resource) -> set[str]:
    """Every URN `resource` depends on, directly or through others (what destroy deletes after it)."""
    seen: set[str] = set()
    stack = list(resource.depends_on)
    while stack:
        urn = stack.pop()
        if urn not in seen:
            seen.add(urn)
            stack.extend(inventory.by_urn(urn).depends_on)
    return seen


# -- item 2: one access entry per principal -----------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_principal_has_two_access_entries(shape):
    one_entry_per_principal(declare(lambda: platform(SHAPES[shape])))


def one_entry_per_principal(inventory: Inventory) -> None:
    roles = {role_arn(inventory, r): r for r in inventory.of_type(ROLE)}
    principals = [e.inputs["principalArn"] for e in inventory.of_type(ACCESS_ENTRY)]
    # EKS itself registers the role of every managed node group (EKS User Guide, "Create access entries")
    principals += [g.inputs["nodeRoleArn"] for g in inventory.of_type("aws:eks/nodeGroup:NodeGroup")]
    assert len(principals) == len(set(principals)), principals
    assert {p for p in principals if p in roles}  # the check compares real ARNs, not placeholders


def test_karpenter_nodes_have_their_own_role_entry_and_pass_role(compute):
    inventory = compute
    (karpenter_role,) = [r for r in inventory.of_type(ROLE) if r.name.endswith("-karpenter-node-role")]
    (entry,) = [e for e in inventory.of_type(ACCESS_ENTRY) if e.inputs["type"] == "EC2_LINUX"]
    assert entry.inputs["principalArn"] == role_arn(inventory, karpenter_role)
    for node_class in inventory.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        assert node_class.inputs["spec"]["role"] == role_name(inventory, karpenter_role)
        assert entry.urn in node_class.depends_on  # the entry outlives the nodes on destroy
    (controller_policy,) = [p for p in inventory.of_type(GRANTS[0]) if p.name.endswith("-karpenter-policy")]
    (pass_role,) = [
        s for s in json.loads(controller_policy.inputs["policy"])["Statement"] if s["Action"] == "iam:PassRole"
    ]
    assert pass_role["Resource"] == role_arn(inventory, karpenter_role)  # not the system node group's role


# -- item 3: the deploy runner reaches a private endpoint ---------------------------------------


def test_a_private_endpoint_admits_the_deploy_runner_on_443(compute):
    admits_the_runner(compute, [RUNNER_CIDR])


def admits_the_runner(inventory: Inventory, cidrs: list[str]) -> None:
    eks = inventory.of_type("aws:eks/cluster:Cluster")[0]
    assert eks.inputs["vpcConfig"]["endpointPublicAccess"] is False
    rules = inventory.of_type(INGRESS_RULE)
    assert [r.inputs["cidrIpv4"] for r in rules] == cidrs
    for rule in rules:
        assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == ("tcp", 443, 443)
        assert rule.inputs["securityGroupId"] == f"sg-{eks.inputs['name']}-cluster"  # the cluster security group
        assert eks.urn in rule.depends_on
    # nothing talks to the API before the runner may: the provider of every Kubernetes object waits for the rules
    (provider,) = inventory.of_type("pulumi:providers:kubernetes")
    assert {r.urn for r in rules} <= set(provider.depends_on)


def test_a_public_allow_listed_endpoint_needs_no_runner_rule():
    inventory = declare(lambda: Cluster("c", cluster_args(**PUBLIC)))
    assert inventory.of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]["endpointPublicAccess"] is True
    assert inventory.of_type(INGRESS_RULE) == []


def test_runner_security_groups_become_referenced_group_rules():
    inventory = declare(
        lambda: Cluster(
            "c",
            cluster_args(
                cluster_name="c1",
                subnet_ids=["subnet-1", "subnet-2"],
                deploy_runner_cidrs=(),
                deploy_runner_security_group_ids=("sg-0123456789abcdef0",),
            ),
        )
    )
    (rule,) = inventory.of_type(INGRESS_RULE)
    assert rule.inputs["referencedSecurityGroupId"] == "sg-0123456789abcdef0" and rule.inputs["fromPort"] == 443
    assert "cidrIpv4" not in rule.inputs


def test_a_private_cluster_without_a_runner_is_refused_before_anything_is_declared():
    with pytest.raises(ValueError, match="deploy_runner_cidrs or deploy_runner_security_group_ids: required"):
        cluster_args(deploy_runner_cidrs=(), deploy_runner_security_group_ids=())


PROD = {
    "profile": "prod",
    "budget": {"alertEmails": ["team@example.com"]},
    "tracking": {
        "certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    },
}


def problems(raw: dict, stack: str = "prod") -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(raw, stack=stack, region="us-east-1")
    return info.value.problems


@pytest.mark.parametrize("profile", ["staging", "prod"])
def test_settings_name_the_missing_runner_and_the_fix(profile):
    (problem,) = problems({**PROD, "profile": profile}, stack=profile)
    assert problem.startswith(
        "mlops-platform:cluster.deployRunnerCidrs: required when cluster.endpointPublicAccess is false"
    )
    assert "deployRunnerSecurityGroupIds" in problem and "first private subnet" in problem


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        (
            {"deployRunnerCidrs": ["0.0.0.0/0"]},
            'cluster.deployRunnerCidrs: got "0.0.0.0/0"; allowed: ranges inside 10.0.0.0/8',
        ),
        (
            {"deployRunnerCidrs": ["52.94.0.0/22"]},
            'cluster.deployRunnerCidrs: got "52.94.0.0/22"; allowed: ranges inside 10.0.0.0/8',
        ),
        (
            {"deployRunnerCidrs": ["10.0.0.0/33"]},
            'cluster.deployRunnerCidrs[0]: got "10.0.0.0/33"; not an IPv4 CIDR block',
        ),
        (
            {"deployRunnerSecurityGroupIds": ["sg-xyz"]},
            'cluster.deployRunnerSecurityGroupIds[0]: got "sg-xyz"; not a security group id',
        ),
        ({"deployRunnerCidrs": ["10.0.0.0/19", "10.0.0.0/19"]}, "cluster.deployRunnerCidrs: got"),
    ],
)
def test_bad_runner_settings_name_key_and_allowed_values(cluster, expected):
    found = problems({**PROD, "cluster": cluster})
    assert any(expected in p for p in found), found


def test_a_runner_security_group_alone_is_enough():
    settings = load_settings(
        {**PROD, "cluster": {"deployRunnerSecurityGroupIds": ["sg-0123456789abcdef0"]}},
        stack="prod",
        region="us-east-1",
    )
    assert settings.cluster.deploy_runner_security_group_ids == ["sg-0123456789abcdef0"]


# -- item 7: permissions outlive their users ------------------------------------------------------


def role_users(inventory: Inventory, role: Resource) -> list[Resource]:
    """Resources that act with the role: whatever names its ARN (or, for an EC2NodeClass, its name),
    and the pods of a service account annotated with it."""
    arn, name = role_arn(inventory, role), role_name(inventory, role)
    users = []
    for resource in inventory.resources:
        if resource.type in GRANTS or not resource.custom:
            continue
        text = json.dumps(resource.inputs)
        if resource.type.endswith(":ServiceAccount"):
            if arn in text:
                users += pods_of(inventory, resource)
        elif arn in text or (resource.type.endswith(":EC2NodeClass") and resource.inputs["spec"]["role"] == name):
            users.append(resource)
    return users


def pods_of(inventory: Inventory, account: Resource) -> list[Resource]:
    namespace, name = account.inputs["metadata"]["namespace"], account.inputs["metadata"]["name"]
    workloads = []
    for resource in inventory.resources:
        if resource.type in ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:Job"):
            pod = resource.inputs["spec"]["template"]["spec"]
            if resource.inputs["metadata"]["namespace"] == namespace and pod.get("serviceAccountName") == name:
                workloads.append(resource)
    assert workloads, f"no pod uses {namespace}/{name}"
    return workloads


def test_every_user_of_a_role_depends_on_its_policies(full):
    inventory = full
    checked = 0
    for role in inventory.of_type(ROLE):
        arn, grants = role_arn(inventory, role), [g.urn for g in grants_of(inventory, role)]
        assert grants, f"{role.name} has no policy"
        for user in role_users(inventory, role):
            missing = set(grants) - closure(inventory, user)
            assert not missing, f"{user.type} {user.name} does not depend on {sorted(missing)} of {role.name} ({arn})"
            checked += 1
    # cluster, system nodes, Karpenter release, its node classes and access entry, LBC, EBS CSI, tracking and endpoint
    # pods
    assert checked >= 12


def test_the_vpc_cni_outlives_the_nodes_and_depends_on_the_node_role(compute):
    inventory = compute
    cni = addon(inventory, "vpc-cni")
    (group,) = inventory.of_type("aws:eks/nodeGroup:NodeGroup")
    assert cni.urn in group.depends_on
    cni_policy = [
        g
        for g in inventory.of_type(GRANTS[1])
        if g.inputs["policyArn"].endswith("/AmazonEKS_CNI_Policy") and "-cluster-node-role" in g.name
    ]
    assert len(cni_policy) == 1 and cni_policy[0].urn in cni.depends_on


# -- item 9: metrics-server ----------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 2])
def test_metrics_server_is_pinned_on_system_nodes(replicas):
    metrics_server_on_system_nodes(declare(lambda: platform(Parts(addons={"replicas": replicas}))), replicas)


def metrics_server_on_system_nodes(inventory: Inventory, replicas: int) -> None:
    from components import versions

    chart = release(inventory, "-metrics-server")
    assert (chart.inputs["chart"], chart.inputs["version"]) == ("metrics-server", versions.METRICS_SERVER.version)
    assert chart.inputs["repositoryOpts"]["repo"] == "https://kubernetes-sigs.github.io/metrics-server/"
    assert chart.inputs["namespace"] == "kube-system"
    values = chart.inputs["values"]
    assert values["nodeSelector"] == {"mlops.platform/pool": "system"} and values["replicas"] == replicas
    assert ("podDisruptionBudget" in values) == (replicas > 1)
    # its keys are checked against the chart's committed values.yaml with every other release
    assert unknown_value_keys(values, chart_defaults("metrics-server", versions.METRICS_SERVER.version)) == []


def test_cpu_autoscaled_endpoints_have_a_metrics_api(full):
    inventory = full
    hpas = inventory.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert any(m["type"] == "Resource" for h in hpas for m in h.inputs["spec"]["metrics"])
    assert release(inventory, "-metrics-server")


# -- item 10: NetworkPolicies are enforced ---------------------------------------------------------


def test_vpc_cni_enforces_network_policies(compute):
    cni = addon(compute, "vpc-cni")
    # a string, as the add-on's configuration schema wants it
    assert json.loads(cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert cni.inputs["resolveConflictsOnCreate"] == "OVERWRITE"  # EKS installed it self-managed with the cluster


# -- item 13: the `stack` tag reaches what the budget counts ---------------------------------------

EBS_TAGS_SCHEMA = json.loads((UPSTREAM / "eks-addons" / "aws-ebs-csi-driver.configuration-schema.json").read_text())


def test_stack_tag_reaches_instances_volumes_and_load_balancers(compute):
    stack_tag_reaches_everything(compute, TAGS["stack"])


def stack_tag_reaches_everything(inventory: Inventory, stack: str) -> None:
    (template,) = inventory.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    specs = {s["resourceType"]: s["tags"] for s in template.inputs["tagSpecifications"]}
    assert set(specs) == {"instance", "volume", "network-interface"}
    assert all(tags["stack"] == stack for tags in specs.values())
    for node_class in inventory.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        assert node_class.inputs["spec"]["tags"]["stack"] == stack
    lbc = release(inventory, "-aws-load-balancer-controller").inputs["values"]
    assert lbc["defaultTags"]["stack"] == stack
    ebs = json.loads(addon(inventory, "aws-ebs-csi-driver").inputs["configurationValues"])
    assert ebs["controller"]["extraVolumeTags"]["stack"] == stack
    jsonschema.validate(ebs, EBS_TAGS_SCHEMA)


def test_the_ebs_schema_copy_rejects_what_the_add_on_rejects():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"controller": {"extraVolumeTags": {"owner": "ml platform #1"}}}, EBS_TAGS_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"controller": {"extraTags": {}}}, EBS_TAGS_SCHEMA)


# -- Karpenter's reserved tag keys (the rest of the CRDs: tests/unit/test_upstream_contracts.py) ----


def restricted_tag_rules(schema: dict) -> tuple[set[str], set[str]]:
    """(keys, prefixes) the EC2NodeClass CRD's CEL rules on `spec.tags` forbid."""
    import re

    rules = [v["rule"] for v in schema["properties"]["spec"]["properties"]["tags"]["x-kubernetes-validations"]]
    keys = {m for r in rules for m in re.findall(r"k\s*!=\s*'([^']+)'", r)} - {""}
    prefixes = set(re.findall(r"!k\.startsWith\('([^']+)'\)", " ".join(rules)))
    assert keys and prefixes, rules
    return keys, prefixes


def test_node_class_tags_avoid_the_keys_karpenter_reserves(compute):
    """The CRD's CEL rules (which JSON-schema validation skips) refuse tags Karpenter sets itself."""
    crd = yaml.safe_load((UPSTREAM / "karpenter-v1.11.1" / "karpenter.k8s.aws_ec2nodeclasses.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    keys, prefixes = restricted_tag_rules(version["schema"]["openAPIV3Schema"])
    assert "eks:eks-cluster-name" in keys and "kubernetes.io/cluster" in prefixes
    node_classes = compute.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
    assert len(node_classes) == 2
    for resource in node_classes:
        assert not [k for k in resource.inputs["spec"]["tags"] if k in keys or k.startswith(tuple(prefixes))]


def test_runner_rules_are_named_after_their_source_so_reordering_replaces_nothing():
    def names(cidrs):
        inventory = declare(
            lambda: Cluster("c", cluster_args(cluster_name="c1", subnet_ids=["subnet-1"], deploy_runner_cidrs=cidrs))
        )
        return {r.name: r.inputs["cidrIpv4"] for r in inventory.of_type(INGRESS_RULE)}

    assert (
        names(("10.0.0.0/19", "10.8.0.0/16"))
        == names(("10.8.0.0/16", "10.0.0.0/19"))
        == {"c-deploy-runner-10.0.0.0-19": "10.0.0.0/19", "c-deploy-runner-10.8.0.0-16": "10.8.0.0/16"}
    )


# -- admin access entries are named after the role, not its position ------------------------------

ACCESS_POLICY = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"
ADMINS = ["arn:aws:iam::123456789012:role/platform-admin", "arn:aws:iam::210987654321:role/team/ops/Ml.Ops+On-call"]
CI_DEPLOY_ROLE = "arn:aws:iam::123456789012:role/mlops-staging-ci-deploy"


def admin_access(admins: list[str]) -> dict[str, str]:
    """Name -> principal of the cluster-admin access entries and policy associations of a staging stack with CI
    (the whole program: it keys `cluster.adminRoleArns` and adds the CI deploy role)."""
    inventory = program_inventory(
        "staging",
        {
            "profile": "staging",
            "budget": {"alertEmails": ["team@example.com"]},
            "ci": {"githubRepository": "acme/platform"},
            "cluster": {"deployRunnerCidrs": ["10.0.0.0/19"], "adminRoleArns": admins},
        },
    )
    return {
        r.name: r.inputs["principalArn"]
        for r in inventory.resources
        if r.type == ACCESS_POLICY or (r.type == ACCESS_ENTRY and r.inputs["type"] == "STANDARD")
    }


def test_admin_access_is_named_after_the_role_so_adding_or_reordering_replaces_nothing():
    """A renamed entry is replaced, and Pulumi creates the new one while the old one for the same
    principal still exists: EKS answers 409 ResourceInUseException. So no name may depend on a position."""
    prefix = "mlops-staging-cluster-admin"
    expected = {
        f"{prefix}-{key}{suffix}": arn
        for key, arn in [("platform-admin", ADMINS[0]), ("Ml.Ops-On-call", ADMINS[1]), ("ci-deploy", CI_DEPLOY_ROLE)]
        for suffix in ("", "-policy")
    }
    assert admin_access(ADMINS[::-1]) == expected
    # removing the first role (or adding one in front) renames nothing else, the CI deploy role included
    assert admin_access(ADMINS[1:]) == {k: v for k, v in expected.items() if v != ADMINS[0]}


@pytest.mark.parametrize(
    ("cluster", "ci", "expected"),
    [
        (
            {"adminRoleArns": ["arn:aws:iam::111111111111:role/a/Admin", "arn:aws:iam::222222222222:role/b/Admin"]},
            None,
            'got "arn:aws:iam::111111111111:role/a/Admin" and "arn:aws:iam::222222222222:role/b/Admin"; both name '
            'their access entry "Admin"',
        ),
        (
            {"adminRoleArns": ["arn:aws:iam::111111111111:role/ml+ops", "arn:aws:iam::111111111111:role/ml=ops"]},
            None,
            'both name their access entry "ml-ops"',
        ),
        ({"adminRoleArns": [ADMINS[0], ADMINS[0]]}, None, f'got "{ADMINS[0]}" twice'),
        (
            {"adminRoleArns": ["arn:aws:iam::123456789012:role/ci-deploy"]},
            {"githubRepository": "acme/platform"},
            'got "arn:aws:iam::123456789012:role/ci-deploy"; its access entry would be named "ci-deploy", the name '
            "of the CI deploy role's",
        ),
    ],
)
def test_admin_roles_whose_entries_would_share_a_name_are_refused(cluster, ci, expected):
    raw = {**PROD, "cluster": {"deployRunnerCidrs": ["10.0.0.0/19"], **cluster}, **({"ci": ci} if ci else {})}
    (problem,) = problems(raw)
    assert problem.startswith("mlops-platform:cluster.adminRoleArns: ") and expected in problem, problem


def test_an_admin_key_that_cannot_name_a_resource_is_refused():
    with pytest.raises(ValueError, match=r"admin_role_arns: keys \['team/admin'\] must be 1-64 letters"):
        cluster_args(admin_role_arns={"team/admin": "arn:aws:iam::123456789012:role/team/admin"})
