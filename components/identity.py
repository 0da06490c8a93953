"""Workload identity: IAM roles that exactly one Kubernetes service account can assume (IRSA).

Why IRSA rather than EKS Pod Identity: the binding of a role to a service account lives in
the role's own trust policy (`sub = system:serviceaccount:<ns>:<sa>`), so "this role trusts
only its own service account" is a fact a reviewer and the offline checks can read from the
inventory, and nothing else in the account can re-point the role. It also needs no agent
DaemonSet. Pod Identity is the simpler choice for teams that prefer it; the helper below is
the single place to change.
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


def trust_policy(provider_arn: str, issuer_url: str, namespace: str, service_account: str) -> str:
    issuer = issuer_url.removeprefix("https://")
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                            f"{issuer}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def workload_role(
    name: str,
    *,
    identity: OidcIdentity,
    namespace: str,
    service_account: str,
    policy: pulumi.Input[str] | None = None,
    managed_policy_arns: Sequence[str] = (),
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """A role for one service account, with an inline least-privilege policy and/or AWS managed policies."""
    role = aws.iam.Role(
        name,
        description=f"workload role of {namespace}/{service_account}",
        assume_role_policy=pulumi.Output.all(identity.provider_arn, identity.issuer_url).apply(
            lambda args: trust_policy(args[0], args[1], namespace, service_account)
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    if policy is not None:
        aws.iam.RolePolicy(f"{name}-policy", role=role.id, policy=policy, opts=pulumi.ResourceOptions(parent=parent))
    for index, arn in enumerate(managed_policy_arns):
        aws.iam.RolePolicyAttachment(f"{name}-managed-{index}", role=role.name, policy_arn=arn, opts=pulumi.ResourceOptions(parent=parent))
    return role


def service_role(name: str, *, service: str, managed_policy_arns: Sequence[str], parent: pulumi.Resource) -> aws.iam.Role:
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
    for index, arn in enumerate(managed_policy_arns):
        aws.iam.RolePolicyAttachment(f"{name}-managed-{index}", role=role.name, policy_arn=arn, opts=pulumi.ResourceOptions(parent=parent))
    return role
