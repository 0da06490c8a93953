"""Components built from minimal, explicit Args under the offline Pulumi mocks.

Component unit tests build what they test here, never through `stacks/*.yaml`: every value a
component receives is written below or passed by the test, so editing a stack file (or a
profile) changes no component test, and a test asserts the value it gave. The `*_args`
functions return one component's Args with small fixed values, any field overridable by
keyword; `platform` declares the components a test needs, wired the way infra/program.py
wires them (the cluster's Kubernetes provider, add-ons after the system nodes, endpoints in
the serving namespace), so edges between components stay testable.

Run a build under mocks with `tests.conftest.declare(lambda: platform(...))`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import pulumi

from components.alerts import AlertThresholds, EndpointObjective
from components.budget import BudgetArgs
from components.cluster import Cluster, ClusterArgs
from components.cluster_addons import ClusterAddons, ClusterAddonsArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.network import Network, NetworkArgs
from components.node_pools import GPU_RESOURCE, NodePools, NodePoolsArgs, PoolArgs
from components.registry import RegistryArgs
from components.serving import CanaryArgs, ServingEndpoint, ServingEndpointArgs, ServingPlane
from components.storage import StorageArgs
from components.tracking import CLUSTER_URL as TRACKING_CLUSTER_URL
from components.tracking import DatabaseArgs, SelfHostedTrackingArgs, TrackingServer
from components.training import RECEIVER_URL, PipelineArgs, Training, TrainingArgs
from infra.inventory import Inventory
from infra.offline import ACCOUNT_ID, run_offline
from infra.settings import CONFIG_NAMESPACE

REGION = "us-east-1"
"""The region `tests.conftest.declare` gives the mocks."""
PREFIX = "mlops-test"
"""Name prefix of everything `platform` declares, and the cluster's name."""
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/test-data-key"
ARTIFACT_BUCKET = f"{PREFIX}-artifacts"
REGISTRY = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/{PREFIX}"
SERVING_IMAGE = f"{REGISTRY}/serving:0.1.0@sha256:{'1' * 64}"
TRACKING_IMAGE = f"{REGISTRY}/tracking:3.17.2-1@sha256:{'2' * 64}"
TRAINING_IMAGE = f"{REGISTRY}/training:0.1.0@sha256:{'3' * 64}"
DATASETS_BUCKET = f"{PREFIX}-datasets"
RUNNER_CIDR = "10.0.0.0/19"
CERTIFICATE_ARN = f"arn:aws:acm:{REGION}:{ACCOUNT_ID}:certificate/00000000-0000-0000-0000-000000000000"
THRESHOLDS = AlertThresholds(
    error_ratio=0.01, gpu_idle_minutes=30, gpu_pending_minutes=15, drift_psi=0.2, drift_minutes=30
)
TAGS = {"stack": "test", "owner": "ml-platform"}
"""The platform tags `platform` hands the cluster and the node pools (what infra/tagging.py gives a stack)."""


def network_args(**overrides: Any) -> NetworkArgs:
    values: dict[str, Any] = dict(
        cidr="10.0.0.0/16", az_count=2, nat_gateways="single", interface_endpoints=(), cluster_name=PREFIX
    )
    return NetworkArgs(**{**values, **overrides})


def storage_args(**overrides: Any) -> StorageArgs:
    values: dict[str, Any] = dict(
        versioning=True,
        force_destroy=False,
        noncurrent_version_days=30,
        abort_incomplete_upload_days=7,
        datasets_infrequent_access_days=None,
        protect=False,
    )
    return StorageArgs(**{**values, **overrides})


def registry_args(**overrides: Any) -> RegistryArgs:
    values: dict[str, Any] = dict(
        namespace=PREFIX,
        repositories=("serving",),
        kms_key_arn=KEY_ARN,
        keep_images=20,
        force_delete=False,
        protect=False,
    )
    return RegistryArgs(**{**values, **overrides})


def budget_args(**overrides: Any) -> BudgetArgs:
    values: dict[str, Any] = dict(
        stack="test", monthly_usd=250, alert_threshold_percent=80, alert_emails=("team@example.com",)
    )
    return BudgetArgs(**{**values, **overrides})


def cluster_args(network: Network | None = None, **overrides: Any) -> ClusterArgs:
    """A private API endpoint reached from one runner range; the network's ids when given, literal ones otherwise."""
    values: dict[str, Any] = dict(
        cluster_name=PREFIX,
        kubernetes_version="1.35",
        vpc_id=network.vpc_id if network else "vpc-0test",
        subnet_ids=network.private_subnet_ids if network else ["subnet-0test"],
        endpoint_public_access=False,
        public_access_cidrs=(),
        log_types=("api", "audit"),
        log_retention_days=7,
        admin_role_arns={},
        system_instance_type="t3.medium",
        system_min_size=2,
        system_max_size=3,
        system_desired_size=2,
        deletion_protection=False,
        deploy_runner_cidrs=(RUNNER_CIDR,),
        deploy_runner_security_group_ids=(),
        instance_tags={**TAGS, "component": "cluster"},
    )
    return ClusterArgs(**{**values, **overrides})


def cpu_pool_args(**overrides: Any) -> PoolArgs:
    values: dict[str, Any] = dict(
        instance_families=("m6i",),
        instance_sizes=("large", "xlarge"),
        capacity_types=("spot", "on-demand"),
        limits={"cpu": "32"},
        consolidation_policy="WhenEmptyOrUnderutilized",
        consolidate_after="1m",
        expire_after="720h",
        root_volume_gi=50,
    )
    return PoolArgs(**{**values, **overrides})


def gpu_pool_args(**overrides: Any) -> PoolArgs:
    values: dict[str, Any] = dict(
        instance_families=("g5", "g6"),
        instance_sizes=("xlarge",),
        capacity_types=("spot",),
        limits={GPU_RESOURCE: "2"},
        consolidation_policy="WhenEmpty",
        consolidate_after="5m",
        expire_after="168h",
        root_volume_gi=100,
    )
    return PoolArgs(**{**values, **overrides})


@dataclass(frozen=True)
class Parts:
    """Args overrides per component for `platform`; a part left None is not declared (where it can be left out)."""

    network: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    addons: dict[str, Any] = field(default_factory=dict)
    pools: dict[str, Any] = field(default_factory=dict)
    monitoring: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None
    endpoints: Sequence[dict[str, Any]] = ()
    """One dict of `ServingEndpointArgs` overrides per endpoint (needs `tracking` and `monitoring`)."""
    pipelines: Sequence[dict[str, Any]] = ()
    """One dict of `PipelineArgs` overrides per pipeline, declared as one Training (needs `tracking` and
    `monitoring`); the tracking server gets a writer per pipeline, monitoring the receiver's route if one retrains."""
    training: dict[str, Any] = field(default_factory=dict)
    """`TrainingArgs` overrides (with `pipelines`)."""


@dataclass
class Platform:
    """What `platform` declared, for a test that wires one more component itself."""

    network: Network
    cluster: Cluster
    addons: ClusterAddons
    pools: NodePools
    monitoring: Monitoring | None = None
    tracking: TrackingServer | None = None
    endpoints: list[ServingEndpoint] = field(default_factory=list)
    training: Training | None = None


def on_cluster(cluster: Cluster, *, after_system_nodes: bool = False) -> pulumi.ResourceOptions:
    """Kubernetes objects use the cluster's provider; add-ons, pools and monitoring wait for the system nodes."""
    return pulumi.ResourceOptions(
        providers={"kubernetes": cluster.provider},
        depends_on=[cluster.system_node_group] if after_system_nodes else None,
    )


def addons_args(network: Network, cluster: Cluster, **overrides: Any) -> ClusterAddonsArgs:
    values: dict[str, Any] = dict(
        cluster_name=cluster.name,
        vpc_id=network.vpc_id,
        identity=cluster.identity,
        replicas=1,
        ebs_csi_version=None,
        resource_tags={**TAGS, "component": "k8s"},
    )
    return ClusterAddonsArgs(**{**values, **overrides})


DETACHED: dict[str, Any] = dict(identity=None, load_balancer_controller=None)
"""What an `*_args` factory gives for its neighbours when called without them (None): enough for checks of the
args alone, which declare nothing."""


def node_pools_args(cluster: Cluster | None, **overrides: Any) -> NodePoolsArgs:
    """The pools of `cluster`; without one (None), detached values for checks of the args alone."""
    neighbours: dict[str, Any] = (
        dict(
            cluster_endpoint="https://test.eks",
            cluster_security_group_id="sg-0test",
            identity=None,
            node_role=None,
            node_access=(),
        )
        if cluster is None
        else dict(
            cluster_endpoint=cluster.endpoint,
            cluster_security_group_id=cluster.security_group_id,
            identity=cluster.identity,
            node_role=cluster.karpenter_node_role,
            node_access=(cluster.karpenter_node_access,),
        )
    )
    values: dict[str, Any] = dict(
        cluster_name=PREFIX,
        **neighbours,
        ami_alias="al2023@latest",
        node_tags={**TAGS, "component": "node-pools"},
        replicas=1,
        cpu=cpu_pool_args(),
        gpu=gpu_pool_args(),
    )
    return NodePoolsArgs(**{**values, **overrides})


def compute(parts: Parts) -> Platform:
    """The network, the cluster, its add-ons and the node pools."""
    network = Network(f"{PREFIX}-net", network_args(**parts.network))
    cluster = Cluster(f"{PREFIX}-cluster", cluster_args(network, **parts.cluster))
    after_nodes = on_cluster(cluster, after_system_nodes=True)
    addons = ClusterAddons(f"{PREFIX}-addons", addons_args(network, cluster, **parts.addons), opts=after_nodes)
    pools = NodePools(f"{PREFIX}-pools", node_pools_args(cluster, **parts.pools), opts=after_nodes)
    return Platform(network=network, cluster=cluster, addons=addons, pools=pools)


def monitoring_args(built: Platform, **overrides: Any) -> MonitoringArgs:
    values: dict[str, Any] = dict(
        retention_days=7,
        storage_gb=20,
        storage_class=built.addons.storage_class,
        kms_key_arn=KEY_ARN,
        slack_webhook=None,
        slack_channel="#ml-alerts",
        thresholds=THRESHOLDS,
        endpoints=(),
        gpu_node_selector=built.pools.gpu_node_selector,
        gpu_toleration=built.pools.gpu_toleration,
        node_selector={},
        protect_secrets=False,
        volume_dependencies=(built.addons.storage_class_resource,),
        retrain_webhook_url=None,
    )
    return MonitoringArgs(**{**values, **overrides})


def tracking_args(built: Platform | None, **overrides: Any) -> SelfHostedTrackingArgs:
    """Self-hosted, on an internal ALB, one replica, the smallest database; without a platform (None), detached
    values for checks of the args alone."""
    database = DatabaseArgs(
        instance_class="db.t4g.micro",
        multi_az=False,
        allocated_storage_gb=20,
        backup_retention_days=1,
        engine_version="17",
    )
    values: dict[str, Any] = dict(
        artifact_bucket=ARTIFACT_BUCKET,
        artifact_bucket_arn=f"arn:aws:s3:::{ARTIFACT_BUCKET}",
        kms_key_arn=KEY_ARN,
        **_tracking_neighbours(built),
        image=TRACKING_IMAGE,
        replicas=1,
        database=database,
        exposure="internalAlb",
        certificate_arn=None,
        allowed_hosts=(),
        protect=False,
        ingress_group=f"{PREFIX}-internal",
        node_selector={},
        reader_endpoints=(),
        writer_models={},
    )
    return SelfHostedTrackingArgs(**{**values, **overrides})


def _tracking_neighbours(built: Platform | None) -> dict[str, Any]:
    if built is None:
        return dict(
            DETACHED,
            vpc_id="vpc-0test",
            vpc_cidr="10.0.0.0/16",
            load_balancer_cidrs=("10.0.192.0/22",),
            subnet_ids=("subnet-0test",),
            cluster_security_group_id="sg-0test",
        )
    return dict(
        vpc_id=built.network.vpc_id,
        vpc_cidr=built.network.vpc_cidr,
        load_balancer_cidrs=built.network.load_balancer_cidrs,
        subnet_ids=built.network.private_subnet_ids,
        cluster_security_group_id=built.cluster.security_group_id,
        identity=built.cluster.identity,
        load_balancer_controller=built.addons.load_balancer_controller,
    )


def _endpoint_neighbours(built: Platform | None, endpoint: str) -> dict[str, Any]:
    if built is None:
        return dict(
            DETACHED,
            tracking_url=TRACKING_CLUSTER_URL,
            tracking_reader_secret_arn="arn:aws:secretsmanager:test",
            load_balancer_cidrs=("10.0.192.0/22",),
            gpu_node_selector={},
            gpu_toleration={},
            monitoring_crds=None,
        )
    assert built.tracking is not None and built.monitoring is not None, "endpoints need tracking and monitoring parts"
    return dict(
        tracking_url=built.tracking.cluster_url,
        tracking_reader_secret_arn=built.tracking.reader_secret_arns[endpoint],
        identity=built.cluster.identity,
        load_balancer_cidrs=built.network.load_balancer_cidrs,
        gpu_node_selector=built.pools.gpu_node_selector,
        gpu_toleration=built.pools.gpu_toleration,
        load_balancer_controller=built.addons.load_balancer_controller,
        monitoring_crds=built.monitoring.release,
    )


def endpoint_args(built: Platform | None, **overrides: Any) -> ServingEndpointArgs:
    """One CPU endpoint `ep` serving model `m`, beside the platform's tracking server and monitoring; without a
    platform (None), detached values for checks of the args alone."""
    endpoint = overrides.get("endpoint", "ep")
    values: dict[str, Any] = dict(
        endpoint=endpoint,
        model="m",
        alias="champion",
        image=SERVING_IMAGE,
        min_replicas=1,
        max_replicas=2,
        cpu="500m",
        memory="1Gi",
        gpu=0,
        autoscaling_metric="cpu",
        autoscaling_target=70,
        canary=None,
        capture_fraction=0.05,
        artifact_bucket=ARTIFACT_BUCKET,
        artifact_bucket_arn=f"arn:aws:s3:::{ARTIFACT_BUCKET}",
        kms_key_arn=KEY_ARN,
        **_endpoint_neighbours(built, endpoint),
        ingress_group=f"{PREFIX}-internal",
        certificate_arn=None,
        node_selector={},
    )
    return ServingEndpointArgs(**{**values, **overrides})


def pipeline_args(**overrides: Any) -> PipelineArgs:
    """One CPU pipeline `p` training model `m` on demand (no schedule), retraining on no endpoint's drift."""
    values: dict[str, Any] = dict(
        name="p",
        model="m",
        entry_point="train.task:task",
        data="data/train.csv.dvc",
        image=TRAINING_IMAGE,
        schedule=None,
        cpu="1",
        memory="2Gi",
        gpu=0,
        scratch="10Gi",
        timeout_minutes=60,
        retries=1,
        params={},
        min_improvement=0.0,
        canary_alias=None,
        endpoint=None,
        retrain_min_interval_minutes=60,
    )
    return PipelineArgs(**{**values, **overrides})


def training_args(built: Platform, pipelines: Sequence[PipelineArgs], **overrides: Any) -> TrainingArgs:
    """`pipelines` reading the datasets bucket, writing to the platform's tracking server (a user each), placed
    on its GPU pool when they ask for GPUs, anywhere otherwise."""
    assert built.tracking is not None and built.monitoring is not None, "training needs tracking and monitoring parts"
    values: dict[str, Any] = dict(
        pipelines=tuple(pipelines),
        datasets_bucket=DATASETS_BUCKET,
        datasets_bucket_arn=f"arn:aws:s3:::{DATASETS_BUCKET}",
        kms_key_arn=KEY_ARN,
        region=REGION,
        identity=built.cluster.identity,
        tracking_url=built.tracking.cluster_url,
        tracking_passwords=built.tracking.writer_passwords,
        gpu_node_selector=built.pools.gpu_node_selector,
        gpu_toleration=built.pools.gpu_toleration,
        node_selector={},
        receiver_token=built.monitoring.retrain_token,
    )
    return TrainingArgs(**{**values, **overrides})


def platform(parts: Parts | None = None) -> Platform:
    """Declare the compute parts, then monitoring, tracking, endpoints and training where `parts` asks for them."""
    parts = parts or Parts()
    built = compute(parts)
    pipelines = [pipeline_args(**overrides) for overrides in parts.pipelines]
    if parts.monitoring is not None:
        route = {"retrain_webhook_url": RECEIVER_URL if any(p.endpoint for p in pipelines) else None}
        built.monitoring = Monitoring(
            f"{PREFIX}-monitoring",
            monitoring_args(built, **{**route, **parts.monitoring}),
            opts=on_cluster(built.cluster, after_system_nodes=True),
        )
    if parts.tracking is not None:
        users = {
            "reader_endpoints": tuple(e.get("endpoint", "ep") for e in parts.endpoints),
            "writer_models": {p.name: p.model for p in pipelines},
        }
        built.tracking = TrackingServer(
            f"{PREFIX}-tracking", tracking_args(built, **{**users, **parts.tracking}), opts=on_cluster(built.cluster)
        )
    if parts.endpoints:
        plane = ServingPlane(f"{PREFIX}-serving", opts=on_cluster(built.cluster))
        for overrides in parts.endpoints:
            args = endpoint_args(built, **overrides)
            built.endpoints.append(
                ServingEndpoint(
                    f"{PREFIX}-ep-{args.endpoint}",
                    args,
                    opts=pulumi.ResourceOptions(parent=plane, depends_on=[plane.namespace]),
                )
            )
    if pipelines:
        training = training_args(built, pipelines, **parts.training)
        built.training = Training(f"{PREFIX}-training", training, opts=on_cluster(built.cluster))
    return built


def objectives(*endpoints: tuple[str, int]) -> tuple[EndpointObjective, ...]:
    """Monitoring's per-endpoint latency objectives: `("ep", 250)` pairs."""
    return tuple(EndpointObjective(name, ms) for name, ms in endpoints)


def canary(alias: str = "challenger", weight: int = 10) -> CanaryArgs:
    return CanaryArgs(alias=alias, weight=weight)


def program_inventory(stack: str, settings: dict[str, Any]) -> Inventory:
    """The whole stack program (infra/program.py) run from explicit settings, no stack file: `settings` are the
    `mlops-platform:*` keys (a `profile` among them), as `pulumi config set` would give them."""
    from infra.program import main as program

    config = {
        "aws:region": REGION,
        **{f"{CONFIG_NAMESPACE}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()},
    }
    return run_offline(program, project=CONFIG_NAMESPACE, stack=stack, config=config)


PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "dev": {
        "cluster": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
        "endpoints": [{"name": "diabetes", "model": "diabetes"}],
    },
    "staging": {
        "cluster": {"deployRunnerCidrs": [RUNNER_CIDR]},
        "endpoints": [{"name": "diabetes", "model": "diabetes", "canary": {"alias": "challenger", "weight": 10}}],
    },
    "prod": {
        "cluster": {"deployRunnerCidrs": [RUNNER_CIDR]},
        "tracking": {"certificateArn": CERTIFICATE_ARN},
        "endpoints": [
            {"name": "diabetes", "model": "diabetes"},
            {"name": "reranker", "model": "reranker", "gpu": 1, "canary": {"alias": "challenger", "weight": 5}},
        ],
    },
}
"""The least each profile needs besides its defaults, and endpoints: a CPU one everywhere, canaries in staging
and prod, a GPU one in prod. Written here, not read from stacks/*.yaml."""


RETRAINING_SETTINGS: dict[str, Any] = {
    "registry": {"repositories": ["serving", "tracking", "drift", "training"]},
    "pipelines": [
        {
            "name": "diabetes",
            "model": "diabetes",
            "entryPoint": "examples.diabetes:task",
            "data": "data/diabetes.csv.dvc",
            "endpoint": "diabetes",
        }
    ],
}
"""Overrides for `profile_settings`: a training pipeline retrained on its endpoint's drift, which adds the
training namespace's CronJob, Secret and the drift receiver to a stack (they exist only with a pipeline)."""


def profile_settings(profile: str, **overrides: Any) -> dict[str, Any]:
    """`mlops-platform:*` settings of a stack of `profile` (PROFILE_SETTINGS), with top-level keys replaced."""
    base = {"profile": profile, "budget": {"alertEmails": ["team@example.com"]}, **PROFILE_SETTINGS[profile]}
    return {**base, **overrides}
