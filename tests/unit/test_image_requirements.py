"""Each service image installs the Python packages the tests ran with (issue 16 item 5).

Images are built by CI, not here, so the only proof available offline is the requirement files:
every package an image's requirements name must be pinned with `==` to exactly the version
`requirements.lock` (the environment every test runs in) pins. A new service's requirements file
is picked up by the glob, so it is checked from its first commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from infra.stackfile import REPO_ROOT

IMAGE_REQUIREMENTS = sorted((REPO_ROOT / "services").glob("*/requirements*.txt"))


def requirement_lines(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def lock_versions(text: str) -> dict[str, str]:
    pins = {}
    for line in requirement_lines(text):
        requirement = Requirement(line)
        pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def mismatches(image_text: str, lock: dict[str, str]) -> list[str]:
    """One line per requirement that is not `name==<the lock's version>`."""
    problems = []
    for line in requirement_lines(image_text):
        if line.startswith("-"):
            problems.append(f"{line}: options (-r, -c, -e, --index-url) are not allowed in an image's requirements")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{line}: not a requirement ({exc})")
            continue
        name = canonicalize_name(requirement.name)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            problems.append(f"{line}: not pinned with == to one version")
        elif name not in lock:
            problems.append(f"{line}: {name} is not in requirements.lock, so no test ran with it")
        elif specifiers[0].version != lock[name]:
            problems.append(f"{line}: requirements.lock pins {name}=={lock[name]}")
    return problems


def test_every_service_image_has_requirements():
    services = {p.parent.name for p in (REPO_ROOT / "services").glob("*/Dockerfile")}
    assert services and services == {p.parent.name for p in IMAGE_REQUIREMENTS}


@pytest.mark.parametrize("path", IMAGE_REQUIREMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_image_requirements_pin_the_versions_of_the_lock(path: Path):
    lock = lock_versions((REPO_ROOT / "requirements.lock").read_text())
    assert mismatches(path.read_text(), lock) == []


def test_the_comparison_catches_every_way_to_differ():
    lock = {"mlflow": "3.17.2", "psycopg2-binary": "2.9.13", "zope-interface": "7.0"}
    image = "\n".join(
        [
            "mlflow[auth]==3.17.2      # extras are fine",
            "Zope.Interface==7.0       # names compare as pip does",
            "psycopg2-binary==2.9.12",
            "mlflow>=3.17",
            "numpy==2.*",
            "uvicorn==0.54.0",
            "-r other.txt",
        ]
    )
    assert mismatches(image, lock) == [
        "psycopg2-binary==2.9.12: requirements.lock pins psycopg2-binary==2.9.13",
        "mlflow>=3.17: not pinned with == to one version",
        "numpy==2.*: not pinned with == to one version",
        "uvicorn==0.54.0: uvicorn is not in requirements.lock, so no test ran with it",
        "-r other.txt: options (-r, -c, -e, --index-url) are not allowed in an image's requirements",
    ]
