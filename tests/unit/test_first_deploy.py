"""The first deploy of a stack: workloads only once their images are in the stack's own registry.

Phase 1 (`deployWorkloads: false`) declares no workload; with workloads on, every image is looked
up in the registry before any resource is declared, and pinned by the digest found there.
"""

from __future__ import annotations

import pulumi
import pytest

from infra.images import ImageUse, image_uses, resolve_digests, workload_images
from infra.inventory import walk
from infra.offline import OfflineMocks, offline_image_digest
from infra.settings import PROFILE_NAMES, SettingsError, load_settings
from tests.unit.builders import profile_settings, program_inventory

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
EMAILS = {"budget": {"alertEmails": ["ml@example.com"]}}
RUNNER = {"cluster": {"deployRunnerCidrs": ["10.0.0.0/19"]}}


def settings(profile: str = "staging", **raw):
    return load_settings({"profile": profile, **EMAILS, **RUNNER, **raw}, stack="s", region="us-east-1")


def problems(**raw) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        settings(**raw)
    return caught.value.problems


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_profile_deploys_workloads_unless_told_this_is_phase_one(profile):
    raw = (
        {"cluster": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}} if profile == "dev" else {}
    )
    if profile == "prod":  # prod's internal ALB needs a certificate
        raw = {
            "tracking": {
                "certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
            }
        }
    assert settings(profile, **raw).deploy_workloads is True
    assert (
        settings(profile, **raw, deployWorkloads="false").deploy_workloads is False
    )  # as the Pulumi CLI hands it over
    assert settings(profile, **raw).image_digests == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"deployWorkloads": "later"}, 'mlops-platform:deployWorkloads: got "later"; expected a valid boolean'),
        (
            {"imageDigests": {"serving": {"0.1.0": "sha256:abc"}}},
            'mlops-platform:imageDigests.serving.0.1.0: got "sha256:abc"; not an image digest: sha256: and 64 '
            "lowercase hex digits",
        ),
        (
            {"imageDigests": {"serving": {"0.1.0": "SHA256:" + "A" * 64}}},
            "mlops-platform:imageDigests.serving.0.1.0: got",
        ),
        (
            {"imageDigests": {"serving": {"no tags!": DIGEST_A}}},
            'mlops-platform:imageDigests.serving.no tags!: got "no tags!"; not a Docker tag',
        ),
        ({"imageDigests": {"serving": DIGEST_A}}, "mlops-platform:imageDigests.serving: got"),
        (
            {"imageDigests": {"trainer": {"1.0": DIGEST_A}}},
            'mlops-platform:imageDigests.trainer: not a repository of this stack; allowed: "serving", "tracking", '
            '"drift"',
        ),
        (
            {"registry": {"repositories": ["drift", "serving"]}},
            'mlops-platform:registry.repositories: got ["drift", "serving"]; must include "tracking": '
            "the stack pulls the image of the self-hosted tracking server from its own registry",
        ),
        (
            {"registry": {"repositories": ["tracking"]}, "endpoints": [{"name": "ab", "model": "m"}]},
            'mlops-platform:registry.repositories: got ["tracking"]; must include "serving": '
            "the stack pulls the image of the model endpoints from its own registry",
        ),
    ],
)
def test_image_settings_errors_name_the_key_and_what_is_allowed(raw, expected):
    assert any(line.startswith(expected) for line in problems(**raw)), problems(**raw)


def test_managed_tracking_needs_no_tracking_repository():
    assert settings(registry={"repositories": ["drift"]}, tracking={"mode": "managed"}).registry.repositories == [
        "drift"
    ]


# -- resolving images --------------------------------------------------------------------------------
def registry(contents: dict[str, str]):
    """A lookup over a fake registry `{"<prefix>/<repo>:<tag>": digest}`, recording what was asked."""
    asked: list[str] = []

    def lookup(repository_name: str, tag: str) -> str:
        asked.append(f"{repository_name}:{tag}")
        if f"{repository_name}:{tag}" not in contents:
            raise LookupError("ImageNotFoundException")
        return contents[f"{repository_name}:{tag}"]

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


TWO_ENDPOINTS = [
    {"name": "ab", "model": "m"},
    {"name": "cd", "model": "m", "imageTag": "0.2.0"},
    {"name": "ef", "model": "m"},
]


def test_each_image_is_looked_up_once_and_named_by_every_key_that_uses_it():
    uses = image_uses(settings(endpoints=TWO_ENDPOINTS))
    assert uses == [
        ImageUse("tracking", "3.17.2-1", ("tracking.imageTag",)),
        ImageUse("serving", "0.1.0", ("endpoints[0].imageTag", "endpoints[2].imageTag")),
        ImageUse("serving", "0.2.0", ("endpoints[1].imageTag",)),
    ]
    assert image_uses(settings(tracking={"mode": "managed"})) == []


def test_images_are_pinned_by_the_digest_the_registry_holds():
    lookup = registry({"mlops-s/tracking:3.17.2-1": DIGEST_A, "mlops-s/serving:0.1.0": DIGEST_B})
    digests = resolve_digests(settings(endpoints=TWO_ENDPOINTS[:1]), lookup, dry_run=False, warn=pytest.fail)
    assert digests == {("tracking", "3.17.2-1"): DIGEST_A, ("serving", "0.1.0"): DIGEST_B}
    assert sorted(lookup.asked) == ["mlops-s/serving:0.1.0", "mlops-s/tracking:3.17.2-1"]


def test_a_recorded_digest_must_agree_with_the_registry():
    lookup = registry({"mlops-s/tracking:3.17.2-1": DIGEST_A})
    ok = settings(imageDigests={"tracking": {"3.17.2-1": DIGEST_A}})
    assert resolve_digests(ok, lookup, dry_run=False, warn=pytest.fail) == {("tracking", "3.17.2-1"): DIGEST_A}
    stale = settings(imageDigests={"tracking": {"3.17.2-1": DIGEST_B}})
    with pytest.raises(SettingsError) as caught:
        resolve_digests(stale, lookup, dry_run=False, warn=pytest.fail)
    assert caught.value.problems == [
        f'mlops-platform:imageDigests.tracking.3.17.2-1: got "{DIGEST_B}"; the registry holds "{DIGEST_A}" for '
        "mlops-s/tracking:3.17.2-1 (tags there are immutable: record the digest the push printed)"
    ]


def test_missing_images_stop_an_update_listing_every_one_with_the_way_out():
    lookup = registry({"mlops-s/serving:0.1.0": DIGEST_B})
    with pytest.raises(SettingsError) as caught:
        resolve_digests(settings(endpoints=TWO_ENDPOINTS), lookup, dry_run=False, warn=pytest.fail)
    assert caught.value.problems == [
        "mlops-platform:tracking.imageTag: image mlops-s/tracking:3.17.2-1 is not in the stack's registry "
        "(ImageNotFoundException); "
        "push it first, or set mlops-platform:deployWorkloads false (README: First deploy and teardown)",
        "mlops-platform:endpoints[1].imageTag: image mlops-s/serving:0.2.0 is not in the stack's registry "
        "(ImageNotFoundException); "
        "push it first, or set mlops-platform:deployWorkloads false (README: First deploy and teardown)",
    ]


def test_a_preview_only_warns_about_a_missing_image_so_a_tag_bump_can_be_reviewed_before_the_push():
    warnings: list[str] = []
    recorded = settings(imageDigests={"tracking": {"3.17.2-1": DIGEST_A}}, endpoints=TWO_ENDPOINTS[:1])
    digests = resolve_digests(recorded, registry({}), dry_run=True, warn=warnings.append)
    assert digests == {("tracking", "3.17.2-1"): DIGEST_A, ("serving", "0.1.0"): None}  # recorded digest, else by tag
    assert len(warnings) == 2 and all("`pulumi up` will stop here" in w for w in warnings)


def test_phase_one_looks_nothing_up():
    def refuse(repository_name: str, tag: str) -> str:
        raise AssertionError("phase 1 must not need the registry")

    assert workload_images(settings(deployWorkloads="false", endpoints=TWO_ENDPOINTS), refuse) == {}


# -- the program, as `pulumi up` runs it ----------------------------------------------------------
def dev_stack(**settings):
    """The program run for a `dev` stack with one endpoint (builders.profile_settings), these settings over it."""
    return program_inventory("dev", profile_settings("dev", **settings))


def images_in(inventory) -> set[str]:
    return {v for r in inventory.resources for v in walk(r.inputs) if isinstance(v, str) and ".dkr.ecr." in v}


def test_an_update_with_a_missing_image_declares_nothing(monkeypatch):
    """The registry answers like ECR for an image nobody pushed; `up` stops before its first resource."""
    declared: list[str] = []
    real_call, real_new = OfflineMocks.call, OfflineMocks.new_resource

    def call(self, args):
        if args.token == "aws:ecr/getImage:getImage" and args.args["repositoryName"].endswith("/serving"):
            return {}, [("imageTag", "ImageNotFoundException: the image does not exist")]
        return real_call(self, args)

    def new_resource(self, args):
        declared.append(args.name)
        return real_new(self, args)

    monkeypatch.setattr(OfflineMocks, "call", call)
    monkeypatch.setattr(OfflineMocks, "new_resource", new_resource)
    with pytest.raises(
        pulumi.RunError,
        match=r"endpoints\[0\]\.imageTag: image mlops-dev/serving:0\.1\.0 is not in the stack's registry "
        r"\(.*ImageNotFoundException.*\); push it first, or set mlops-platform:deployWorkloads false",
    ):
        dev_stack()
    assert declared == []


def test_phase_one_declares_no_workload_and_asks_the_registry_nothing(monkeypatch):
    asked: list[str] = []
    real_call = OfflineMocks.call

    def call(self, args):
        asked.append(args.token)
        return real_call(self, args)

    monkeypatch.setattr(OfflineMocks, "call", call)
    inventory = dev_stack(deployWorkloads="false")
    assert "aws:ecr/getImage:getImage" not in asked
    assert images_in(inventory) == set()
    assert "trackingUrl" not in inventory.outputs and inventory.outputs["endpointPaths"] == {}
    assert inventory.of_type("aws:ecr/repository:Repository")  # what phase 2 pulls from is created now


def test_workloads_run_the_digest_recorded_for_their_tag():
    inventory = dev_stack(imageDigests={"tracking": {"3.17.2-1": DIGEST_A}})
    assert images_in(inventory) == {
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops-dev/tracking:3.17.2-1@{DIGEST_A}",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops-dev/serving:0.1.0"
        f"@{offline_image_digest('mlops-dev/serving', '0.1.0')}",
    }


def test_managed_tracking_is_part_of_phase_one():
    inventory = dev_stack(deployWorkloads="false", tracking={"mode": "managed"}, endpoints=[])
    assert len(inventory.of_type("aws:sagemaker/mlflowTrackingServer:MlflowTrackingServer")) == 1
    assert "trackingUrl" in inventory.outputs
