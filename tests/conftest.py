"""Shared test helpers: run code under the same offline Pulumi mocks the CLI uses."""

from __future__ import annotations

import json
import warnings
from typing import Callable

import pytest

from infra.inventory import Inventory, Resource
from infra.offline import run_offline

warnings.filterwarnings("ignore", category=DeprecationWarning)


def declare(build: Callable[[], None], *, stack: str = "test", region: str = "us-east-1") -> Inventory:
    """Run ``build`` (which declares resources) under mocks and return everything it declared."""
    return run_offline(build, project="mlops-platform", stack=stack, config={"aws:region": region})


def offline_stack(stack: str, **overrides: object) -> Inventory:
    """A shipped stack's offline preview with some settings overridden, as `pulumi config set` would."""
    from infra.program import main as program
    from infra.stackfile import load_stack_config

    config = load_stack_config(stack)
    runtime = config.runtime_config()
    runtime.update({f"mlops-platform:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()})
    return run_offline(
        program, project=config.project, stack=stack, config=runtime, secret_keys=sorted(config.secret_keys)
    )


def policy(resource: Resource, key: str = "policy") -> dict:
    """A JSON policy input, parsed."""
    return json.loads(resource.inputs[key])


def only(inventory: Inventory, type_token: str) -> Resource:
    found = inventory.of_type(type_token)
    assert len(found) == 1, f"expected one {type_token}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="session")
def stack_inventories() -> dict[str, Inventory]:
    """The offline preview of every shipped stack, built once per test session."""
    from infra.cli import offline_inventory
    from infra.stackfile import load_stack_config, stack_names

    return {name: offline_inventory(load_stack_config(name)) for name in stack_names()}


STACK_FILE_TESTS: dict[str, str] = {
    "tests.unit.test_checkov": "runs checkov on the shipped stacks' manifests",
    "tests.unit.test_checks": "the checks' verdict on every shipped stack, and stack files with a weakness added",
    "tests.unit.test_cost": "the cost estimate of the shipped stacks",
    "tests.unit.test_delivery": "CI's edits of the shipped stack files (recorded digests, prod invariants)",
    "tests.unit.test_deploy_plan": "the create and destroy order of every shipped stack",
    "tests.unit.test_inventory": "the inventory file of a shipped stack's preview",
    "tests.unit.test_settings": "the shipped stack files validate",
    "tests.unit.test_training_cost": "the cost of pipelines added to the shipped stacks",
    "tests.unit.test_workflows": "the workflows name the shipped stack files",
}
"""The tests/unit modules whose subject is the shipped stack files, each with the reason. Every other unit module
stands alone: it builds components from explicit args (tests/unit/builders.py), so editing stacks/*.yaml breaks
none of them; `_unit_tests_read_no_stack_file` enforces it at run time and tests/unit/test_tests_stand_alone.py in
the source."""


@pytest.fixture(autouse=True)
def _unit_tests_read_no_stack_file(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a unit test module not in STACK_FILE_TESTS, reading a stack file (directly, through `offline_stack` or
    `stack_inventories`, or through any helper) fails the test, naming the module."""
    module = request.module.__name__
    if not module.startswith("tests.unit.") or module in STACK_FILE_TESTS:
        return
    from infra import stackfile

    message = (
        f"{module} reads a stack file: unit tests build components from explicit args (tests/unit/builders.py); "
        "a test whose subject is the shipped stacks belongs in tests/stacks/ (or in tests/conftest.STACK_FILE_TESTS)"
    )
    if "stack_inventories" in request.fixturenames:
        pytest.fail(message)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(message)

    monkeypatch.setattr(stackfile, "load_stack_file", refuse)
