"""Usage assumptions for usage-priced items (GB stored, GB processed), per stack.

Defaults below; a stack overrides any of them in `stacks/usage/<stack>.yaml`. Every line of
the estimate that depends on one names it in its assumption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_USAGE: dict[str, float] = {
    "s3ArtifactsGb": 50,  # GB in the artifact bucket: models, run artifacts, inference captures
    "s3DatasetsGb": 100,  # GB in the dataset bucket
    "ecrGbPerRepository": 2,  # GB of images kept per repository (the lifecycle policy caps the count)
    "natGbPerGateway": 20,  # GB leaving through each NAT gateway (S3 traffic uses the free gateway endpoint)
    "interfaceEndpointGbPerEndpoint": 5,  # GB through each interface endpoint
    "logsGbPerLogGroup": 5,  # GB ingested into each CloudWatch log group (EKS control-plane logs)
    "loadBalancerLcu": 1,  # average load balancer capacity units per hour
    "sqsMillionRequests": 1,  # Karpenter long-polls its interruption queue; the first million are free
}
USAGE_DIR = Path(__file__).resolve().parents[2] / "stacks" / "usage"


class UsageError(ValueError):
    pass


def load_usage(stack: str, path: Path | None = None) -> dict[str, float]:
    """Defaults overlaid with the stack's usage file; unknown keys are an error. Only the stack's
    own file (`stacks/usage/<stack>.yaml`) may be absent: a `path` asked for must exist."""
    usage = dict(DEFAULT_USAGE)
    if path is None:
        path = USAGE_DIR / f"{stack}.yaml"
        if not path.is_file():
            return usage
    try:
        overrides: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the usage file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"{path}: expected a mapping of usage keys to numbers")
    for key, value in overrides.items():
        if key not in DEFAULT_USAGE:
            raise UsageError(f"{path}: unknown usage key {key!r}; allowed: {', '.join(sorted(DEFAULT_USAGE))}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise UsageError(f"{path}: {key}: got {value!r}; expected a number >= 0")
        usage[key] = float(value)
    return usage
