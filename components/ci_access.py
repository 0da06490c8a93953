"""The AWS roles a GitHub Actions runner of one repository assumes, without stored keys.

GitHub issues each job a short-lived OIDC token; AWS trusts it through an IAM OIDC provider
for `token.actions.githubusercontent.com` and exchanges it for a role session. Whether a job
gets a role is decided entirely by the role's trust policy, so that policy is the whole of the
security here:

- `aud` must be `sts.amazonaws.com` (what `aws-actions/configure-aws-credentials` asks for);
- `sub` must be one exact string (`StringEquals`, never `StringLike`), naming the repository
  and, for the deploy role, the GitHub environment: `repo:<owner>/<name>:environment:<env>`.
  A job gets that `sub` only when it runs in that environment, so the environment's
  protection rules (required reviewers, the main branch only) gate every use of the role.
  Pull-request jobs get `repo:<owner>/<name>:pull_request` and may assume only the preview
  role, which can read and change nothing else.

Settings refuse wildcards and a missing repository before anything is declared
(`infra/settings.py`, `CiSettings`), and `trust_policy` refuses them again, so no code path
creates a role that trusts every repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_aws as aws

from components.identity import RoleWithPolicies, web_identity_trust

TOKEN = "mlops:ci:CiAccess"
GITHUB_ISSUER = "token.actions.githubusercontent.com"
AUDIENCE = "sts.amazonaws.com"
"""The audience `aws-actions/configure-aws-credentials` requests by default."""

PREVIEW_READS: dict[str, tuple[str, ...]] = {
    "aws:index/getAvailabilityZones:getAvailabilityZones": ("ec2:DescribeAvailabilityZones",),
    "aws:ecr/getImage:getImage": ("ecr:DescribeImages",),
    "aws:index/getCallerIdentity:getCallerIdentity": (),  # sts:GetCallerIdentity needs no permission
    "aws:index/getRegion:getRegion": (),  # answered from the provider's configuration
    "aws:index/getPartition:getPartition": (),  # likewise
}
"""Every data source the program reads (invoke token -> the AWS API actions behind it). `pulumi preview`
runs the program and these reads; it computes every diff from state, so it writes nothing. A test fails
when the program starts reading something not listed here."""


def deploy_subjects(repository: str, environments: Sequence[str]) -> list[str]:
    """The `sub` claims of jobs running in these GitHub environments of `repository`."""
    return [f"repo:{repository}:environment:{environment}" for environment in environments]


def preview_subject(repository: str) -> str:
    """The `sub` claim of a job triggered by a pull request (no environment) in `repository`."""
    return f"repo:{repository}:pull_request"


def trust_policy(provider_arn: str, subjects: Sequence[str]) -> str:
    """Only tokens from GitHub for STS, whose `sub` is exactly one of `subjects`."""
    if not subjects or any("*" in s or "?" in s for s in subjects):
        raise ValueError(
            f"refusing a trust policy for subjects {list(subjects)}: name each repository and environment exactly"
        )
    return web_identity_trust(provider_arn, {f"{GITHUB_ISSUER}:aud": AUDIENCE, f"{GITHUB_ISSUER}:sub": list(subjects)})


def preview_policy(
    *,
    partition: str,
    region: str,
    account: str,
    registry_namespace: str,
    state_bucket: str | None,
    secrets_key_arn: str | None,
) -> str:
    """Read-only: the data sources the program reads, the stack's own image digests, and the state.

    Not AWS's `ReadOnlyAccess`: that one reads every object in every bucket and every table, and a
    pull request's workflow can run any code with this role (a branch can change the workflow)."""
    statements: list[dict[str, Any]] = [
        {"Sid": "ProgramReads", "Effect": "Allow", "Action": ["ec2:DescribeAvailabilityZones"], "Resource": "*"},
        {
            "Sid": "StackImageDigests",
            "Effect": "Allow",
            "Action": ["ecr:DescribeImages"],
            "Resource": f"arn:{partition}:ecr:{region}:{account}:repository/{registry_namespace}/*",
        },
    ]
    if state_bucket:
        statements.append(
            {
                "Sid": "StateList",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:{partition}:s3:::{state_bucket}",
            }
        )
        statements.append(
            {
                "Sid": "StateRead",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"arn:{partition}:s3:::{state_bucket}/.pulumi/*",
            }
        )
    if secrets_key_arn:
        # Decrypt is a "Write" in IAM's access levels, but changes nothing: preview must read the stack's secret config.
        statements.append(
            {"Sid": "SecretConfig", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": secrets_key_arn}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@dataclass(frozen=True)
class CiAccessArgs:
    name_prefix: str
    """Roles are named `<prefix>-ci-deploy` and `<prefix>-ci-preview`, so their ARNs are known before the first run."""
    repository: str
    deploy_environments: tuple[str, ...]
    preview_role: bool
    oidc_provider_arn: str | None
    """An existing provider for GitHub's issuer (one per account); None creates it."""
    deploy_policy_arns: tuple[str, ...]
    state_bucket: str | None
    secrets_key_arn: str | None
    max_session_seconds: int


class CiAccess(pulumi.ComponentResource):
    oidc_provider_arn: pulumi.Output[str]
    deploy: RoleWithPolicies
    preview: RoleWithPolicies | None

    def __init__(self, name: str, args: CiAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.oidc_provider_arn:
            self.oidc_provider_arn = pulumi.Output.from_input(args.oidc_provider_arn)
        else:
            provider = aws.iam.OpenIdConnectProvider(
                f"{name}-github",
                url=f"https://{GITHUB_ISSUER}",
                client_id_lists=[AUDIENCE],
                # no thumbprints: IAM validates GitHub's certificate against its own trusted CAs
                opts=child,
            )
            self.oidc_provider_arn = provider.arn
        self.deploy = self._role(
            f"{name}-deploy",
            f"{args.name_prefix}-ci-deploy",
            args,
            deploy_subjects(args.repository, args.deploy_environments),
            managed=args.deploy_policy_arns,
        )
        self.preview = None
        if args.preview_role:
            self.preview = self._role(
                f"{name}-preview",
                f"{args.name_prefix}-ci-preview",
                args,
                [preview_subject(args.repository)],
                inline=self._preview_policy(args),
            )
        self.register_outputs(
            {
                "oidc_provider_arn": self.oidc_provider_arn,
                "deploy_role_arn": self.deploy.arn,
                "preview_role_arn": self.preview.arn if self.preview else None,
            }
        )

    def _role(
        self,
        name: str,
        role_name: str,
        args: CiAccessArgs,
        subjects: list[str],
        *,
        managed: Sequence[str] = (),
        inline: pulumi.Input[str] | None = None,
    ) -> RoleWithPolicies:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            name,
            name=role_name,
            description=f"GitHub Actions of {args.repository}: {', '.join(subjects)}",
            assume_role_policy=self.oidc_provider_arn.apply(lambda arn: trust_policy(arn, subjects)),
            max_session_duration=args.max_session_seconds,
            opts=child,
        )
        policies: list[pulumi.Resource] = [
            aws.iam.RolePolicyAttachment(f"{name}-managed-{index}", role=role.name, policy_arn=arn, opts=child)
            for index, arn in enumerate(managed)
        ]
        if inline is not None:
            policies.append(aws.iam.RolePolicy(f"{name}-policy", role=role.id, policy=inline, opts=child))
        return RoleWithPolicies(role=role, policies=tuple(policies))

    def _preview_policy(self, args: CiAccessArgs) -> pulumi.Output[str]:
        caller = aws.get_caller_identity(opts=pulumi.InvokeOptions(parent=self))
        partition = aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        return pulumi.Output.from_input(
            preview_policy(
                partition=partition,
                region=region,
                account=caller.account_id,
                registry_namespace=args.name_prefix,
                state_bucket=args.state_bucket,
                secrets_key_arn=args.secrets_key_arn,
            )
        )
