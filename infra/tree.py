"""Print an inventory as a tree: component -> children, type, name and the settings that matter."""

from __future__ import annotations

from typing import Any, Callable

from infra.inventory import Inventory, Resource


def _get(inputs: dict[str, Any], *path: str) -> Any:
    value: Any = inputs
    for key in path:
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _fmt(**pairs: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in pairs.items() if v not in (None, "", [], {}))


# What a reviewer wants to see for each type at a glance; anything else shows no details.
KEY_SETTINGS: dict[str, Callable[[dict[str, Any]], str]] = {
    "aws:ec2/vpc:Vpc": lambda i: _fmt(cidr=i.get("cidrBlock")),
    "aws:ec2/subnet:Subnet": lambda i: _fmt(cidr=i.get("cidrBlock"), az=i.get("availabilityZone")),
    "aws:ec2/vpcEndpoint:VpcEndpoint": lambda i: _fmt(service=i.get("serviceName"), kind=i.get("vpcEndpointType")),
    "aws:kms/key:Key": lambda i: _fmt(
        rotation=i.get("enableKeyRotation"), deletionWindowDays=i.get("deletionWindowInDays")
    ),
    "aws:s3/bucket:Bucket": lambda i: _fmt(forceDestroy=i.get("forceDestroy")),
    "aws:s3/bucketVersioning:BucketVersioning": lambda i: _fmt(status=_get(i, "versioningConfiguration", "status")),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": lambda i: _fmt(
        sse=_get(i, "rules", "applyServerSideEncryptionByDefault", "sseAlgorithm")
    ),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": lambda i: _fmt(
        allBlocked=all(
            i.get(k) for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        )
    ),
    "aws:ecr/repository:Repository": lambda i: _fmt(
        name=i.get("name"),
        tags=i.get("imageTagMutability"),
        scanOnPush=_get(i, "imageScanningConfiguration", "scanOnPush"),
    ),
    "aws:budgets/budget:Budget": lambda i: _fmt(
        limit=f"{i.get('limitAmount')} {i.get('limitUnit')}/{i.get('timeUnit')}"
    ),
    "aws:rds/instance:Instance": lambda i: _fmt(
        cls=i.get("instanceClass"),
        multiAz=i.get("multiAz"),
        encrypted=i.get("storageEncrypted"),
        deletionProtection=i.get("deletionProtection"),
    ),
    "aws:eks/cluster:Cluster": lambda i: _fmt(
        version=i.get("version"), publicEndpoint=_get(i, "vpcConfig", "endpointPublicAccess")
    ),
    "aws:eks/nodeGroup:NodeGroup": lambda i: _fmt(
        types=",".join(i.get("instanceTypes") or []),
        min=_get(i, "scalingConfig", "minSize"),
        max=_get(i, "scalingConfig", "maxSize"),
    ),
    "kubernetes:helm.sh/v3:Release": lambda i: _fmt(
        chart=i.get("chart"), version=i.get("version"), namespace=i.get("namespace")
    ),
    "kubernetes:karpenter.sh/v1:NodePool": lambda i: _fmt(limits=_get(i, "spec", "limits")),
}


def describe(resource: Resource) -> str:
    summarize = KEY_SETTINGS.get(resource.type)
    details = summarize(resource.inputs) if summarize else ""
    if resource.protect:
        details = (details + " protect=true").strip()
    return details


def render_tree(inventory: Inventory) -> str:
    lines: list[str] = []

    def visit(resource: Resource, prefix: str, last: bool) -> None:
        branch = "└─ " if last else "├─ "
        details = describe(resource)
        lines.append(f"{prefix}{branch}{resource.name}  [{resource.type}]" + (f"  {details}" if details else ""))
        children = inventory.children(resource.urn)
        for index, child in enumerate(children):
            visit(child, prefix + ("   " if last else "│  "), index == len(children) - 1)

    roots = inventory.children(None)
    for index, root in enumerate(roots):
        visit(root, "", index == len(roots) - 1)
    return "\n".join(lines)


def render_counts(inventory: Inventory) -> str:
    counts = inventory.type_counts()
    width = max((len(str(n)) for n in counts.values()), default=1)
    lines = [f"  {n:>{width}}  {token}" for token, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    components = sum(1 for r in inventory.resources if r.is_component)
    lines.append(
        f"  total: {len(inventory.resources)} resources ({components} components, "
        f"{len(inventory.resources) - components} cloud resources)"
    )
    return "\n".join(lines)
