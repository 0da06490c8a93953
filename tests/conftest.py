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
    return run_offline(program, project=config.project, stack=stack, config=runtime, secret_keys=sorted(config.secret_keys))


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
