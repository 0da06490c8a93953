"""Workload identity: IAM roles that exactly one Kubernetes service account can assume (IRSA).

Why IRSA rather than EKS Pod Identity: the binding of a role to a service account lives in
the role's own trust policy (`sub = system:serviceaccount:<ns>:<sa>`), so "this role trusts
only its own service account" is a fact a reviewer and the offline checks can read from the
inventory, and nothing else in the account can re-point the role. It also needs no agent
DaemonSet. Pod Identity is the simpler choice for teams that prefer it; the helper below is
the single place to change.

Every role comes back as a `RoleWithPolicies`: consumers depend on its `ready` list (the role
and its policies), so a first `up` grants permissions before anything uses them and
`pulumi destroy` removes them only after every user is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class OidcIdentity:
    """The cluster's OIDC provider, as workload roles need it."""

    provider_arn: pulumi.Output[str]
    issuer_url: pulumi.Output[str]


def web_identity_trust(provider_arn: str, string_equals: dict[str, object]) -> str:
    """A role only tokens of one OIDC provider can assume, and only with these exact claims
    (the cluster's service accounts here, GitHub's workflows in components/ci_access.py)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {"StringEquals": string_equals},
                }
            ],
        }
    )


def trust_policy(provider_arn: str, issuer_url: str, namespace: str, service_account: str) -> str:
    issuer = issuer_url.removeprefix("https://")
    return web_identity_trust(
        provider_arn,
        {
            f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
            f"{issuer}:aud": "sts.amazonaws.com",
        },
    )


@dataclass(frozen=True)
class RoleWithPolicies:
    """An IAM role together with the policies that give it its permissions.

    IAM attachments and inline policies are resources of their own: nothing depends on them
    unless told to. A consumer that depends only on the role can be created before its
    permissions exist (first calls fail with AccessDenied) and, worse, `pulumi destroy` may
    delete the permissions first, while the consumer (a controller cleaning up ALBs, ENIs or
    instances) still needs them. Consumers therefore depend on `ready`.
    """

    role: aws.iam.Role
    policies: tuple[pulumi.Resource, ...]
    """The role's inline policies and managed-policy attachments."""

    @property
    def arn(self) -> pulumi.Output[str]:
        return self.role.arn

    @property
    def name(self) -> pulumi.Output[str]:
        return self.role.name

    @property
    def ready(self) -> list[pulumi.Resource]:
        """Put these in a consumer's `depends_on`: created after the permissions, deleted before them."""
        return [self.role, *self.policies]


def _grant(
    name: str,
    role: aws.iam.Role,
    policy: pulumi.Input[str] | None,
    managed_policy_arns: Sequence[str],
    parent: pulumi.Resource,
) -> RoleWithPolicies:
    opts = pulumi.ResourceOptions(parent=parent)
    policies: list[pulumi.Resource] = []
    if policy is not None:
        policies.append(aws.iam.RolePolicy(f"{name}-policy", role=role.id, policy=policy, opts=opts))
    for index, arn in enumerate(managed_policy_arns):
        policies.append(
            aws.iam.RolePolicyAttachment(f"{name}-managed-{index}", role=role.name, policy_arn=arn, opts=opts)
        )
    return RoleWithPolicies(role=role, policies=tuple(policies))


def workload_role(
    name: str,
    *,
    identity: OidcIdentity,
    namespace: str,
    service_account: str,
    policy: pulumi.Input[str] | None = None,
    managed_policy_arns: Sequence[str] = (),
    parent: pulumi.Resource,
) -> RoleWithPolicies:
    """A role for one service account, with an inline least-privilege policy and/or AWS managed policies."""
    role = aws.iam.Role(
        name,
        description=f"workload role of {namespace}/{service_account}",
        assume_role_policy=pulumi.Output.all(identity.provider_arn, identity.issuer_url).apply(
            lambda args: trust_policy(args[0], args[1], namespace, service_account)
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return _grant(name, role, policy, managed_policy_arns, parent)


def service_role(
    name: str, *, service: str, managed_policy_arns: Sequence[str], parent: pulumi.Resource
) -> RoleWithPolicies:
    """A role an AWS service (EKS, EC2) assumes, with AWS managed policies attached."""
    role = aws.iam.Role(
        name,
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
            }
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return _grant(name, role, None, managed_policy_arns, parent)
