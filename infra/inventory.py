"""The inventory: one neutral list of the resources a stack declares.

Everything that reviews a change (the tree, cost, checks, rendered manifests) reads only
this, so it works the same on an offline preview (the program under mocks, no credentials)
and on a real ``pulumi preview --json``.

Shape of an inventory file (``schema: mlops-platform/inventory@1``)::

    {
      "schema": "mlops-platform/inventory@1",
      "project": "mlops-platform", "stack": "dev",
      "source": "offline" | "pulumi-preview",
      "region": "us-east-1",                 # the stack's aws:region (null if unknown)
      "resources": [
        {
          "urn": "urn:pulumi:dev::mlops-platform::mlops:network:Network$aws:ec2/vpc:Vpc::mlops-dev-net-vpc",
          "type": "aws:ec2/vpc:Vpc",          # Pulumi type token
          "name": "mlops-dev-net-vpc",         # logical name
          "parent": "<urn of the parent component>" | null,   # null: directly under the stack
          "custom": true,                      # false for components
          "inputs": {"cidrBlock": "10.0.0.0/16", ...},        # camelCase, secrets as "[secret]"
          "protect": false, "retainOnDelete": false,
          "dependsOn": ["<urn>", ...],          # explicit and implied dependencies
          "provider": "<provider reference>" | "",
          "op": "create"                        # only from a real preview: the planned step
        }, ...
      ],
      "outputs": {"vpcId": "...", ...}         # stack exports (offline only)
    }

Mapping from ``pulumi preview --json`` (the CLI's ``PreviewDigest``): every entry of
``steps`` that leaves a resource in place (``op`` not ``delete``/``delete-replaced``/
``discard``/``remove-pending-replace``) contributes its ``newState``: ``type``, ``urn``,
``parent``, ``custom``, ``inputs``, ``protect``, ``retainOnDelete``, ``dependencies``
(as ``dependsOn``) and ``provider``; the name is the URN's last segment; the root
``pulumi:pulumi:Stack`` is dropped and resources parented to it get ``parent: null``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = "mlops-platform/inventory@1"
STACK_TYPE = "pulumi:pulumi:Stack"
SECRET = "[secret]"
_SECRET_SIG = "4dabf18193072939515e22adb298388d"
_GONE_OPS = {"delete", "delete-replaced", "discard", "remove-pending-replace", "discard-replaced"}


class InventoryError(ValueError):
    """A file that is neither an inventory nor a ``pulumi preview --json`` document."""


@dataclass
class Resource:
    urn: str
    type: str
    name: str
    parent: str | None
    custom: bool
    inputs: dict[str, Any]
    protect: bool = False
    retain_on_delete: bool = False
    depends_on: list[str] = field(default_factory=list)
    provider: str = ""
    op: str | None = None

    @property
    def is_component(self) -> bool:
        return not self.custom

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["retainOnDelete"] = data.pop("retain_on_delete")
        data["dependsOn"] = data.pop("depends_on")
        if data["op"] is None:
            del data["op"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Resource":
        if not isinstance(data, dict):
            raise InventoryError(f"expected an object, got {type(data).__name__}")
        missing = [key for key in ("urn", "type", "name") if not isinstance(data.get(key), str) or not data[key]]
        if missing:
            raise InventoryError(f"no `{missing[0]}` (each resource needs urn, type and name)")
        return cls(
            urn=data["urn"],
            type=data["type"],
            name=data["name"],
            parent=data.get("parent"),
            custom=bool(data.get("custom", True)),
            inputs=data.get("inputs") or {},
            protect=bool(data.get("protect", False)),
            retain_on_delete=bool(data.get("retainOnDelete", False)),
            depends_on=list(data.get("dependsOn") or []),
            provider=data.get("provider") or "",
            op=data.get("op"),
        )


@dataclass
class Inventory:
    project: str
    stack: str
    source: str
    resources: list[Resource]
    outputs: dict[str, Any] = field(default_factory=dict)
    region: str | None = None
    """The stack's `aws:region`, when known (prices depend on it)."""

    # -- queries -------------------------------------------------------------------------
    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def by_urn(self, urn: str) -> Resource:
        for resource in self.resources:
            if resource.urn == urn:
                return resource
        raise KeyError(urn)

    def children(self, parent_urn: str | None) -> list[Resource]:
        """Direct children, sorted by name so output is stable whatever the registration order."""
        return sorted((r for r in self.resources if r.parent == parent_urn), key=lambda r: r.name)

    def descendants(self, urn: str) -> Iterator[Resource]:
        for child in self.children(urn):
            yield child
            yield from self.descendants(child.urn)

    def component_of(self, resource: Resource) -> Resource | None:
        """The nearest enclosing component, or None for a resource directly under the stack."""
        urn = resource.parent
        while urn is not None:
            parent = self.by_urn(urn)
            if parent.is_component:
                return parent
            urn = parent.parent
        return None

    def type_counts(self) -> Counter[str]:
        return Counter(r.type for r in self.resources)

    # -- files ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "project": self.project,
            "stack": self.stack,
            "source": self.source,
            "region": self.region,
            "resources": [r.to_json() for r in self.resources],
            "outputs": self.outputs,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> "Inventory":
        """Read an inventory file or a ``pulumi preview --json`` file (detected by its shape)."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InventoryError(f"{path}: not JSON ({exc})") from None
        except OSError as exc:
            raise InventoryError(f"{path}: cannot read the inventory ({exc.strerror or exc})") from None
        if isinstance(document, dict) and document.get("schema") == SCHEMA:
            return cls._from_document(path, document)
        if isinstance(document, dict) and isinstance(document.get("steps"), list):
            try:
                return from_pulumi_preview(document)
            except (KeyError, TypeError, AttributeError) as exc:
                raise InventoryError(f"{path}: a `pulumi preview --json` step without {exc}") from None
        raise InventoryError(
            f"{path}: neither an inventory (schema {SCHEMA}) nor the output of `pulumi preview --json` (no `steps`)"
        )

    @classmethod
    def _from_document(cls, path: Path, document: dict[str, Any]) -> "Inventory":
        """An inventory document, each problem named with its place (`resources[3]: no `type``)."""
        for key in ("project", "stack"):
            if not isinstance(document.get(key), str):
                raise InventoryError(f"{path}: no `{key}`")
        if not isinstance(document.get("resources"), list):
            raise InventoryError(f"{path}: `resources` must be a list")
        resources = []
        for index, data in enumerate(document["resources"]):
            try:
                resources.append(Resource.from_json(data))
            except InventoryError as exc:
                raise InventoryError(f"{path}: resources[{index}]: {exc}") from None
        return cls(
            project=document["project"],
            stack=document["stack"],
            source=document.get("source", "offline"),
            resources=resources,
            outputs=document.get("outputs") or {},
            region=document.get("region"),
        )


def from_pulumi_preview(document: dict[str, Any]) -> Inventory:
    """Build an inventory from the JSON that ``pulumi preview --json`` prints."""
    resources: dict[str, Resource] = {}
    stack_urn = None
    for step in document["steps"]:
        op = step.get("op", "")
        state = step.get("newState")
        if op in _GONE_OPS or not state:
            continue
        urn = state.get("urn") or step.get("urn")
        if state.get("type") == STACK_TYPE:
            stack_urn = urn
            continue
        resources[urn] = Resource(
            urn=urn,
            type=state["type"],
            name=urn.rsplit("::", 1)[-1],
            parent=state.get("parent") or None,
            custom=bool(state.get("custom", False)),
            inputs=mask_secrets(state.get("inputs") or {}),
            protect=bool(state.get("protect", False)),
            retain_on_delete=bool(state.get("retainOnDelete", False)),
            depends_on=list(state.get("dependencies") or []),
            provider=state.get("provider") or "",
            op=op,
        )
    for resource in resources.values():
        if resource.parent and (resource.parent == stack_urn or f"::{STACK_TYPE}::" in resource.parent):
            resource.parent = None
    first = next(iter(resources), "urn:pulumi:unknown::unknown::x::y")
    stack, project = first.split("::")[0].removeprefix("urn:pulumi:"), first.split("::")[1]
    region = (document.get("config") or {}).get("aws:region")
    return Inventory(
        project=project, stack=stack, source="pulumi-preview", resources=list(resources.values()), region=region
    )


def mask_secrets(value: Any) -> Any:
    """Replace Pulumi secret envelopes with ``"[secret]"`` so an inventory never holds one."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return SECRET
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v) for v in value]
    return value


def walk(value: Any) -> Iterable[Any]:
    """Every nested value of an input tree, for checks that look anywhere inside."""
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
