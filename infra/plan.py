"""The order in which `pulumi up` creates a stack's resources and `pulumi destroy` deletes them.

The engine orders by one dependency graph. Resource A waits for B when B is

- in A's dependencies: its explicit `depends_on` and every resource whose outputs feed A's
  inputs (the SDK sends both in the registration; the inventory keeps them as `dependsOn`,
  with a `depends_on` on a component already expanded to the component's children);
- A's parent (a child registers only once its parent has, and a component registers only once
  its own dependencies exist);
- A's provider (a Kubernetes object waits for the provider, which waits for the cluster).

`pulumi destroy` walks the same graph backwards: A is deleted before anything it needs. So
"B outlives A" and "A is created after B" are the same fact, `requires(A, B)`, and every
ordering question about a deploy or a teardown is a reachability question on this graph.

This reads only an inventory, so the same checks run on an offline preview and on a real
`pulumi preview --json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from graphlib import CycleError, TopologicalSorter

from infra.inventory import Inventory, Resource


class PlanError(ValueError):
    """The dependency graph has a cycle: the engine would refuse the program."""


def provider_urn(reference: str) -> str:
    """`<provider urn>::<provider id>` -> the provider's URN."""
    return reference.rsplit("::", 1)[0]


@dataclass
class DeployPlan:
    """The dependency graph of one inventory, with the create and destroy orders it implies."""

    inventory: Inventory
    needs: dict[str, frozenset[str]] = field(init=False)
    """URN -> URNs of the resources it waits for (direct edges only; see module docstring)."""

    def __post_init__(self) -> None:
        known = {r.urn for r in self.inventory.resources}
        self.needs = {}
        for resource in self.inventory.resources:
            edges = set(resource.depends_on)
            if resource.parent:
                edges.add(resource.parent)
            if resource.provider:
                edges.add(provider_urn(resource.provider))
            # default providers and the stack itself are not in an inventory; they exist first anyway
            self.needs[resource.urn] = frozenset(edges & known)
        self._closure: dict[str, frozenset[str]] = {}

    # -- reachability -----------------------------------------------------------------------
    def prerequisites(self, urn: str) -> frozenset[str]:
        """Every resource `urn` waits for, directly or through others (it outlives none of them)."""
        if urn not in self._closure:
            seen: set[str] = set()
            stack = list(self.needs[urn])
            while stack:
                current = stack.pop()
                if current not in seen:
                    seen.add(current)
                    stack.extend(self.needs[current])
            self._closure[urn] = frozenset(seen)
        return self._closure[urn]

    def requires(self, resource: Resource | str, other: Resource | str) -> bool:
        """True when `resource` is created after `other` and deleted before it."""
        return _urn(other) in self.prerequisites(_urn(resource))

    def path(self, resource: Resource | str, other: Resource | str) -> list[str] | None:
        """Names along one dependency chain from `resource` to `other`, or None (for messages)."""
        start, goal = _urn(resource), _urn(other)
        previous: dict[str, str | None] = {start: None}
        frontier = [start]
        while frontier:
            current = frontier.pop(0)
            if current == goal:
                chain: list[str] = []
                node: str | None = current
                while node is not None:
                    chain.append(self.inventory.by_urn(node).name)
                    node = previous[node]
                return chain[::-1]
            for nxt in sorted(self.needs[current]):
                if nxt not in previous:
                    previous[nxt] = current
                    frontier.append(nxt)
        return None

    # -- orders -----------------------------------------------------------------------------
    @cached_property
    def create_waves(self) -> list[list[Resource]]:
        """Resources in the waves the engine can create them in: each wave needs only earlier ones."""
        return self._waves(self.needs)

    @cached_property
    def destroy_waves(self) -> list[list[Resource]]:
        """Resources in the waves `pulumi destroy` can delete them in: nothing still needs a deleted one."""
        needed_by: dict[str, set[str]] = {urn: set() for urn in self.needs}
        for urn, edges in self.needs.items():
            for edge in edges:
                needed_by[edge].add(urn)
        return self._waves({urn: frozenset(users) for urn, users in needed_by.items()})

    def create_order(self) -> list[Resource]:
        return [r for wave in self.create_waves for r in wave]

    def destroy_order(self) -> list[Resource]:
        return [r for wave in self.destroy_waves for r in wave]

    def _waves(self, graph: dict[str, frozenset[str]]) -> list[list[Resource]]:
        sorter = TopologicalSorter(graph)
        try:
            sorter.prepare()
        except CycleError as exc:
            names = " -> ".join(self.inventory.by_urn(u).name for u in exc.args[1])
            raise PlanError(f"dependency cycle: {names}") from None
        waves = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            waves.append([self.inventory.by_urn(u) for u in ready])
            sorter.done(*ready)
        return waves


def _urn(value: Resource | str) -> str:
    return value if isinstance(value, str) else value.urn


def render_waves(plan: DeployPlan, *, destroy: bool = False) -> str:
    """The order as text: one numbered wave after another, cloud resources only (components create nothing)."""
    waves = plan.destroy_waves if destroy else plan.create_waves
    shown = [[r for r in wave if r.custom] for wave in waves]
    shown = [wave for wave in shown if wave]
    rule = (
        "each wave is deleted once the waves before it are gone"
        if destroy
        else "each wave waits only for the waves before it"
    )
    lines = [f"{sum(len(w) for w in shown)} resources in {len(shown)} waves; {rule}"]
    for number, wave in enumerate(shown, start=1):
        lines.append(f"wave {number}:")
        lines.extend(f"  {r.name}  [{r.type}]" for r in sorted(wave, key=lambda r: (r.type, r.name)))
    return "\n".join(lines)
