"""Kubernetes objects from an inventory, and their validation against schemas.

Core kinds are validated with `kubernetes-validate` against the schemas of the stack's
Kubernetes version; the platform's custom resources (Karpenter's NodePool and EC2NodeClass, the
Prometheus Operator's ServiceMonitor and PrometheusRule) against the `openAPIV3Schema` of the
upstream CRDs of the pinned versions, committed under `components/upstream/` and made strict
(unknown fields rejected: the API server would prune them silently) by `infra.upstream`, and
then against the CRDs' CEL rules (`infra.cel_rules`).
"""

from __future__ import annotations

from typing import Any

from infra import cel_rules, upstream
from infra.inventory import SECRET, Inventory, Resource


def is_manifest(resource: Resource) -> bool:
    """A Kubernetes object (not a Helm release, a provider or a component)."""
    return (
        resource.type.startswith("kubernetes:")
        and not resource.type.startswith("kubernetes:helm.sh/")
        and resource.custom
    )


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
        # a copy: the inventory's inputs stay as recorded
        metadata = body["metadata"] = dict(body.get("metadata") or {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), "mlops.platform/redacted": ",".join(masked)}
    return {"apiVersion": api_version, "kind": kind, **body}


def _crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The upstream CRD's schema for a custom resource; None for a kind Kubernetes itself serves."""
    try:
        return upstream.crd_schema(api_version, kind)
    except upstream.MissingReference:
        return None


def validate(manifest: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Problems with one manifest; an empty list means it is valid."""
    import jsonschema
    import kubernetes_validate

    schema = _crd_schema(manifest["apiVersion"], manifest["kind"])
    if schema is not None:
        validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0 schemas are draft-4 style
        errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
        found = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        return found or cel_rules.problems(
            manifest, upstream.crd_openapi_schema(manifest["apiVersion"], manifest["kind"])
        )
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {manifest['apiVersion']}/{manifest['kind']} in Kubernetes {kubernetes_version}"]
    return []
