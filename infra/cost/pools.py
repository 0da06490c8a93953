"""Sizing a Karpenter pool for the estimate: its floor (the nodes the stack's always-on pods
need while idle) and its ceiling (the most its `limits` let it launch).

Floor: every Deployment/StatefulSet pod pinned to the pool (`mlops.platform/pool`; an unpinned
pod is taken to need the CPU pool), at its minimum replicas (an HPA's `minReplicas` wins over
`spec.replicas`), requests CPU, memory and GPUs. For each allowed instance type the pods are
packed first-fit decreasing (largest share of a node first) onto that type's *allocatable*
capacity (`instances.InstanceType.allocatable`); the floor is the type with the cheapest total
(instances plus their root volumes). One type per pool is an upper bound of what Karpenter's
mixed choice costs. DaemonSets of Helm charts and EKS add-ons are not counted: charts are
rendered at deploy time, so their requests are not in the inventory.

Ceiling: Karpenter never launches a node that would take the pool past a limit, so the most a
pool can cost is the costliest set of allowed nodes whose capacity stays within the limit (an
unbounded knapsack over the allowed types).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from components.quantities import cpu_millicores, mebibytes, whole
from infra.cost.instances import InstanceType, Resources
from infra.inventory import Inventory

POOL_LABEL = "mlops.platform/pool"
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Option:
    """An allowed instance type with a price: `monthly` is the instance plus its root volume."""

    instance: InstanceType
    hourly: float
    monthly: float


@dataclass(frozen=True)
class Pod:
    name: str
    requests: Resources


@dataclass(frozen=True)
class Floor:
    option: Option
    nodes: int


@dataclass
class Ceiling:
    counts: dict[str, int] = field(default_factory=dict)
    monthly: float = 0.0
    capacity: int = 0


def container_requests(container: dict[str, Any]) -> Resources:
    requests = (container.get("resources") or {}).get("requests") or {}
    return Resources(
        cpu_milli=cpu_millicores(requests.get("cpu", 0)),
        memory_mib=mebibytes(requests.get("memory", 0)),
        gpus=whole(requests.get(GPU, 0)),
    )


def pod_requests(pod: dict[str, Any]) -> Resources:
    """What the scheduler reserves for a pod: the sum over its containers, or the largest init
    container where that is more (per resource), plus the pod's own slot."""
    total = sum((container_requests(c) for c in pod.get("containers") or []), Resources())
    for init in pod.get("initContainers") or []:
        first = container_requests(init)
        total = Resources(
            max(total.cpu_milli, first.cpu_milli), max(total.memory_mib, first.memory_mib), max(total.gpus, first.gpus)
        )
    return total + Resources(pods=1)


def workload_pods(inventory: Inventory, pool: str) -> list[Pod]:
    """One entry per replica of every workload that runs on `pool` while the stack idles."""
    minimums = {}
    for hpa in inventory.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler"):
        spec = hpa.inputs.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        minimums[((hpa.inputs.get("metadata") or {}).get("namespace"), target.get("name"))] = spec.get("minReplicas", 1)
    pods = []
    for workload in inventory.of_type("kubernetes:apps/v1:Deployment") + inventory.of_type(
        "kubernetes:apps/v1:StatefulSet"
    ):
        metadata, spec = workload.inputs.get("metadata") or {}, workload.inputs.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        if (pod.get("nodeSelector") or {}).get(POOL_LABEL, "cpu") != pool:
            continue
        key = (metadata.get("namespace"), metadata.get("name"))
        declared = spec.get("replicas")
        replicas = minimums.get(key, 1 if declared is None else declared)
        requests = pod_requests(pod)
        pods += [Pod(f"{key[0]}/{key[1]}", requests)] * int(replicas)
    return pods


def first_fit_decreasing(pods: list[Pod], node: Resources) -> int | None:
    """Nodes of allocatable `node` the pods need, packed first-fit decreasing; None if one never fits."""
    if any(not pod.requests.fits_in(node) for pod in pods):
        return None
    free: list[Resources] = []
    for pod in sorted(pods, key=lambda p: p.requests.share_of(node), reverse=True):
        for index, room in enumerate(free):
            if pod.requests.fits_in(room):
                free[index] = room - pod.requests
                break
        else:
            free.append(node - pod.requests)
    return len(free)


def cheapest_floor(pods: list[Pod], options: list[Option]) -> Floor | None:
    """The allowed type whose packing of `pods` costs least (ties: fewer nodes, then name)."""
    plans = []
    for option in options:
        nodes = first_fit_decreasing(pods, option.instance.allocatable)
        if nodes is not None:
            plans.append((nodes * option.monthly, nodes, option.instance.name, Floor(option, nodes)))
    return min(plans)[-1] if plans else None


def costliest_ceiling(limit: int, capacity: Callable[[InstanceType], int], options: list[Option]) -> Ceiling:
    """The costliest nodes Karpenter may hold with their summed `capacity` within `limit`
    (unbounded knapsack over the allowed types, by dynamic programming on capacity units)."""
    usable = [(o, capacity(o.instance)) for o in options if capacity(o.instance) > 0]
    value = [0.0] * (limit + 1)
    choice: list[int | None] = [None] * (limit + 1)  # the option added last to reach `units`, or None: one unit unused
    for units in range(1, limit + 1):
        value[units] = value[units - 1]
        for index, (option, size) in enumerate(usable):
            if size <= units and value[units - size] + option.monthly > value[units] + 1e-9:
                value[units], choice[units] = value[units - size] + option.monthly, index
    ceiling, units = Ceiling(), limit
    while units > 0:
        picked = choice[units]
        if picked is None:
            units -= 1
            continue
        option, size = usable[picked]
        ceiling.counts[option.instance.name] = ceiling.counts.get(option.instance.name, 0) + 1
        ceiling.monthly += option.monthly
        ceiling.capacity += size
        units -= size
    return ceiling
