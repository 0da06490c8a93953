"""Kubernetes resource quantities (`250m`, `2`, `16Gi`, `32000m`), read in one place.

Every CPU, memory, volume-size and extended-resource quantity the platform reads (pod requests
in the cost floors, pool limits, volume sizes, worker counts) goes through the Kubernetes Python
client's `parse_quantity`, which implements the apimachinery suffixes (`m`, `k`, `Mi`, `Gi`,
`e3`...), so `"32000m"` is 32 CPUs everywhere and never 32,000.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

MIB = 2**20
GIB = 2**30


def quantity(value: Any) -> Decimal:
    """The quantity as a number in its base unit (cores, bytes, devices); ValueError naming it if malformed."""
    try:
        parsed = parse_quantity(value)
    except (ValueError, TypeError):
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None
    if not parsed.is_finite():
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return parsed


def cpu_cores(value: Any) -> float:
    """`"250m"` -> 0.25, `"4"` -> 4.0."""
    return float(quantity(value))


def cpu_millicores(value: Any) -> int:
    """`"250m"` -> 250; Kubernetes rounds CPU up to whole millicores."""
    return int((quantity(value) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def mebibytes(value: Any) -> float:
    """`"16Gi"` -> 16384.0, `"512Mi"` -> 512.0, `"1G"` -> 953.67..."""
    return float(quantity(value) / MIB)


def gibibytes(value: Any) -> float:
    """`"100Gi"` -> 100.0."""
    return float(quantity(value) / GIB)


def whole(value: Any) -> int:
    """A count (`nvidia.com/gpu`, pods): `"1"` -> 1; a fraction is an error."""
    parsed = quantity(value)
    if parsed != parsed.to_integral_value():
        raise ValueError(f"expected a whole number: {value!r}")
    return int(parsed)
