"""Reading ``Pulumi.yaml`` and ``stacks/Pulumi.<stack>.yaml`` the way the Pulumi CLI does.

The offline tools (preview, cost, check, render) run the stack program without the CLI, so
they must hand it the same configuration the CLI would: every ``namespace:key`` of the
stack file, structured values as JSON strings, secure values marked secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFLINE_SECRET_PLACEHOLDER = "offline-secret-placeholder"
"""What a `secure:` value becomes offline: the ciphertext cannot be decrypted without the CLI."""


class StackFileError(ValueError):
    """The stack file is missing or is not a Pulumi stack file."""


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    path: Path
    values: dict[str, Any]
    """Config keys exactly as written (``"mlops-platform:network"``) with their YAML values."""
    secret_keys: frozenset[str] = field(default_factory=frozenset)

    def namespace(self, namespace: str) -> dict[str, Any]:
        """The keys of one namespace, without the ``namespace:`` prefix."""
        prefix = namespace + ":"
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    def runtime_config(self) -> dict[str, str]:
        """Config as the Pulumi runtime holds it: strings, structured values JSON-encoded."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.values.items()}


def project_name(root: Path = REPO_ROOT) -> str:
    with open(root / "Pulumi.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["name"]


def stack_names(root: Path = REPO_ROOT) -> list[str]:
    """Stacks that have a stack file, in the order dev, staging, prod, then the rest."""
    names = [p.name[len("Pulumi.") : -len(".yaml")] for p in (root / "stacks").glob("Pulumi.*.yaml")]
    order = {"dev": 0, "staging": 1, "prod": 2}
    return sorted(names, key=lambda n: (order.get(n, 3), n))


def load_stack_config(stack: str, root: Path = REPO_ROOT) -> StackConfig:
    path = root / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(stack_names(root)) or "none"
        raise StackFileError(f"no stack file stacks/{path.name}; stacks with a file: {known}")
    return load_stack_file(path, root)


def load_stack_file(path: Path, root: Path = REPO_ROOT) -> StackConfig:
    """Read any file shaped like a stack file; its stack name comes from ``Pulumi.<stack>.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise StackFileError(f"no such stack file: {path}")
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml").removesuffix(".yml")
    with open(path, encoding="utf-8") as fh:
        document = yaml.safe_load(fh) or {}
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise StackFileError(f"{path.name}: expected a mapping with a `config:` mapping")
    project = project_name(root)
    values: dict[str, Any] = {}
    secrets = set()
    for key, value in (document.get("config") or {}).items():
        full_key = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = OFFLINE_SECRET_PLACEHOLDER
            secrets.add(full_key)
        values[full_key] = value
    return StackConfig(project=project, stack=stack, path=path, values=values, secret_keys=frozenset(secrets))
