"""vCPUs and GPUs per EC2 instance type, to turn Karpenter ceilings into instance counts."""

from __future__ import annotations

_VCPUS_BY_SIZE = {
    "medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32,
    "12xlarge": 48, "16xlarge": 64, "24xlarge": 96, "48xlarge": 192,
}
_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p4d", "p5"}
_MULTI_GPU = {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
_EIGHT_GPU = {"p4d.24xlarge", "p5.48xlarge"}


def vcpus(instance_type: str) -> int:
    return _VCPUS_BY_SIZE[instance_type.split(".")[1]]


def gpus(instance_type: str) -> int:
    family, size = instance_type.split(".")
    if family not in _GPU_FAMILIES:
        return 0
    if instance_type in _EIGHT_GPU:
        return 8
    return _MULTI_GPU.get(size, 1)
