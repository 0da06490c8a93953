"""EC2 instance types: capacity, and what pods can actually use on a Karpenter node (allocatable).

Sources, copied from upstream into `components/upstream/` (see its README):
- vCPUs, memory and GPUs: the labels `karpenter.k8s.aws/instance-cpu`, `-memory`, `-gpu-count`
  of Karpenter's generated instance-type reference (v1.11.1), which come from EC2
  DescribeInstanceTypes.
- max pods: the ENI limits the EKS AMI ships (`instance-info.jsonl`), with nodeadm's formula
  `max pods = ENIs × (IPv4 addresses per ENI − 1) + 2`.

Allocatable = capacity − kube-reserved − eviction threshold, as the EKS AL2023 AMI (nodeadm)
configures the kubelet and Karpenter predicts it before launching a node:
- kube-reserved CPU: 6% of the first core, 1% of the second, 0.5% of the third and fourth,
  0.25% of every core above four;
- kube-reserved memory: 255 MiB + 11 MiB × max pods;
- eviction threshold: `memory.available` 100 MiB;
- and, before those, Karpenter's VM memory overhead: 7.5% of the instance's memory (chart
  setting `vmMemoryOverheadPercent: 0.075`), rounded up to a whole MiB, which the hypervisor
  and kernel keep.
A test checks this against the allocatable Karpenter publishes for every type here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from components.quantities import cpu_millicores, mebibytes, whole

UPSTREAM = Path(__file__).resolve().parents[2] / "components" / "upstream"
KARPENTER_REFERENCE = UPSTREAM / "karpenter-v1.11.1" / "instance-types.md"
EKS_AMI_INSTANCE_INFO = UPSTREAM / "amazon-eks-ami-v20260724" / "instance-info.jsonl"

VM_MEMORY_OVERHEAD = 0.075
"""Karpenter's `vmMemoryOverheadPercent` (chart default)."""
EVICTION_MEMORY_MIB = 100
"""nodeadm's `evictionHard: memory.available: 100Mi`."""
CPU_RESERVE_TIERS = ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, math.inf, 0.0025))
"""(from millicore, to millicore, share reserved) — nodeadm's getCPUMillicoresToReserve."""


@dataclass(frozen=True)
class Resources:
    """CPU in millicores, memory in MiB, GPUs and pods: what a node offers or a pod requests."""

    cpu_milli: int = 0
    memory_mib: float = 0.0
    gpus: int = 0
    pods: int = 0

    def fits_in(self, other: "Resources") -> bool:
        return (
            self.cpu_milli <= other.cpu_milli
            and self.memory_mib <= other.memory_mib
            and self.gpus <= other.gpus
            and self.pods <= other.pods
        )

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(
            self.cpu_milli + other.cpu_milli,
            self.memory_mib + other.memory_mib,
            self.gpus + other.gpus,
            self.pods + other.pods,
        )

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(
            self.cpu_milli - other.cpu_milli,
            self.memory_mib - other.memory_mib,
            self.gpus - other.gpus,
            self.pods - other.pods,
        )

    def share_of(self, node: "Resources") -> float:
        """The largest fraction of `node` this takes in any resource (first-fit decreasing sorts by it)."""
        pairs = (
            (self.cpu_milli, node.cpu_milli),
            (self.memory_mib, node.memory_mib),
            (self.gpus, node.gpus),
            (self.pods, node.pods),
        )
        return max((used / offered if offered else math.inf) if used else 0.0 for used, offered in pairs)


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    max_pods: int

    @property
    def kube_reserved_cpu_milli(self) -> int:
        total = self.vcpus * 1000
        return sum(int((min(total, end) - start) * share) for start, end, share in CPU_RESERVE_TIERS if total > start)

    @property
    def kube_reserved_memory_mib(self) -> int:
        return 255 + 11 * self.max_pods

    @property
    def allocatable(self) -> Resources:
        after_vm = self.memory_mib - math.ceil(self.memory_mib * VM_MEMORY_OVERHEAD)
        return Resources(
            cpu_milli=self.vcpus * 1000 - self.kube_reserved_cpu_milli,
            memory_mib=after_vm - self.kube_reserved_memory_mib - EVICTION_MEMORY_MIB,
            gpus=self.gpus,
            pods=self.max_pods,
        )


@cache
def karpenter_reference() -> dict[str, dict[str, dict[str, str]]]:
    """Karpenter's reference, per type: {"labels": {...}, "resources": {...}} as published."""
    types: dict[str, dict[str, dict[str, str]]] = {}
    for section in re.split(r"(?m)^(?=### `)", KARPENTER_REFERENCE.read_text(encoding="utf-8"))[1:]:
        header = re.match(r"### `([^`]+)`", section)
        if header is None:  # the split leaves "### `" at the start of each section, not the closing backtick
            raise AttributeError(
                f"{KARPENTER_REFERENCE.name}: a section header without a closing backtick: {section.splitlines()[0]!r}"
            )
        name = header.group(1)
        labels, resources = section.split("#### Resources")
        row = re.compile(r"(?m)^ \|([^|]+)\|([^|]*)\|$")
        types[name] = {"labels": dict(row.findall(labels)), "resources": dict(row.findall(resources))}
    return types


@cache
def eni_max_pods() -> dict[str, int]:
    """Max pods per type from the EKS AMI's ENI limits: ENIs × (IPv4 per ENI − 1) + 2."""
    limits = [
        json.loads(line) for line in EKS_AMI_INSTANCE_INFO.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return {
        item["instanceType"]: item["defaultMaxENIs"] * (item["ipv4AddressesPerInterface"] - 1) + 2 for item in limits
    }


@cache
def get(name: str) -> InstanceType:
    """The instance type; KeyError if the upstream copies do not list it."""
    labels = karpenter_reference()[name]["labels"]
    return InstanceType(
        name=name,
        vcpus=int(labels["karpenter.k8s.aws/instance-cpu"]),
        memory_mib=int(labels["karpenter.k8s.aws/instance-memory"]),
        gpus=int(labels.get("karpenter.k8s.aws/instance-gpu-count", "0")),
        max_pods=eni_max_pods()[name],
    )


def published_allocatable(name: str) -> Resources:
    """What Karpenter's reference lists as the type's allocatable (for the test of the formula)."""
    published = karpenter_reference()[name]["resources"]
    return Resources(
        cpu_millicores(published["cpu"]),
        mebibytes(published["memory"]),
        whole(published.get("nvidia.com/gpu", "0")),
        whole(published["pods"]),
    )


def vcpus(instance_type: str) -> int:
    return get(instance_type).vcpus


def gpus(instance_type: str) -> int:
    return get(instance_type).gpus
