"""Controller policies compared with upstream's, statement by statement (issue 11, items 1 and 13).

The references are the committed copies under components/upstream/ (see its README for where
each comes from): the AWS Load Balancer Controller's `iam_policy.json` of v2.14.0, verbatim, and
the controller policies of Karpenter v1.11.1's getting-started CloudFormation template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.node_pools import controller_policy
from infra.inventory import Inventory
from tests.conftest import declare, policy
from tests.unit.builders import PREFIX, platform
from tests.unit.test_cluster_deploy import role_arn

UPSTREAM = Path(__file__).resolve().parents[2] / "components" / "upstream"
LBC_UPSTREAM = UPSTREAM / "aws-load-balancer-controller-v2.14.0" / "iam_policy.json"
KARPENTER_UPSTREAM = UPSTREAM / "karpenter-v1.11.1" / "controller-policy.json"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def role_policy(inventory, suffix: str) -> dict:
    (found,) = [r for r in inventory.of_type(ROLE_POLICY) if r.name.endswith(suffix)]
    return policy(found)


@pytest.fixture(scope="module")
def compute() -> Inventory:
    """The cluster, its add-ons and node pools from tests/unit/builders.py's args (the shipped stacks run the
    same checks in tests/stacks/test_stack_components.py)."""
    return declare(lambda: platform())


def karpenter_upstream(**values: str) -> list[dict]:
    """The template's statements with its `${...}` placeholders filled by plain text replacement."""
    text = KARPENTER_UPSTREAM.read_text()
    for placeholder, value in values.items():
        text = text.replace("${" + placeholder + "}", value)
    assert "${" not in text, "a placeholder the test does not know"
    return [statement for statements in json.loads(text).values() for statement in statements]


# -- AWS Load Balancer Controller ---------------------------------------------------------------


def test_load_balancer_controller_policy_is_upstreams_statement_by_statement(compute):
    lbc_policy_is_upstreams(compute)


def lbc_policy_is_upstreams(inventory: Inventory) -> None:
    ours = role_policy(inventory, "-lbc-policy")
    upstream = json.loads(LBC_UPSTREAM.read_text())
    assert ours["Version"] == upstream["Version"]
    assert len(ours["Statement"]) == len(upstream["Statement"]) == 16
    for index, (mine, theirs) in enumerate(zip(ours["Statement"], upstream["Statement"], strict=True)):
        assert mine == theirs, f"statement {index} differs from upstream"


def test_load_balancer_controller_may_open_the_cluster_security_group(compute):
    """The ALB-to-pod rule goes into the cluster security group, which the controller did not tag."""
    statements = role_policy(compute, "-lbc-policy")["Statement"]
    unconditioned = [s for s in statements if "Condition" not in s and s["Resource"] == "*"]
    actions = {a for s in unconditioned for a in s["Action"]}
    assert {"ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"} <= actions
    # deleting a security group still needs the controller's own tag
    delete = next(s for s in statements if "ec2:DeleteSecurityGroup" in s["Action"])
    assert delete["Condition"] == {"Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}}


def test_load_balancer_controller_may_create_and_tag_listeners_and_rules(compute):
    statements = role_policy(compute, "-lbc-policy")["Statement"]

    def allowed(action: str, resource: str) -> bool:
        from fnmatch import fnmatchcase

        for s in statements:
            resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            if action in s["Action"] and "Condition" not in s and any(fnmatchcase(resource, r) for r in resources):
                return True
        return False

    alb = "app/k8s-mlopsdev/50dc6c495c0c9188/f2f7dc8efc522ab2"
    listener = f"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/{alb}"
    rule = f"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/{alb}/9683b2d02a6cabee"
    for action in (
        "elasticloadbalancing:CreateListener",
        "elasticloadbalancing:CreateRule",
        "elasticloadbalancing:ModifyListener",
    ):
        assert allowed(action, listener), action
    assert allowed("elasticloadbalancing:AddTags", listener) and allowed("elasticloadbalancing:AddTags", rule)


# -- Karpenter ----------------------------------------------------------------------------------


def test_karpenter_policy_is_upstreams_with_placeholders_filled():
    ours = json.loads(
        controller_policy(
            cluster_name="c1",
            region="eu-west-1",
            account="111122223333",
            partition="aws",
            queue_arn="arn:aws:sqs:eu-west-1:111122223333:q",
            node_role_arn="arn:aws:iam::111122223333:role/nodes",
        )
    )["Statement"]
    upstream = karpenter_upstream(
        ClusterName="c1",
        **{
            "AWS::Region": "eu-west-1",
            "AWS::AccountId": "111122223333",
            "AWS::Partition": "aws",
            "KarpenterInterruptionQueue.Arn": "arn:aws:sqs:eu-west-1:111122223333:q",
            "KarpenterNodeRole.Arn": "arn:aws:iam::111122223333:role/nodes",
        },
    )
    assert [s["Sid"] for s in ours] == [s["Sid"] for s in upstream]
    for mine, theirs in zip(ours, upstream, strict=True):
        assert mine == theirs, mine["Sid"]


def test_deployed_karpenter_policy_is_upstreams_for_this_cluster(compute):
    karpenter_policy_is_upstreams(compute, PREFIX)


def karpenter_policy_is_upstreams(inventory: Inventory, cluster_name: str) -> None:
    ours = role_policy(inventory, "-karpenter-policy")["Statement"]
    (queue_arn,) = {t.inputs["arn"] for t in inventory.of_type("aws:cloudwatch/eventTarget:EventTarget")}  # the queue's
    (node_role,) = [r for r in inventory.of_type("aws:iam/role:Role") if r.name.endswith("-karpenter-node-role")]
    upstream = karpenter_upstream(
        ClusterName=cluster_name,
        **{
            "AWS::Region": "us-east-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "KarpenterInterruptionQueue.Arn": queue_arn,
            "KarpenterNodeRole.Arn": role_arn(inventory, node_role),
        },
    )
    assert ours == upstream
    # one inline policy must stay within IAM's 10,240 characters (whitespace not counted)
    assert len(json.dumps({"Version": "2012-10-17", "Statement": ours}, separators=(",", ":"))) < 10240


def test_instance_profiles_require_this_clusters_tags_as_upstream():
    statements = {
        s["Sid"]: s
        for s in json.loads(
            controller_policy(
                cluster_name="c1",
                region="us-east-1",
                account="123456789012",
                partition="aws",
                queue_arn="q",
                node_role_arn="r",
            )
        )["Statement"]
    }
    owned_now = {
        "aws:ResourceTag/kubernetes.io/cluster/c1": "owned",
        "aws:ResourceTag/topology.kubernetes.io/region": "us-east-1",
    }
    owned_after = {
        "aws:RequestTag/kubernetes.io/cluster/c1": "owned",
        "aws:RequestTag/eks:eks-cluster-name": "c1",
        "aws:RequestTag/topology.kubernetes.io/region": "us-east-1",
    }

    create = statements["AllowScopedInstanceProfileCreationActions"]
    assert create["Action"] == ["iam:CreateInstanceProfile"]
    assert create["Condition"] == {
        "StringEquals": owned_after,
        "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
    }

    tag = statements["AllowScopedInstanceProfileTagActions"]
    assert tag["Action"] == ["iam:TagInstanceProfile"]  # only profiles that are already this cluster's
    assert tag["Condition"]["StringEquals"] == {**owned_now, **owned_after}
    assert tag["Condition"]["StringLike"] == {
        "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
        "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*",
    }

    change = statements["AllowScopedInstanceProfileActions"]
    assert set(change["Action"]) == {
        "iam:AddRoleToInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
    }
    assert change["Condition"] == {
        "StringEquals": owned_now,
        "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"},
    }
    # no other statement grants instance-profile writes
    writes = {
        "iam:CreateInstanceProfile",
        "iam:TagInstanceProfile",
        "iam:AddRoleToInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
    }
    granting = {
        sid
        for sid, s in statements.items()
        if writes & set(s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert granting == {
        "AllowScopedInstanceProfileCreationActions",
        "AllowScopedInstanceProfileTagActions",
        "AllowScopedInstanceProfileActions",
    }


def test_an_unknown_placeholder_is_refused(tmp_path, monkeypatch):
    import components.node_pools as node_pools

    broken = tmp_path / "policy.json"
    broken.write_text(
        json.dumps({"P": [{"Sid": "S", "Effect": "Allow", "Action": "x:Y", "Resource": "${AWS::NewThing}"}]})
    )
    monkeypatch.setattr(node_pools, "CONTROLLER_POLICY", broken)
    with pytest.raises(ValueError, match=r"unknown placeholder.*AWS::NewThing"):
        controller_policy(cluster_name="c", region="r", account="a", partition="aws", queue_arn="q", node_role_arn="n")


def test_interruption_rules_are_upstreams():
    from components.node_pools import INTERRUPTION_EVENTS

    assert {pattern["detail-type"][0] for pattern in INTERRUPTION_EVENTS.values()} == {
        "AWS Health Event",
        "EC2 Spot Instance Interruption Warning",
        "EC2 Instance Rebalance Recommendation",
        "EC2 Instance State-change Notification",
        "EC2 Capacity Reservation Instance Interruption Warning",
    }
