"""Kubernetes objects from an inventory, and their validation against schemas.

Core kinds are validated with `kubernetes-validate` against the schemas of the stack's
Kubernetes version; the platform's custom resources (Karpenter's NodePool and EC2NodeClass)
against JSON schemas in `components/schemas/`, written from Karpenter's v1 API reference
for the fields the platform sets (the upstream CRDs cannot be fetched offline).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from infra.inventory import SECRET, Inventory, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "components" / "schemas"


def is_manifest(resource: Resource) -> bool:
    """A Kubernetes object (not a Helm release, a provider or a component)."""
    return resource.type.startswith("kubernetes:") and not resource.type.startswith("kubernetes:helm.sh/") and resource.custom


def manifests(inventory: Inventory) -> list[dict[str, Any]]:
    return [manifest_of(r) for r in inventory.resources if is_manifest(r)]


def manifest_of(resource: Resource) -> dict[str, Any]:
    """The object as `kubectl apply` would send it: apiVersion/kind from the type token."""
    group_version, kind = resource.type.removeprefix("kubernetes:").rsplit(":", 1)
    api_version = group_version.removeprefix("core/")
    body = {k: v for k, v in resource.inputs.items() if k not in ("apiVersion", "kind")}
    masked = [k for k, v in body.items() if v == SECRET]
    if masked:  # a Pulumi secret as a whole (a Secret's data): render it empty, and say so
        for key in masked:
            body[key] = {}
        metadata = body.setdefault("metadata", {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), "mlops.platform/redacted": ",".join(masked)}
    return {"apiVersion": api_version, "kind": kind, **body}


@functools.cache
def _crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    path = SCHEMA_DIR / f"{api_version.replace('/', '_')}_{kind}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def validate(manifest: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Problems with one manifest; an empty list means it is valid."""
    import jsonschema
    import kubernetes_validate

    schema = _crd_schema(manifest["apiVersion"], manifest["kind"])
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(manifest)]
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {manifest['apiVersion']}/{manifest['kind']} in Kubernetes {kubernetes_version}"]
    return []
