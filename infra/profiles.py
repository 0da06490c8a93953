"""Per-environment defaults: every setting a stack file may override, for each profile.

A stack file picks a profile (``mlops-platform:profile: dev``) and overrides only what it
must; everything else comes from here. The dictionaries use the same camelCase keys and
nesting as the stack files, so reading a profile is reading "the stack file you would get
if you overrode nothing".

Why these numbers:
- dev is sized to idle for well under $250 a month: one NAT gateway, no interface
  endpoints, a burstable single-AZ database, spot GPUs capped at a few cards.
- prod trades money for blast radius: one NAT per AZ, three AZs, Multi-AZ database,
  private API endpoint, versioned buckets, deletion protection everywhere.
"""

from __future__ import annotations

from typing import Any

_SHARED: dict[str, Any] = {
    "owner": "ml-platform",
    # Every profile describes a stack in steady state. The first `pulumi up` of a new stack sets
    # `deployWorkloads: false` once (its registry does not exist yet); see README "First deploy".
    "deployWorkloads": True,
    "network": {
        "cidr": "10.0.0.0/16",
    },
    "registry": {
        "repositories": ["serving", "tracking", "drift"],
    },
    "tracking": {"mode": "selfHosted", "imageTag": "3.17.2-1", "exposure": "internalAlb"},
    "cluster": {
        "kubernetesVersion": "1.35",
        "adminRoleArns": [],
        "amiAlias": "al2023@latest",
        "cpuPool": {
            "instanceFamilies": ["m6i", "m7i", "c6i"],
            "instanceSizes": ["large", "xlarge", "2xlarge"],
        },
        "gpuPool": {
            "instanceFamilies": ["g5", "g6"],
            "instanceSizes": ["xlarge", "2xlarge"],
            "consolidateAfter": "5m",
            "expireAfter": "168h",
        },
    },
}

PROFILES: dict[str, dict[str, Any]] = {
    "dev": {
        "deletionProtection": False,
        "network": {"azCount": 2, "natGateways": "single", "interfaceEndpoints": []},
        "storage": {"versioning": False, "forceDestroy": True, "noncurrentVersionDays": 7},
        "registry": {"keepImages": 10, "forceDelete": True},
        "database": {
            "instanceClass": "db.t4g.micro",
            "multiAz": False,
            "allocatedStorageGb": 20,
            "backupRetentionDays": 1,
        },
        "cluster": {
            "endpointPublicAccess": True,
            "systemNodeGroup": {"instanceType": "t3.medium", "minSize": 2, "maxSize": 3, "desiredSize": 2},
            "addonReplicas": 1,
            "workloadPlacement": "systemNodes",
            "logTypes": ["api", "audit"],
            "logRetentionDays": 7,
            "cpuPool": {"capacityTypes": ["spot", "on-demand"], "maxCpu": 32},
            "gpuPool": {"capacityType": "spot", "maxGpus": 2},
        },
        "tracking": {"replicas": 1},
        "monitoring": {"retentionDays": 7, "storageGb": 20},
        "budget": {"monthlyUsd": 400, "alertThresholdPercent": 80},
    },
    "staging": {
        "deletionProtection": False,
        "network": {"azCount": 2, "natGateways": "single", "interfaceEndpoints": ["ecr.api", "ecr.dkr", "sts"]},
        "storage": {"versioning": True, "forceDestroy": True, "noncurrentVersionDays": 14},
        "registry": {"keepImages": 20, "forceDelete": True},
        "database": {
            "instanceClass": "db.t4g.small",
            "multiAz": False,
            "allocatedStorageGb": 20,
            "backupRetentionDays": 7,
        },
        "cluster": {
            "endpointPublicAccess": False,
            "systemNodeGroup": {"instanceType": "t3.large", "minSize": 2, "maxSize": 3, "desiredSize": 2},
            "addonReplicas": 1,
            "workloadPlacement": "pools",
            "logTypes": ["api", "audit", "authenticator"],
            "logRetentionDays": 30,
            "cpuPool": {"capacityTypes": ["spot", "on-demand"], "maxCpu": 64},
            "gpuPool": {"capacityType": "spot", "maxGpus": 4},
        },
        "tracking": {"replicas": 2},
        "monitoring": {"retentionDays": 15, "storageGb": 50},
        "budget": {"monthlyUsd": 1500, "alertThresholdPercent": 80},
    },
    "prod": {
        "deletionProtection": True,
        "network": {
            "azCount": 3,
            "natGateways": "perAz",
            "interfaceEndpoints": ["ecr.api", "ecr.dkr", "sts", "logs"],
        },
        "storage": {"versioning": True, "forceDestroy": False, "noncurrentVersionDays": 90},
        "registry": {"keepImages": 50, "forceDelete": False},
        "database": {
            "instanceClass": "db.m6g.large",
            "multiAz": True,
            "allocatedStorageGb": 100,
            "backupRetentionDays": 14,
        },
        "cluster": {
            "endpointPublicAccess": False,
            "systemNodeGroup": {"instanceType": "m6i.large", "minSize": 3, "maxSize": 6, "desiredSize": 3},
            "addonReplicas": 2,
            "workloadPlacement": "pools",
            "logTypes": ["api", "audit", "authenticator", "controllerManager", "scheduler"],
            "logRetentionDays": 90,
            "cpuPool": {"capacityTypes": ["on-demand"], "maxCpu": 256},
            "gpuPool": {"capacityType": "on-demand", "maxGpus": 16},
        },
        "tracking": {"replicas": 2},
        "monitoring": {"retentionDays": 30, "storageGb": 200},
        "budget": {"monthlyUsd": 8000, "alertThresholdPercent": 90},
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``override`` on ``base``: nested mappings merge key by key, anything else
    (scalars and lists) replaces the base value, so a stack can shorten a list."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_defaults(profile: str) -> dict[str, Any]:
    """The full default settings of one profile (shared defaults plus the profile's own)."""
    return deep_merge(_SHARED, PROFILES[profile])
