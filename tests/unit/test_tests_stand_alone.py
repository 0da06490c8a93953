"""Unit tests stand alone (issue 15 item 6): no tests/unit module reads the shipped stack files unless its
subject is those files (tests/conftest.STACK_FILE_TESTS, each with its reason).

Component tests build what they test from explicit args (tests/unit/builders.py), so a change to
stacks/*.yaml breaks no component test; what the shipped stacks make of the components is checked in
tests/stacks/. Two guards: this module reads the sources for the ways in (the stack loader, the
`offline_stack` and `stack_inventories` helpers, a stacks/ path), and tests/conftest.py refuses any stack
file read at run time in the other modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import STACK_FILE_TESTS

UNIT = Path(__file__).resolve().parent
WAYS_IN = {
    "stack_inventories",
    "offline_stack",
    "load_stack_config",
    "load_stack_file",
    "stack_names",
    "offline_inventory",
}
"""Names that read stacks/*.yaml: the loader (infra/stackfile.py), the CLI's preview, the test helpers over it."""


def unit_modules() -> dict[str, Path]:
    return {f"tests.unit.{p.stem}": p for p in sorted(UNIT.glob("test_*.py"))}


def stack_reads(source: str) -> list[str]:
    """What in `source` reaches a stack file: a name of WAYS_IN (called, imported or taken as a fixture), or a
    string naming stacks/ or a Pulumi.<stack>.yaml."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in WAYS_IN:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in WAYS_IN:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.alias) and node.name.rsplit(".", 1)[-1] in WAYS_IN:
            found.append(f"line {node.lineno}: import {node.name}")
        elif isinstance(node, ast.arg) and node.arg in WAYS_IN:
            found.append(f"line {node.lineno}: fixture {node.arg}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if (
                node.value == "stacks"
                or node.value.startswith("stacks/")
                or (node.value.startswith("Pulumi.") and ".yaml" in node.value)
            ):
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_no_unit_module_outside_the_list_reads_a_stack_file():
    scanned = {name: path for name, path in unit_modules().items() if name not in STACK_FILE_TESTS and name != __name__}
    assert len(scanned) >= 15  # the component tests among them
    offenders = {name: reads for name, path in scanned.items() if (reads := stack_reads(path.read_text()))}
    assert offenders == {}, "build from tests/unit/builders.py, or move the test to tests/stacks/"


def test_the_list_names_existing_modules_with_a_reason():
    assert set(STACK_FILE_TESTS) <= set(unit_modules())
    assert all(len(reason) >= 20 for reason in STACK_FILE_TESTS.values())
    assert "tests.unit.builders" not in STACK_FILE_TESTS and "tests.unit.test_tests_stand_alone" not in STACK_FILE_TESTS


@pytest.mark.parametrize(
    "source",
    [
        "def test_x(stack_inventories):\n    pass\n",
        "from tests.conftest import offline_stack\n",
        "from infra.stackfile import load_stack_config\n",
        "import infra.stackfile\ninfra.stackfile.load_stack_file('x')\n",
        "path = REPO_ROOT / 'stacks' / 'Pulumi.dev.yaml'\n",
        "text = open('stacks/Pulumi.prod.yaml').read()\n",
    ],
)
def test_the_source_guard_sees_each_way_in(source):
    assert stack_reads(source)


def test_the_source_guard_passes_the_builders():
    assert stack_reads((UNIT / "builders.py").read_text()) == []
    assert stack_reads("inventory = declare(lambda: platform(Parts(monitoring={})))\n") == []


def test_a_stack_file_read_fails_at_run_time_in_a_unit_module_outside_the_list():
    """This module is not in the list: tests/conftest.py's guard is active here, whichever helper reads."""
    from infra.stackfile import load_stack_config
    from tests.conftest import offline_stack

    with pytest.raises(AssertionError, match="tests.unit.test_tests_stand_alone reads a stack file"):
        load_stack_config("dev")
    with pytest.raises(AssertionError, match="reads a stack file"):
        offline_stack("prod")
