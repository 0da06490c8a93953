"""Properties of whole stacks: each shipped stack previews offline and keeps its invariants."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.stackfile import REPO_ROOT, stack_names
from infra.tagging import TAG_KEYS, _accepts_tags

STACKS = stack_names()


def _resource_class(type_token: str) -> type:
    """The pulumi_aws class of a type token: `aws:ec2/vpc:Vpc` -> pulumi_aws.ec2.Vpc."""
    import importlib

    _, module, name = type_token.split(":")
    package = module.split("/")[0]
    return getattr(importlib.import_module("pulumi_aws" if package == "index" else f"pulumi_aws.{package}"), name)


def test_the_three_environments_ship():
    assert STACKS[:3] == ["dev", "staging", "prod"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_previews_with_its_components(stack_inventories, stack):
    inventory = stack_inventories[stack]
    components = {r.type for r in inventory.resources if r.is_component}
    assert {
        "mlops:network:Network",
        "mlops:storage:Storage",
        "mlops:registry:Registry",
        "mlops:budget:Budget",
    } <= components
    assert inventory.outputs["vpcId"] and inventory.outputs["artifactBucket"]


@pytest.mark.parametrize("stack", STACKS)
def test_urns_are_unique(stack_inventories, stack):
    # The mock engine does not reject duplicate names; the real one does.
    urns = [r.urn for r in stack_inventories[stack].resources]
    assert len(urns) == len(set(urns))


@pytest.mark.parametrize("stack", STACKS)
def test_every_taggable_aws_resource_carries_the_platform_tags(stack_inventories, stack):
    inventory = stack_inventories[stack]
    taggable = [r for r in inventory.resources if r.type.startswith("aws:") and _accepts_tags(_resource_class(r.type))]
    assert len(taggable) >= 20
    for resource in taggable:
        assert set(TAG_KEYS) <= set(resource.inputs["tags"]), resource.name
        assert resource.inputs["tags"]["stack"] == stack
    vpc = inventory.of_type("aws:ec2/vpc:Vpc")[0]
    assert vpc.inputs["tags"]["component"] == "network"


def test_nat_gateways_per_profile(stack_inventories):
    nats = {
        stack: len(stack_inventories[stack].of_type("aws:ec2/natGateway:NatGateway"))
        for stack in ("dev", "staging", "prod")
    }
    assert nats == {"dev": 1, "staging": 1, "prod": 3}


def test_prod_protects_what_holds_data_and_dev_can_be_destroyed(stack_inventories):
    stateful = ("aws:s3/bucket:Bucket", "aws:kms/key:Key", "aws:ecr/repository:Repository")
    for stack, expected in (("prod", True), ("dev", False)):
        for resource in stack_inventories[stack].resources:
            if resource.type in stateful:
                assert resource.protect is expected, (stack, resource.name)
    for bucket in stack_inventories["dev"].of_type("aws:s3/bucket:Bucket"):
        assert bucket.inputs["forceDestroy"] is True
    for bucket in stack_inventories["prod"].of_type("aws:s3/bucket:Bucket"):
        assert bucket.inputs["forceDestroy"] is False


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_preview_command_prints_the_tree_and_writes_the_inventory(tmp_path):
    out = tmp_path / "inv.json"
    result = run_cli("preview", "--stack", "dev", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "mlops-dev-net  [mlops:network:Network]" in result.stdout
    assert "total:" in result.stdout and out.is_file()

    shown = run_cli("preview", "--inventory", str(out), "--counts-only")
    total = next(line for line in result.stdout.splitlines() if "total:" in line)
    assert shown.returncode == 0 and total in shown.stdout and "real `pulumi preview`" not in shown.stdout


def test_a_bad_stack_file_exits_2_names_the_key_and_declares_nothing(tmp_path):
    bad = tmp_path / "Pulumi.broken.yaml"
    bad.write_text(
        "config:\n  aws:region: us-east-1\n  mlops-platform:profile: prod\n"
        "  mlops-platform:storage:\n    forceDestroy: true\n"
        "  mlops-platform:budget:\n    alertEmails: [a@example.com]\n"
    )
    out = tmp_path / "inv.json"
    result = run_cli("preview", "--stack-file", str(bad), "--json", str(out))
    assert result.returncode == 2
    assert (
        "mlops-platform:storage.forceDestroy: got true; the prod profile requires false (prod invariant)"
        in result.stderr
    )
    assert "nothing was declared" in result.stderr
    assert not out.exists() and "[aws:" not in result.stdout


def test_an_invalid_program_run_declares_nothing():
    """Under the program itself (as `pulumi up` runs it), validation precedes every resource."""
    import pulumi

    from infra.offline import run_offline
    from infra.program import main

    with pytest.raises(pulumi.RunError, match="network.azCount"):
        run_offline(
            main,
            project="mlops-platform",
            stack="dev",
            config={
                "aws:region": "us-east-1",
                "mlops-platform:profile": "dev",
                "mlops-platform:network": '{"azCount": 9}',
            },
        )


def test_unknown_stack_is_a_clear_error():
    result = run_cli("preview", "--stack", "nope")
    assert result.returncode == 2 and "stacks with a file: dev, staging, prod" in result.stderr
