"""The training image holds what the runner imports, at the versions the tests ran."""

from __future__ import annotations

import ast
from pathlib import Path

from infra.stackfile import REPO_ROOT

IMAGE = REPO_ROOT / "services/training"


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name (packaging's parser)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    requirements = [
        Requirement(line.split("#", 1)[0]) for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()
    ]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in requirements}


def test_the_image_pins_what_the_lock_pins():
    image, lock = pins(IMAGE / "requirements.txt"), pins(REPO_ROOT / "requirements.lock")
    assert {"mlflow-skinny", "pandera", "scikit-learn", "pandas", "boto3"} <= image.keys()
    assert {name: version for name, version in image.items() if lock.get(name) != version} == {}


def copied_paths() -> list[str]:
    """Repository paths the Dockerfile copies into /app."""
    copied = []
    for line in (IMAGE / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and parts[-1].startswith("/app/") and not parts[1].endswith("requirements.txt"):
            copied.extend(p.rstrip("/") for p in parts[1:-1])
    return copied


def repository_imports(files: list[Path]) -> set[str]:
    """Modules of this repository (services.*, examples.*) that `files` import, and theirs, transitively."""
    seen: set[str] = set()
    queue = list(files)
    while queue:
        tree = ast.parse(queue.pop().read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for name in names:
                if name.split(".")[0] in ("services", "examples") and name not in seen:
                    seen.add(name)
                    path = REPO_ROOT / (name.replace(".", "/") + ".py")
                    if path.is_file():
                        queue.append(path)
    return seen


def test_every_module_the_runner_imports_is_in_the_image():
    copied = copied_paths()
    needed = repository_imports([*IMAGE.glob("*.py"), *(REPO_ROOT / "examples").glob("*.py")])
    assert "services.serving.drift" in needed
    missing = []
    for module in sorted(needed):
        path = module.replace(".", "/")
        candidates = [path + ".py", path]
        if not any(c == p or c.startswith(p + "/") for c in candidates for p in copied):
            missing.append(module)
    assert missing == []
