"""Args repeat no defaults (issue 15 item 3): a setting's default lives in infra/profiles.py or infra/settings.py,
once; the components' Args classes take every value from infra/program.py (or a test's explicit args), so a
default changed in a profile cannot be shadowed by a stale copy in a component."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import components

ARTIFACT_LAYOUT = "the server's own prefix in the bucket (tracking.ARTIFACT_PREFIX): a layout constant, not a setting"
ALLOWED_DEFAULTS: dict[tuple[str, str], str] = {
    (cls, "artifact_prefix"): ARTIFACT_LAYOUT
    for cls in ("_ArtifactStoreArgs", "ManagedTrackingArgs", "SelfHostedTrackingArgs")
}
"""(Args class, field) -> why it may keep a default. Anything else with a default fails the test below."""


def args_classes() -> dict[str, type]:
    """Every dataclass of components/ that a component takes as its arguments: `*Args`, and AlertThresholds."""
    found = {}
    for module in pkgutil.iter_modules(components.__path__):
        for name, value in vars(importlib.import_module(f"components.{module.name}")).items():
            if (
                dataclasses.is_dataclass(value)
                and isinstance(value, type)
                and (name.endswith("Args") or name == "AlertThresholds")
            ):
                found[name] = value
    return found


def defaults_of(cls: type) -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def test_no_args_field_has_a_default_of_its_own():
    classes = args_classes()
    assert {
        "NetworkArgs",
        "ClusterArgs",
        "NodePoolsArgs",
        "PoolArgs",
        "ClusterAddonsArgs",
        "MonitoringArgs",
        "AlertThresholds",
        "StorageArgs",
        "RegistryArgs",
        "BudgetArgs",
        "ServingEndpointArgs",
        "SelfHostedTrackingArgs",
        "PipelineArgs",
    } <= set(classes)
    unexpected = {
        name: sorted(f for f in defaults_of(cls) if (name, f) not in ALLOWED_DEFAULTS) for name, cls in classes.items()
    }
    assert {name: fields for name, fields in unexpected.items() if fields} == {}, (
        "the default belongs in infra/profiles.py or settings"
    )


def test_the_allowed_defaults_exist_and_say_why():
    classes = args_classes()
    stale = [(cls, f) for cls, f in ALLOWED_DEFAULTS if cls not in classes or f not in defaults_of(classes[cls])]
    assert stale == [], "remove these from ALLOWED_DEFAULTS: they have no default any more"
    assert all(len(reason) >= 20 for reason in ALLOWED_DEFAULTS.values())


@pytest.mark.parametrize("profile", ["dev", "staging", "prod"])
def test_the_profiles_give_every_value_the_args_no_longer_default(profile):
    """What the Args used to default (network, storage, registry, node pools, monitoring) comes from each profile."""
    from infra.profiles import profile_defaults

    defaults = profile_defaults(profile)
    assert {"cidr", "azCount", "natGateways", "interfaceEndpoints"} <= set(defaults["network"])
    assert {"versioning", "forceDestroy", "noncurrentVersionDays"} <= set(defaults["storage"])
    assert {"repositories", "keepImages", "forceDelete"} <= set(defaults["registry"])
    assert {"retentionDays", "storageGb"} <= set(defaults["monitoring"])
    assert {"addonReplicas", "amiAlias", "logTypes", "logRetentionDays", "systemNodeGroup"} <= set(defaults["cluster"])
    assert {"alertThresholdPercent"} <= set(defaults["budget"])
