"""The stack program: read settings, then declare the platform's components in order.

``pulumi up`` runs this through ``infra/__main__.py``; the offline tools run the very same
``main`` under mocks. Settings are validated before the first resource is declared, so a bad
stack file changes nothing.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.budget import Budget, BudgetArgs
from components.network import Network, NetworkArgs
from components.registry import Registry, RegistryArgs
from components.storage import Storage, StorageArgs
from infra.settings import CONFIG_NAMESPACE, PlatformSettings, SettingsError, load_settings
from infra.tagging import platform_tags, register_platform_tags


def read_stack_config() -> dict[str, Any]:
    """Every ``mlops-platform:*`` key of the running stack, structured values decoded.

    ``pulumi.Config`` can only fetch keys by name; to reject unknown keys we need them all,
    so we read the runtime's config map (set by the CLI, or by the offline runner).
    """
    import json

    all_config = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = CONFIG_NAMESPACE + ":"
    raw: dict[str, Any] = {}
    for key, value in all_config.items():
        if key.startswith(prefix):
            try:
                raw[key[len(prefix):]] = json.loads(value) if value[:1] in "[{" else value
            except json.JSONDecodeError:
                raw[key[len(prefix):]] = value
    return raw


def current_settings() -> PlatformSettings:
    region = pulumi.Config("aws").get("region")
    return load_settings(read_stack_config(), stack=pulumi.get_stack(), region=region)


def build(settings: PlatformSettings) -> None:
    """Declare every component of one environment."""
    register_platform_tags(platform_tags(env=settings.profile, stack=pulumi.get_stack(), owner=settings.owner))
    prefix = settings.name_prefix
    protect = settings.deletion_protection

    network = Network(
        f"{prefix}-net",
        NetworkArgs(
            cidr=settings.network.cidr,
            az_count=settings.network.az_count,
            nat_gateways=settings.network.nat_gateways,
            interface_endpoints=tuple(settings.network.interface_endpoints),
            cluster_name=settings.cluster_name,
        ),
    )
    storage = Storage(
        f"{prefix}-storage",
        StorageArgs(
            versioning=settings.storage.versioning,
            force_destroy=settings.storage.force_destroy,
            noncurrent_version_days=settings.storage.noncurrent_version_days,
            abort_incomplete_upload_days=settings.storage.abort_incomplete_upload_days,
            datasets_infrequent_access_days=settings.storage.datasets_infrequent_access_days,
            protect=protect,
        ),
    )
    registry = Registry(
        f"{prefix}-registry",
        RegistryArgs(
            namespace=prefix,
            repositories=tuple(settings.registry.repositories),
            kms_key_arn=storage.key_arn,
            keep_images=settings.registry.keep_images,
            force_delete=settings.registry.force_delete,
            protect=protect,
        ),
    )
    Budget(
        f"{prefix}-budget",
        BudgetArgs(
            stack=pulumi.get_stack(),
            monthly_usd=settings.budget.monthly_usd,
            alert_threshold_percent=settings.budget.alert_threshold_percent,
            alert_emails=tuple(settings.budget.alert_emails),
        ),
    )

    pulumi.export("profile", settings.profile)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("privateSubnetIds", network.private_subnet_ids)
    pulumi.export("artifactBucket", storage.bucket_names["artifacts"])
    pulumi.export("datasetBucket", storage.bucket_names["datasets"])
    pulumi.export("dataKeyArn", storage.key_arn)
    pulumi.export("registryUrls", registry.repository_urls)


def main() -> None:
    try:
        settings = current_settings()
    except SettingsError as exc:
        # RunError prints the message without a Python traceback under the CLI.
        raise pulumi.RunError(str(exc)) from None
    build(settings)
