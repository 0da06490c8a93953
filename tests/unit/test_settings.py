"""Every validation rule of the stack settings, one failing case each, plus the happy paths."""

from __future__ import annotations

import copy

import pytest

from infra.profiles import PROFILES, deep_merge, profile_defaults
from infra.settings import PROD_INVARIANTS, SettingsError, load_settings
from infra.stackfile import load_stack_config, stack_names

VALID_DEV = {
    "profile": "dev",
    "budget": {"alertEmails": ["team@example.com"]},
    "cluster": {"publicAccessCidrs": ["203.0.113.0/24"]},
}
CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
VALID_PROD = {
    "profile": "prod",
    "budget": {"alertEmails": ["team@example.com"]},
    "cluster": {"deployRunnerCidrs": ["10.0.0.0/19"]},
    "tracking": {"certificateArn": CERTIFICATE},
}


def load(raw, stack="dev", region="us-east-1"):
    return load_settings(raw, stack=stack, region=region)


def problems_of(raw, **kwargs) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(raw, **kwargs)
    return info.value.problems


def with_(base: dict, **sections) -> dict:
    return deep_merge(copy.deepcopy(base), sections)


@pytest.mark.parametrize("stack", stack_names())
def test_every_shipped_stack_file_validates(stack):
    config = load_stack_config(stack)
    settings = load(config.namespace("mlops-platform"), stack=stack, region=config.values["aws:region"])
    assert settings.profile == stack  # the shipped stacks are named after their profile


def test_stack_overrides_only_what_it_sets():
    settings = load(with_(VALID_DEV, network={"azCount": 3}))
    assert settings.network.az_count == 3
    assert settings.network.nat_gateways == PROFILES["dev"]["network"]["natGateways"]
    assert settings.name_prefix == "mlops-dev"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"profile": "qa"}, 'mlops-platform:profile: got "qa"; allowed: "dev", "staging", "prod"'),
        ({}, "mlops-platform:profile: got nothing"),
        (
            with_(VALID_DEV, network={"natGateways": "three"}),
            'network.natGateways: got "three"; allowed: "single", "perAz"',
        ),
        (with_(VALID_DEV, network={"azCount": "two"}), 'network.azCount: got "two"; expected a valid integer'),
        (with_(VALID_DEV, network={"azCount": 5}), "network.azCount: got 5; expected less than or equal to 3"),
        (
            with_(VALID_DEV, network={"cidr": "10.0.0.0/8"}),
            'network.cidr: got "10.0.0.0/8"; the VPC block must be between /16 and /20',
        ),
        (with_(VALID_DEV, network={"cidr": "10.0.0.1/16"}), 'network.cidr: got "10.0.0.1/16"; not an IPv4 CIDR block'),
        (
            with_(VALID_DEV, network={"interfaceEndpoints": ["sts", "sts"]}),
            'network.interfaceEndpoints: got ["sts", "sts"]; entries must be unique',
        ),
        (
            with_(VALID_DEV, network={"interfaceEndpoints": ["dynamodb"]}),
            'network.interfaceEndpoints[0]: got "dynamodb"; allowed:',
        ),
        (
            with_(VALID_DEV, network={"natGateway": "single"}),
            "network.natGateway: unknown key; allowed keys here: azCount, cidr, interfaceEndpoints, natGateways",
        ),
        (with_(VALID_DEV, bogus=1), "mlops-platform:bogus: unknown key; allowed keys here:"),
        (
            with_(VALID_DEV, storage={"versioning": "maybe"}),
            'storage.versioning: got "maybe"; expected a valid boolean',
        ),
        (
            with_(VALID_DEV, storage={"noncurrentVersionDays": 0}),
            "storage.noncurrentVersionDays: got 0; expected greater than or equal to 1",
        ),
        (
            with_(VALID_DEV, storage={"datasetsInfrequentAccessDays": 10}),
            "storage.datasetsInfrequentAccessDays: got 10; expected greater than or equal to 30",
        ),
        (with_(VALID_DEV, registry={"keepImages": 0}), "registry.keepImages: got 0"),
        (
            with_(VALID_DEV, registry={"repositories": ["Bad Name"]}),
            'registry.repositories[0]: got "Bad Name"; not a repository name',
        ),
        (
            with_(VALID_DEV, database={"instanceClass": "db.x1.huge"}),
            'database.instanceClass: got "db.x1.huge"; allowed: "db.t4g.micro"',
        ),
        (with_(VALID_DEV, database={"backupRetentionDays": 40}), "database.backupRetentionDays: got 40"),
        (with_(VALID_DEV, database={"engineVersion": "12"}), 'database.engineVersion: got "12"; allowed: "16", "17"'),
        (with_(VALID_DEV, cluster={"kubernetesVersion": "1.20"}), 'cluster.kubernetesVersion: got "1.20"; allowed:'),
        (with_(VALID_DEV, cluster={"logRetentionDays": 8}), "cluster.logRetentionDays: got 8; allowed: 1, 3, 5, 7, 14"),
        (with_(VALID_DEV, cluster={"logTypes": ["everything"]}), 'cluster.logTypes[0]: got "everything"; allowed:'),
        (
            with_(VALID_DEV, cluster={"adminRoleArns": ["admin"]}),
            'cluster.adminRoleArns[0]: got "admin"; not an IAM role ARN',
        ),
        (
            with_(VALID_DEV, cluster={"publicAccessCidrs": ["office"]}),
            'cluster.publicAccessCidrs[0]: got "office"; not an IPv4 CIDR block',
        ),
        (
            with_(VALID_DEV, cluster={"gpuPool": {"instanceFamilies": ["x9"]}}),
            'cluster.gpuPool.instanceFamilies[0]: got "x9"; allowed: "g4dn", "g5"',
        ),
        (
            with_(VALID_DEV, cluster={"gpuPool": {"instanceFamilies": []}}),
            "cluster.gpuPool.instanceFamilies: got []; expected at least 1 entry",
        ),
        (
            with_(VALID_DEV, cluster={"gpuPool": {"maxGpus": -1}}),
            "cluster.gpuPool.maxGpus: got -1; expected greater than or equal to 0",
        ),
        (
            with_(VALID_DEV, cluster={"gpuPool": {"capacityType": "reserved"}}),
            'cluster.gpuPool.capacityType: got "reserved"; allowed: "spot", "on-demand"',
        ),
        (
            with_(VALID_DEV, cluster={"gpuPool": {"consolidateAfter": "soon"}}),
            'cluster.gpuPool.consolidateAfter: got "soon"; not a duration',
        ),
        (
            with_(VALID_DEV, cluster={"cpuPool": {"instanceFamilies": ["g5"]}}),
            'cluster.cpuPool.instanceFamilies[0]: got "g5"; allowed: "t3"',
        ),
        (
            with_(VALID_DEV, cluster={"cpuPool": {"instanceSizes": ["huge"]}}),
            'cluster.cpuPool.instanceSizes[0]: got "huge"; allowed:',
        ),
        (with_(VALID_DEV, cluster={"cpuPool": {"maxCpu": -4}}), "cluster.cpuPool.maxCpu: got -4"),
        (
            with_(VALID_DEV, cluster={"systemNodeGroup": {"instanceType": "large"}}),
            'cluster.systemNodeGroup.instanceType: got "large"',
        ),
        (with_(VALID_DEV, budget={"monthlyUsd": 0}), "budget.monthlyUsd: got 0; expected greater than 0"),
        (
            with_(VALID_DEV, budget={"alertEmails": ["not-an-address"]}),
            'budget.alertEmails[0]: got "not-an-address"; not an email address',
        ),
        (
            {"profile": "dev", "cluster": {"publicAccessCidrs": ["203.0.113.0/24"]}},
            "mlops-platform:budget.alertEmails: required",
        ),
        (with_(VALID_DEV, namePrefix="Bad_Prefix"), 'namePrefix: got "Bad_Prefix"; not 3-20 characters'),
        (with_(VALID_DEV, owner=""), 'owner: got ""; expected at least 1 character'),
    ],
)
def test_each_bad_value_names_key_value_and_what_is_allowed(raw, expected):
    problems = problems_of(raw)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            with_(VALID_DEV, cluster={"publicAccessCidrs": []}),
            "cluster.publicAccessCidrs: required when cluster.endpointPublicAccess is true",
        ),
        (
            with_(VALID_DEV, cluster={"publicAccessCidrs": ["0.0.0.0/0"]}),
            "opening the API server to the whole internet is not allowed",
        ),
        (
            with_(VALID_DEV, cluster={"endpointPublicAccess": False}),
            "cluster.publicAccessCidrs: set, but cluster.endpointPublicAccess is false",
        ),
        (
            with_(VALID_DEV, cluster={"systemNodeGroup": {"minSize": 4, "maxSize": 3}}),
            "cluster.systemNodeGroup.minSize: got 4, above maxSize 3",
        ),
        (
            with_(VALID_DEV, cluster={"systemNodeGroup": {"desiredSize": 5}}),
            "cluster.systemNodeGroup.desiredSize: got 5; must lie between",
        ),
        (
            with_(VALID_PROD, database={"backupRetentionDays": 1}),
            "database.backupRetentionDays: got 1; the prod profile requires at least 7",
        ),
    ],
)
def test_cross_field_rules(raw, expected):
    problems = problems_of(raw, stack="prod" if raw["profile"] == "prod" else "dev")
    assert any(expected in p for p in problems), problems


def test_all_problems_are_reported_at_once():
    raw = with_(VALID_DEV, network={"natGateways": "x", "azCount": 9}, storage={"versioning": "x"})
    assert len(problems_of(raw)) == 3


def test_region_is_required_and_validated():
    assert problems_of(VALID_DEV, region=None) == [
        "aws:region: required (for example `pulumi config set aws:region us-east-1`)"
    ]
    assert any('region: got "mars-1"' in p for p in problems_of(VALID_DEV, region="mars-1"))


@pytest.mark.parametrize(("key", "getter", "required"), PROD_INVARIANTS, ids=[k for k, _, _ in PROD_INVARIANTS])
def test_prod_invariants_cannot_be_switched_off(key, getter, required):
    section, _, leaf = key.rpartition(".")
    override = {leaf: not required} if not section else {section: {leaf: not required}}
    if key == "cluster.endpointPublicAccess":
        override["cluster"]["publicAccessCidrs"] = ["203.0.113.0/24"]
    problems = problems_of(deep_merge(VALID_PROD, override), stack="prod")
    assert (
        f"mlops-platform:{key}: got {str(not required).lower()}; the prod profile requires {str(required).lower()} "
        "(prod invariant)" in problems
    )


# -- issue 13 item 10: HTTPS on the internal ALB in prod ---------------------------------------


def test_prod_requires_a_certificate_for_the_internal_alb():
    without = copy.deepcopy(VALID_PROD)
    del without["tracking"]
    (problem,) = problems_of(without, stack="prod")
    assert problem.startswith(
        "mlops-platform:tracking.certificateArn: required in prod: the internal ALB of the tracking server "
        "and the model endpoints then listens on HTTPS 443 only"
    )
    # no ALB at all (a cluster-only server, no endpoints): nothing to certify
    load(with_(without, tracking={"exposure": "clusterOnly"}), stack="prod")
    # endpoints always sit behind the ALB
    endpoint = {"name": "diabetes", "model": "diabetes"}
    assert (
        "mlops-platform:tracking.certificateArn"
        in problems_of(with_(without, tracking={"exposure": "clusterOnly"}) | {"endpoints": [endpoint]}, stack="prod")[
            0
        ]
    )
    load(with_(VALID_DEV, tracking={}), stack="dev")  # plain HTTP stays possible outside prod
    assert (
        "tracking.certificateArn: got"
        in problems_of(with_(VALID_PROD, tracking={"certificateArn": "not-an-arn"}), stack="prod")[0]
    )


def test_prod_defaults_satisfy_every_invariant():
    settings = load(VALID_PROD, stack="prod")
    for key, getter, required in PROD_INVARIANTS:
        assert getter(settings) == required, key


def test_the_same_override_is_fine_outside_prod():
    settings = load(with_(VALID_DEV, storage={"forceDestroy": True, "versioning": False}))
    assert settings.storage.force_destroy is True


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_defaults_carry_every_setting(profile):
    defaults = profile_defaults(profile)
    for section in ("network", "storage", "registry", "database", "cluster", "budget"):
        assert section in defaults, section
    assert "deletionProtection" in defaults
    assert "capacityType" in defaults["cluster"]["gpuPool"] and "maxGpus" in defaults["cluster"]["gpuPool"]


def test_latest_is_refused_for_every_image_tag_with_its_key():
    raw = with_(
        VALID_DEV,
        tracking={"imageTag": "latest"},
        endpoints=[{"name": "ab", "model": "m", "imageTag": "latest"}],
        pipelines=[
            {
                "name": "pipe",
                "model": "m",
                "entryPoint": "examples.diabetes:task",
                "data": "data/d.csv.dvc",
                "imageTag": "latest",
            }
        ],
    )
    assert [p for p in problems_of(raw) if "latest" in p] == [
        'mlops-platform:endpoints[0].imageTag: got "latest"; pin a version',
        'mlops-platform:pipelines[0].imageTag: got "latest"; pin a version',
        'mlops-platform:tracking.imageTag: got "latest"; pin a version (for example 3.17.2-1)',
    ]
