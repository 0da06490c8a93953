"""The stack program: read settings, then declare the platform's components in order.

``pulumi up`` runs this through ``infra/__main__.py``; the offline tools run the very same
``main`` under mocks. Settings are validated before the first resource is declared, so a bad
stack file changes nothing.
"""

from __future__ import annotations

from typing import Any, TypedDict

import pulumi
from pulumi.runtime import config as runtime_config

from components.alerts import AlertThresholds, EndpointObjective
from components.budget import Budget, BudgetArgs
from components.ci_access import CiAccess, CiAccessArgs
from components.cluster import SYSTEM_POOL_LABEL, Cluster, ClusterArgs
from components.cluster_addons import ClusterAddons, ClusterAddonsArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.network import Network, NetworkArgs
from components.node_pools import GPU_RESOURCE, NodePools, NodePoolsArgs, PoolArgs
from components.registry import Registry, RegistryArgs
from components.serving import CanaryArgs, ServingEndpoint, ServingEndpointArgs, ServingPlane
from components.storage import Storage, StorageArgs
from components.tracking import DatabaseArgs, ManagedTrackingArgs, SelfHostedTrackingArgs, TrackingServer
from components.training import RECEIVER_URL, PipelineArgs, Training, TrainingArgs
from infra.images import workload_images
from infra.settings import (
    CI_DEPLOY_ADMIN_KEY,
    CONFIG_NAMESPACE,
    AlertSettings,
    ClusterSettings,
    EndpointSettings,
    PlatformSettings,
    SettingsError,
    load_settings,
)
from infra.tagging import platform_tags, register_platform_tags
from services.training.dvc import DVC_PREFIX


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
                raw[key[len(prefix) :]] = json.loads(value) if value[:1] in "[{" else value
            except json.JSONDecodeError:
                raw[key[len(prefix) :]] = value
    return raw


def current_settings() -> PlatformSettings:
    region = pulumi.Config("aws").get("region")
    return load_settings(read_stack_config(), stack=pulumi.get_stack(), region=region)


def build(settings: PlatformSettings, images: dict[tuple[str, str], str]) -> None:
    """Declare every component of one environment.

    `images` holds the full reference of each workload image by `(repository, tag)` (see
    infra/images.py). With `deployWorkloads: false` it is empty and nothing that runs a platform
    image is declared: no self-hosted tracking server, no endpoint (the first deploy's phase 1)."""
    tags = platform_tags(env=settings.profile, stack=pulumi.get_stack(), owner=settings.owner)
    register_platform_tags(tags)
    network = _network(settings)
    storage, registry = _storage_and_registry(settings)
    ci = _ci_access(settings)
    cluster, node_pools, addons = _compute(
        settings, network, tags, ci_admins={CI_DEPLOY_ADMIN_KEY: ci.deploy.arn} if ci else {}
    )
    # Managed MLflow pulls no image of ours, so it belongs to phase 1 as well.
    workloads = settings.deploy_workloads
    tracking = (
        _tracking(settings, network, storage, cluster, addons, images)
        if workloads or settings.tracking.mode == "managed"
        else None
    )
    monitoring = _monitoring(settings, storage, cluster, node_pools, addons)
    endpoints = (
        _serving(settings, network, storage, cluster, addons, node_pools, tracking, monitoring, images)
        if tracking and workloads
        else []
    )
    if tracking is not None and workloads and settings.pipelines:
        _training(settings, storage, cluster, node_pools, tracking, monitoring, images)
    _budget(settings)
    _exports(settings, network, storage, registry, cluster, node_pools, ci, tracking, endpoints)


def _network(settings: PlatformSettings) -> Network:
    return Network(
        f"{settings.name_prefix}-net",
        NetworkArgs(
            cidr=settings.network.cidr,
            az_count=settings.network.az_count,
            nat_gateways=settings.network.nat_gateways,
            interface_endpoints=tuple(settings.network.interface_endpoints),
            cluster_name=settings.cluster_name,
        ),
    )


def _storage_and_registry(settings: PlatformSettings) -> tuple[Storage, Registry]:
    """The buckets and their KMS key, then the image repositories encrypted with that key."""
    prefix, protect = settings.name_prefix, settings.deletion_protection
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
    return storage, registry


def _budget(settings: PlatformSettings) -> Budget:
    return Budget(
        f"{settings.name_prefix}-budget",
        BudgetArgs(
            stack=pulumi.get_stack(),
            monthly_usd=settings.budget.monthly_usd,
            alert_threshold_percent=settings.budget.alert_threshold_percent,
            alert_emails=tuple(settings.budget.alert_emails),
        ),
    )


def _exports(
    settings: PlatformSettings,
    network: Network,
    storage: Storage,
    registry: Registry,
    cluster: Cluster,
    node_pools: NodePools,
    ci: CiAccess | None,
    tracking: TrackingServer | None,
    endpoints: list[ServingEndpoint],
) -> None:
    """The stack outputs: what CI, the README's commands and `dvc remote add` read after `pulumi up`."""
    pulumi.export("profile", settings.profile)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("privateSubnetIds", network.private_subnet_ids)
    pulumi.export("artifactBucket", storage.bucket_names["artifacts"])
    pulumi.export("datasetBucket", storage.bucket_names["datasets"])
    # the DVC remote of the stack's data versions: `dvc remote add -d platform $(pulumi stack output dvcRemote)`
    pulumi.export("dvcRemote", pulumi.Output.concat("s3://", storage.bucket_names["datasets"], "/", DVC_PREFIX))
    pulumi.export("dataKeyArn", storage.key_arn)
    pulumi.export("registryUrls", registry.repository_urls)
    pulumi.export("clusterName", cluster.name)
    pulumi.export("clusterEndpoint", cluster.endpoint)
    pulumi.export("karpenterInterruptionQueue", node_pools.queue_name)
    pulumi.export("deployWorkloads", settings.deploy_workloads)
    if ci is not None:
        pulumi.export("ciOidcProviderArn", ci.oidc_provider_arn)
        pulumi.export("ciDeployRoleArn", ci.deploy.arn)
        if ci.preview is not None:
            pulumi.export("ciPreviewRoleArn", ci.preview.arn)
    if tracking is not None:
        pulumi.export("trackingUrl", tracking.url)
    if tracking is not None and tracking.admin_secret_arn is not None:
        pulumi.export("trackingAdminSecretArn", tracking.admin_secret_arn)
    pulumi.export("endpointPaths", {e.endpoint: e.url_path for e in endpoints})


def _platform_node_selector(settings: PlatformSettings) -> dict[str, str]:
    """Where the platform's own pods run: on the system node group with `workloadPlacement: systemNodes`,
    anywhere (Karpenter's CPU pool) otherwise. GPU pods use the GPU pool's selector instead."""
    return dict(SYSTEM_POOL_LABEL) if settings.cluster.workload_placement == "systemNodes" else {}


def _ci_access(settings: PlatformSettings) -> CiAccess | None:
    """The GitHub Actions roles (README: Delivery); none unless `ci.githubRepository` is set."""
    ci = settings.ci
    if ci is None:
        return None
    return CiAccess(
        f"{settings.name_prefix}-ci",
        CiAccessArgs(
            name_prefix=settings.name_prefix,
            repository=ci.github_repository,
            deploy_environments=tuple(ci.deploy_environments),
            preview_role=ci.preview_role,
            oidc_provider_arn=ci.oidc_provider_arn,
            deploy_policy_arns=tuple(ci.deploy_policy_arns),
            state_bucket=ci.state_bucket,
            secrets_key_arn=ci.secrets_key_arn,
            max_session_seconds=ci.max_session_hours * 3600,
        ),
    )


def _monitoring(
    settings: PlatformSettings, storage: Storage, cluster: Cluster, node_pools: NodePools, addons: ClusterAddons
) -> Monitoring:
    m, a = settings.monitoring, settings.monitoring.alerts
    webhook = pulumi.Config(CONFIG_NAMESPACE).get_secret("alertSlackWebhook")
    return Monitoring(
        f"{settings.name_prefix}-monitoring",
        MonitoringArgs(
            retention_days=m.retention_days,
            storage_gb=m.storage_gb,
            kms_key_arn=storage.key_arn,
            slack_webhook=webhook,
            slack_channel=m.slack_channel,
            thresholds=alert_thresholds(a),
            endpoints=[EndpointObjective(e.name, e.latency_objective_ms) for e in settings.endpoints],
            gpu_node_selector=node_pools.gpu_node_selector,
            gpu_toleration=node_pools.gpu_toleration,
            node_selector=_platform_node_selector(settings),
            protect_secrets=settings.deletion_protection,
            storage_class=addons.storage_class,
            volume_dependencies=(addons.storage_class_resource,),
            retrain_webhook_url=RECEIVER_URL if _retrains_on_drift(settings) else None,
        ),
        # the Prometheus stack runs on the system nodes: it installs once the node group exists
        opts=pulumi.ResourceOptions(providers={"kubernetes": cluster.provider}, depends_on=[cluster.system_node_group]),
    )


def alert_thresholds(alerts: AlertSettings | None = None) -> AlertThresholds:
    """The alert rules' thresholds from a stack's `monitoring.alerts`; None: the settings' defaults (what
    `make local` and the rule tests use), so AlertThresholds repeats none of them."""
    return AlertThresholds(**(alerts or AlertSettings()).model_dump())


def _serving(
    settings: PlatformSettings,
    network: Network,
    storage: Storage,
    cluster: Cluster,
    addons: ClusterAddons,
    node_pools: NodePools,
    tracking: TrackingServer,
    monitoring: Monitoring,
    images: dict[tuple[str, str], str],
) -> list[ServingEndpoint]:
    if not settings.endpoints:
        return []
    on_cluster = pulumi.ResourceOptions(providers={"kubernetes": cluster.provider})
    plane = ServingPlane(f"{settings.name_prefix}-serving", opts=on_cluster)
    endpoints = []
    for e in settings.endpoints:
        endpoint = ServingEndpoint(
            f"{settings.name_prefix}-ep-{e.name}",
            ServingEndpointArgs(
                endpoint=e.name,
                model=e.model,
                alias=e.alias,
                image=images[("serving", e.image_tag)],
                min_replicas=e.replicas.min,
                max_replicas=e.replicas.max,
                cpu=e.cpu,
                memory=e.memory,
                gpu=e.gpu,
                autoscaling_metric=e.autoscaling.metric,
                autoscaling_target=e.autoscaling.target,
                canary=CanaryArgs(alias=e.canary.alias, weight=e.canary.weight) if e.canary else None,
                capture_fraction=e.capture_fraction,
                artifact_bucket=storage.bucket_names["artifacts"],
                artifact_bucket_arn=storage.bucket_arns["artifacts"],
                kms_key_arn=storage.key_arn,
                tracking_url=tracking.cluster_url,
                # the tracking server declares a reader secret for every endpoint (reader_endpoints in _tracking)
                tracking_reader_secret_arn=tracking.reader_secret_arns[e.name],
                identity=cluster.identity,
                load_balancer_cidrs=network.load_balancer_cidrs,
                gpu_node_selector=node_pools.gpu_node_selector,
                gpu_toleration=node_pools.gpu_toleration,
                ingress_group=f"{settings.name_prefix}-internal",
                certificate_arn=settings.tracking.certificate_arn,  # one certificate for the shared internal ALB
                node_selector=_platform_node_selector(settings),
                load_balancer_controller=addons.load_balancer_controller,
                monitoring_crds=monitoring.release,
            ),
            opts=pulumi.ResourceOptions(parent=plane, depends_on=[plane.namespace]),
        )
        endpoints.append(endpoint)
    return endpoints


def _retrains_on_drift(settings: PlatformSettings) -> bool:
    """A pipeline retrains on an endpoint's drift, and pipelines are declared (workloads on, self-hosted tracking)."""
    return (
        settings.deploy_workloads
        and settings.tracking.mode == "selfHosted"
        and any(p.endpoint for p in settings.pipelines)
    )


def _canary_alias(endpoints: dict[str, EndpointSettings], endpoint: str | None) -> str | None:
    """The canary alias of the pipeline's endpoint, or None (no endpoint, or one without a canary)."""
    canary = endpoints[endpoint].canary if endpoint else None
    return canary.alias if canary else None


def _training(
    settings: PlatformSettings,
    storage: Storage,
    cluster: Cluster,
    node_pools: NodePools,
    tracking: TrackingServer,
    monitoring: Monitoring,
    images: dict[tuple[str, str], str],
) -> Training:
    """The stack's pipelines as CronJobs (components/training.py); a pipeline's canary alias is its endpoint's."""
    endpoints = {e.name: e for e in settings.endpoints}
    pipelines = [
        PipelineArgs(
            name=p.name,
            model=p.model,
            entry_point=p.entry_point,
            data=p.data,
            image=images[("training", p.image_tag)],
            schedule=p.schedule,
            cpu=p.cpu,
            memory=p.memory,
            gpu=p.gpu,
            scratch=p.scratch,
            timeout_minutes=p.timeout_minutes,
            retries=p.retries,
            params=dict(p.params),
            min_improvement=p.min_improvement,
            canary_alias=_canary_alias(endpoints, p.endpoint),
            endpoint=p.endpoint,
            retrain_min_interval_minutes=p.retrain_min_interval_minutes,
        )
        for p in settings.pipelines
    ]
    return Training(
        f"{settings.name_prefix}-training",
        TrainingArgs(
            pipelines=pipelines,
            datasets_bucket=storage.bucket_names["datasets"],
            datasets_bucket_arn=storage.bucket_arns["datasets"],
            kms_key_arn=storage.key_arn,
            region=settings.region,
            identity=cluster.identity,
            tracking_url=tracking.cluster_url,
            tracking_passwords=tracking.writer_passwords,
            receiver_token=monitoring.retrain_token,
            gpu_node_selector=node_pools.gpu_node_selector,
            gpu_toleration=node_pools.gpu_toleration,
            node_selector=_platform_node_selector(settings),
        ),
        opts=pulumi.ResourceOptions(providers={"kubernetes": cluster.provider}),
    )


class _ArtifactStore(TypedDict):
    """The artifact-store arguments both tracking modes take (components/tracking._ArtifactStoreArgs)."""

    artifact_bucket: pulumi.Input[str]
    artifact_bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]


def _tracking(
    settings: PlatformSettings,
    network: Network,
    storage: Storage,
    cluster: Cluster,
    addons: ClusterAddons,
    images: dict[tuple[str, str], str],
) -> TrackingServer:
    t, db = settings.tracking, settings.database
    name = f"{settings.name_prefix}-tracking"
    on_cluster = pulumi.ResourceOptions(providers={"kubernetes": cluster.provider})
    store = _ArtifactStore(
        artifact_bucket=storage.bucket_names["artifacts"],
        artifact_bucket_arn=storage.bucket_arns["artifacts"],
        kms_key_arn=storage.key_arn,
    )
    if t.mode == "managed":
        return TrackingServer(name, ManagedTrackingArgs(**store, size=t.managed_size), opts=on_cluster)
    return TrackingServer(
        name,
        SelfHostedTrackingArgs(
            **store,
            vpc_id=network.vpc_id,
            vpc_cidr=network.vpc_cidr,
            load_balancer_cidrs=network.load_balancer_cidrs,
            subnet_ids=network.private_subnet_ids,
            cluster_security_group_id=cluster.security_group_id,
            identity=cluster.identity,
            image=images[("tracking", t.image_tag)],
            replicas=t.replicas,
            database=DatabaseArgs(
                instance_class=db.instance_class,
                multi_az=db.multi_az,
                allocated_storage_gb=db.allocated_storage_gb,
                backup_retention_days=db.backup_retention_days,
                engine_version=db.engine_version,
            ),
            exposure=t.exposure,
            certificate_arn=t.certificate_arn,
            allowed_hosts=tuple(t.allowed_hosts),
            protect=settings.deletion_protection,
            load_balancer_controller=addons.load_balancer_controller,
            ingress_group=f"{settings.name_prefix}-internal",
            node_selector=_platform_node_selector(settings),
            reader_endpoints=tuple(e.name for e in settings.endpoints),
            writer_models={p.name: p.model for p in settings.pipelines},
        ),
        opts=on_cluster,
    )


def _compute(
    settings: PlatformSettings,
    network: Network,
    tags: dict[str, str],
    ci_admins: dict[str, pulumi.Output[str]] | None = None,
) -> tuple[Cluster, NodePools, ClusterAddons]:
    """The EKS cluster, its add-ons and the Karpenter pools; Kubernetes objects use the cluster's provider.

    `ci_admins`: the CI deploy role by its access entry's key, `CI_DEPLOY_ADMIN_KEY` (it runs `pulumi up`
    and so manages the cluster's objects)."""
    c = settings.cluster
    cluster = _cluster(settings, network, tags, ci_admins or {})
    # add-ons and Karpenter run on the system nodes: they install once the node group exists
    after_system_nodes = pulumi.ResourceOptions(
        providers={"kubernetes": cluster.provider}, depends_on=[cluster.system_node_group]
    )
    addons = ClusterAddons(
        f"{settings.name_prefix}-addons",
        ClusterAddonsArgs(
            cluster_name=cluster.name,
            vpc_id=network.vpc_id,
            identity=cluster.identity,
            replicas=c.addon_replicas,
            ebs_csi_version=c.ebs_csi_version,
            resource_tags={**tags, "component": "k8s"},
        ),
        opts=after_system_nodes,
    )
    node_pools = NodePools(
        f"{settings.name_prefix}-pools",
        NodePoolsArgs(
            cluster_name=settings.cluster_name,
            cluster_endpoint=cluster.endpoint,
            cluster_security_group_id=cluster.security_group_id,
            identity=cluster.identity,
            node_role=cluster.karpenter_node_role,
            node_access=(cluster.karpenter_node_access,),
            ami_alias=c.ami_alias,
            node_tags={**tags, "component": "node-pools"},
            replicas=c.addon_replicas,
            cpu=_cpu_pool_args(c),
            gpu=_gpu_pool_args(c),
        ),
        opts=after_system_nodes,
    )
    return cluster, node_pools, addons


def _cpu_pool_args(c: ClusterSettings) -> PoolArgs:
    """The CPU pool: bin-packed within a minute of being under-used; nodes renewed monthly."""
    return PoolArgs(
        instance_families=tuple(c.cpu_pool.instance_families),
        instance_sizes=tuple(c.cpu_pool.instance_sizes),
        capacity_types=tuple(c.cpu_pool.capacity_types),
        limits={"cpu": str(c.cpu_pool.max_cpu)},
        consolidation_policy="WhenEmptyOrUnderutilized",
        consolidate_after="1m",
        expire_after="720h",
        root_volume_gi=50,
    )


def _gpu_pool_args(c: ClusterSettings) -> PoolArgs:
    """The GPU pool: a busy GPU node is never evicted for bin-packing; it goes once it is empty."""
    return PoolArgs(
        instance_families=tuple(c.gpu_pool.instance_families),
        instance_sizes=tuple(c.gpu_pool.instance_sizes),
        capacity_types=(c.gpu_pool.capacity_type,),
        limits={GPU_RESOURCE: str(c.gpu_pool.max_gpus)},
        consolidation_policy="WhenEmpty",
        consolidate_after=c.gpu_pool.consolidate_after,
        expire_after=c.gpu_pool.expire_after,
        root_volume_gi=100,
    )


def _cluster(
    settings: PlatformSettings, network: Network, tags: dict[str, str], ci_admins: dict[str, pulumi.Output[str]]
) -> Cluster:
    """The EKS control plane, its system node group and the identities of the platform's pods."""
    c = settings.cluster
    return Cluster(
        f"{settings.name_prefix}-cluster",
        ClusterArgs(
            cluster_name=settings.cluster_name,
            kubernetes_version=c.kubernetes_version,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            endpoint_public_access=c.endpoint_public_access,
            public_access_cidrs=tuple(c.public_access_cidrs),
            log_types=tuple(c.log_types),
            log_retention_days=c.log_retention_days,
            admin_role_arns={**c.admin_roles(), **ci_admins},  # keys name the entries: see admin_entry_key
            system_instance_type=c.system_node_group.instance_type,
            system_min_size=c.system_node_group.min_size,
            system_max_size=c.system_node_group.max_size,
            system_desired_size=c.system_node_group.desired_size,
            deletion_protection=settings.deletion_protection,
            deploy_runner_cidrs=tuple(c.deploy_runner_cidrs),
            deploy_runner_security_group_ids=tuple(c.deploy_runner_security_group_ids),
            instance_tags={**tags, "component": "cluster"},
        ),
    )


def main() -> None:
    try:
        settings = current_settings()
        images = workload_images(settings)  # looks the images up in the registry: nothing is declared yet
    except SettingsError as exc:
        # RunError prints the message without a Python traceback under the CLI.
        raise pulumi.RunError(str(exc)) from None
    build(settings, images)
