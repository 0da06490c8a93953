"""The one place that reads and validates stack configuration.

A stack file (``stacks/Pulumi.<stack>.yaml``) selects a profile and overrides a few keys;
``load_settings`` merges those overrides onto the profile's defaults and validates the whole
result with one typed model *before any resource is declared*. Every problem is reported at
once, naming the key as the user wrote it, the value found and what is allowed, e.g.::

    mlops-platform:network.natGateways: got "three"; allowed: "single", "perAz"

Secrets never pass through this model: they are read with ``pulumi.Config.require_secret``
where they are used, so they stay encrypted in state and never appear in a preview.
"""

from __future__ import annotations

import ipaddress
import json
import re
import typing
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from infra.profiles import PROFILES, deep_merge, profile_defaults

CONFIG_NAMESPACE = "mlops-platform"
SECRET_KEYS = ("alertSlackWebhook",)
"""Keys that hold secrets (`pulumi config set --secret`): read where used, never by this model."""
PROFILE_NAMES = tuple(PROFILES)

KUBERNETES_VERSIONS = ("1.33", "1.34", "1.35")
"""EKS versions in standard support that the pinned add-ons support (Karpenter 1.11: 1.29-1.35)."""

CPU_FAMILIES = ("t3", "m5", "m6i", "m7i", "c6i", "c7i", "r6i", "r7i")
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")
INSTANCE_SIZES = (
    "medium",
    "large",
    "xlarge",
    "2xlarge",
    "4xlarge",
    "8xlarge",
    "12xlarge",
    "16xlarge",
    "24xlarge",
    "48xlarge",
)
DB_INSTANCE_CLASSES = (
    "db.t4g.micro",
    "db.t4g.small",
    "db.t4g.medium",
    "db.t4g.large",
    "db.m6g.large",
    "db.m6g.xlarge",
    "db.m7g.large",
    "db.m7g.xlarge",
    "db.r6g.large",
    "db.r7g.large",
)
"""Graviton classes with known PostgreSQL prices (see infra/prices); add one with its price."""

LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
"""The only values CloudWatch Logs accepts for a log group's retention."""

_DURATION = re.compile(r"^\d+(s|m|h)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$")
_SECURITY_GROUP = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
_VPC_ADDRESS_SPACE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
"""Private ranges a VPC may use (RFC 1918, and RFC 6598 shared space): where a deploy runner can sit."""
_IMAGE_TAG = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""What a Docker tag may be (the registry refuses anything else)."""
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _cidr(value: str) -> str:
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IPv4 CIDR block ({exc})") from None
    return str(network)


def _vpc_cidr(value: str) -> str:
    network = ipaddress.IPv4Network(_cidr(value))
    if not 16 <= network.prefixlen <= 20:
        raise ValueError("the VPC block must be between /16 and /20 so each AZ gets a /19-/23 private subnet")
    return str(network)


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("entries must be unique")
    return values


def _matches(pattern: re.Pattern[str], what: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"not {what}")
        return value

    return check


CI_DEPLOY_ADMIN_KEY = "ci-deploy"
"""Key of the CI deploy role's cluster-admin access entry; no role in `cluster.adminRoleArns` may map to it."""


def admin_entry_key(role_arn: str) -> str:
    """What names a role's cluster-admin access entry: the role's name, without its path or account.

    Not its position in `cluster.adminRoleArns`: a renamed entry is replaced, and Pulumi creates the
    replacement while the old entry for the same principal still exists, which EKS refuses (409
    ResourceInUseException). Characters IAM allows in a name besides letters, digits, `.`, `_` and
    `-` (`+=,@`) become `-`, so the key reads well in a resource name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", role_arn.rsplit("/", 1)[-1])


Cidr = Annotated[str, AfterValidator(_cidr)]
Duration = Annotated[str, AfterValidator(_matches(_DURATION, "a duration such as 30s, 5m or 720h"))]
Email = Annotated[str, AfterValidator(_matches(_EMAIL, "an email address"))]
RoleArn = Annotated[str, AfterValidator(_matches(_ROLE_ARN, "an IAM role ARN (arn:aws:iam::123456789012:role/name)"))]
SecurityGroupId = Annotated[
    str, AfterValidator(_matches(_SECURITY_GROUP, "a security group id (sg- and 8 or 17 hex digits)"))
]
ImageDigest = Annotated[str, AfterValidator(_matches(_DIGEST, "an image digest: sha256: and 64 lowercase hex digits"))]
ImageTag = Annotated[
    str, AfterValidator(_matches(re.compile(_IMAGE_TAG), "a Docker tag (up to 128 letters, digits, '.', '_' or '-')"))
]


class _Section(BaseModel):
    """Base of every settings section: camelCase keys as in YAML, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
    )


class NetworkSettings(_Section):
    cidr: Annotated[str, AfterValidator(_vpc_cidr)]
    """VPC address block; split into one /19-sized private and one /24-sized public subnet per AZ."""
    az_count: int = Field(ge=2, le=3)
    """Availability zones to spread subnets across (EKS needs at least two)."""
    nat_gateways: Literal["single", "perAz"]
    """`single`: one NAT for all private subnets (cheap, one AZ's outage cuts egress); `perAz`: one per AZ."""
    interface_endpoints: Annotated[
        list[Literal["ecr.api", "ecr.dkr", "sts", "logs", "ec2", "sqs", "ssm"]], AfterValidator(_unique)
    ]
    """Private interface endpoints; each keeps that traffic off the NAT at ~$7.30 per AZ a month."""


class StorageSettings(_Section):
    versioning: bool
    """Keep old object versions (required in prod: protects models and datasets from overwrites)."""
    force_destroy: bool
    """Let `pulumi destroy` delete non-empty buckets (never in prod)."""
    noncurrent_version_days: int = Field(ge=1, le=3650)
    """Days an overwritten or deleted object version is kept before expiry."""
    abort_incomplete_upload_days: int = Field(default=7, ge=1, le=365)
    """Days before parts of an abandoned multipart upload are removed (they are billed while kept)."""
    datasets_infrequent_access_days: int | None = Field(default=None, ge=30)
    """Move dataset objects to STANDARD_IA after this many days; unset keeps them in STANDARD."""


class RegistrySettings(_Section):
    repositories: Annotated[
        list[Annotated[str, AfterValidator(_matches(re.compile(r"^[a-z][a-z0-9-_/]{1,60}$"), "a repository name"))]],
        AfterValidator(_unique),
    ] = Field(min_length=1)
    """One ECR repository per service image the platform builds."""
    keep_images: int = Field(ge=1, le=1000)
    """Tagged images kept per repository; older ones expire (untagged ones after a day)."""
    force_delete: bool
    """Let `pulumi destroy` delete repositories that still hold images (never in prod)."""


class DatabaseSettings(_Section):
    instance_class: Literal[DB_INSTANCE_CLASSES]  # type: ignore[valid-type]
    """RDS instance class of the tracking server's PostgreSQL."""
    multi_az: bool
    """Synchronous standby in a second AZ (doubles instance and storage cost; required in prod)."""
    allocated_storage_gb: int = Field(ge=20, le=65536)
    backup_retention_days: int = Field(ge=0, le=35)
    engine_version: Literal["16", "17"] = "17"
    """PostgreSQL major version; minor versions upgrade automatically in the maintenance window."""


class NodeGroupSettings(_Section):
    instance_type: str = Field(pattern=r"^[a-z][a-z0-9]*\.[a-z0-9]+$")
    min_size: int = Field(ge=1, le=10)
    max_size: int = Field(ge=1, le=10)
    desired_size: int = Field(ge=1, le=10)


class CpuPoolSettings(_Section):
    instance_families: Annotated[list[Literal[CPU_FAMILIES]], AfterValidator(_unique)] = Field(min_length=1)  # type: ignore[valid-type]
    instance_sizes: Annotated[list[Literal[INSTANCE_SIZES]], AfterValidator(_unique)] = Field(min_length=1)  # type: ignore[valid-type]
    capacity_types: Annotated[list[Literal["spot", "on-demand"]], AfterValidator(_unique)] = Field(min_length=1)
    max_cpu: int = Field(ge=0, le=10000)
    """Hard ceiling on vCPUs Karpenter may launch in this pool."""


class GpuPoolSettings(_Section):
    instance_families: Annotated[list[Literal[GPU_FAMILIES]], AfterValidator(_unique)] = Field(min_length=1)  # type: ignore[valid-type]
    instance_sizes: Annotated[list[Literal[INSTANCE_SIZES]], AfterValidator(_unique)] = Field(min_length=1)  # type: ignore[valid-type]
    capacity_type: Literal["spot", "on-demand"]
    max_gpus: int = Field(ge=0, le=512)
    """Hard ceiling on GPUs Karpenter may launch at once; 0 keeps the pool but never launches."""
    consolidate_after: Duration
    """Idle time after which an empty GPU node is removed (scale to zero)."""
    expire_after: Duration
    """Nodes are replaced after this age, so AMIs and drivers stay patched."""


class ClusterSettings(_Section):
    kubernetes_version: Literal[KUBERNETES_VERSIONS]  # type: ignore[valid-type]
    """EKS version, pinned; the add-on versions in components/versions.py are tested with these."""
    endpoint_public_access: bool
    """Expose the Kubernetes API endpoint publicly (to `publicAccessCidrs` only); never in prod."""
    public_access_cidrs: list[Cidr] = Field(default_factory=list)
    deploy_runner_cidrs: Annotated[list[Cidr], AfterValidator(_unique)] = Field(default_factory=list)
    """Private networks `pulumi up` runs from (a CI runner's subnet, a VPN range): HTTPS into the cluster
    security group, the only way to a private API endpoint. With `endpointPublicAccess: false`, this or
    `deployRunnerSecurityGroupIds` is required (README: Cluster and GPU node pools)."""
    deploy_runner_security_group_ids: Annotated[list[SecurityGroupId], AfterValidator(_unique)] = Field(
        default_factory=list
    )
    """Security groups of deploy runners (in this VPC, or a peered one in the same region), admitted like the CIDRs."""
    admin_role_arns: list[RoleArn]
    """IAM roles granted cluster-admin through EKS access entries, each named after its role's name (unique)."""
    log_types: Annotated[
        list[Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]], AfterValidator(_unique)
    ]
    log_retention_days: Literal[LOG_RETENTION_DAYS]  # type: ignore[valid-type]
    system_node_group: NodeGroupSettings
    """Managed, on-demand nodes for the add-ons (Karpenter must not run on nodes it manages)."""
    workload_placement: Literal["systemNodes", "pools"]
    """Where the tracking server and CPU endpoints run: `systemNodes` (dev: the always-on system nodes
    have room, so an idle stack launches no pool node) or `pools` (Karpenter's CPU pool)."""
    addon_replicas: int = Field(ge=1, le=3)
    """Replicas of Karpenter and the Load Balancer Controller."""
    ami_alias: str = Field(pattern=r"^al2023@(latest|v\d{8})$")
    """Karpenter EC2NodeClass AMI alias: `al2023@latest`, or a dated one such as `al2023@v20251117` to pin nodes."""
    ebs_csi_version: str | None = Field(default=None, pattern=r"^v\d+\.\d+\.\d+-eksbuild\.\d+$")
    """EBS CSI add-on version; unset takes AWS's default for the Kubernetes version."""
    cpu_pool: CpuPoolSettings
    gpu_pool: GpuPoolSettings

    def admin_roles(self) -> dict[str, str]:
        """`adminRoleArns` by `admin_entry_key`; validation (`_admin_role_problems`) made the keys unique."""
        return {admin_entry_key(arn): arn for arn in self.admin_role_arns}


class TrackingServerSettings(_Section):
    mode: Literal["selfHosted", "managed"]
    """`selfHosted`: MLflow on the cluster with RDS PostgreSQL; `managed`: SageMaker's managed MLflow."""
    replicas: int = Field(ge=1, le=5)
    image_tag: str = Field(pattern=_IMAGE_TAG)
    """Tag of the `tracking` image in the platform registry (built from services/tracking); never `latest`."""
    exposure: Literal["internalAlb", "clusterOnly"]
    """`internalAlb`: reachable inside the VPC (VPN, peered networks); `clusterOnly`: a ClusterIP Service."""
    certificate_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$"
    )
    """ACM certificate of the internal ALB that the tracking server and the model endpoints share: with it every
    one of them listens on HTTPS 443 only (no HTTP listener). Required in prod."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """DNS names clients use for the server (e.g. mlflow.internal.example.com)."""
    managed_size: Literal["Small", "Medium", "Large"] = "Small"


class ReplicaRange(_Section):
    min: int = Field(ge=1, le=100)
    max: int = Field(ge=1, le=100)


class AutoscalingSettings(_Section):
    metric: Literal["cpu", "rps"] = "cpu"
    """`cpu`: average CPU utilisation of the pods; `rps`: requests per second per pod (the monitoring
    component's prometheus-adapter serves it as the `serving_requests_per_second` pods metric)."""
    target: int = Field(default=70, ge=1, le=100000)
    """Percent of the CPU request for `cpu`; requests per second per pod for `rps`."""


class CanarySettings(_Section):
    alias: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    """Registered-model alias the canary serves (e.g. `challenger`)."""
    weight: int = Field(ge=1, le=99)
    """Percent of traffic sent to the canary; the stable version gets the rest."""


class EndpointSettings(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
    model: str = Field(min_length=1)
    """Registered model name in the tracking server."""
    alias: str = Field(default="champion", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    replicas: ReplicaRange = Field(default_factory=lambda: ReplicaRange(min=1, max=3))
    cpu: str = Field(default="500m", pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
    memory: str = Field(default="1Gi", pattern=r"^[0-9]+(Mi|Gi)$")
    gpu: int = Field(default=0, ge=0, le=8)
    """GPUs per pod; above zero the pods land on the GPU pool."""
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    canary: CanarySettings | None = None
    capture_fraction: float = Field(default=0.05, ge=0, le=1)
    """Share of requests and predictions captured to S3 for drift analysis."""
    image_tag: str = Field(default="0.1.0", pattern=_IMAGE_TAG)
    latency_objective_ms: int = Field(default=250, ge=1)
    """p99 latency objective; the monitoring alert fires above it."""


_DVC_FILE = re.compile(r"^(s3://[a-z0-9.-]+/)?[A-Za-z0-9_][^\s]*\.dvc$")
_CRON_FIELD = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_CRON = re.compile(
    rf"^{_CRON_FIELD}(,{_CRON_FIELD})*( "
    rf"{_CRON_FIELD}(,{_CRON_FIELD})*){{4}}$|^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$"
)
"""A standard 5-field cron schedule (what a Kubernetes CronJob accepts), or one of its macros."""


class PipelineSettings(_Section):
    """A training pipeline: one CronJob running the training image's runner (README: Training)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
    model: str = Field(min_length=1)
    """Registered model the pipeline trains (and promotes when the gate passes)."""
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`module:attribute` of the pipeline's Task in the image, e.g. `examples.diabetes:task`."""
    data: Annotated[
        str,
        AfterValidator(
            _matches(_DVC_FILE, "a .dvc file: a relative path in the training image, or s3://<bucket>/<key>.dvc")
        ),
    ]
    """The data's `.dvc` file: a path in the image, or an `s3://` URL of one in the datasets bucket."""
    schedule: (
        Annotated[
            str, AfterValidator(_matches(_CRON, 'a cron schedule of 5 fields (e.g. "0 3 * * 1") or @daily/@weekly/...'))
        ]
        | None
    ) = None
    """When it runs (UTC); unset: it runs only when started, by hand or on drift."""
    cpu: str = Field(default="1", pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
    memory: str = Field(default="4Gi", pattern=r"^[0-9]+(Mi|Gi)$")
    gpu: int = Field(default=0, ge=0, le=8)
    """GPUs per run; above zero the run lands on the GPU pool."""
    scratch: str = Field(default="10Gi", pattern=r"^[0-9]+(Mi|Gi)$")
    """Local disk for the data set and temporary files."""
    timeout_minutes: int = Field(default=60, ge=5, le=7 * 24 * 60)
    retries: int = Field(default=1, ge=0, le=5)
    """Job retries after a failed pod (its backoffLimit)."""
    image_tag: str = Field(default="0.1.0", pattern=_IMAGE_TAG)
    """Tag of the stack registry's `training` image (services/training) holding the runner and the task."""
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    """Hyperparameters over the task's defaults."""
    min_improvement: float = Field(default=0.01, ge=0, le=1)
    """How much better (a fraction of the champion's score) a new version must be to be promoted."""
    endpoint: str | None = None
    """The endpoint serving this model: its `DataDriftHigh` retrains the pipeline, and its canary alias gets passing
    versions first."""
    retrain_min_interval_minutes: int = Field(default=360, ge=5, le=10080)
    """At most one drift retraining of this pipeline per this many minutes."""


class AlertSettings(_Section):
    error_ratio: float = Field(default=0.01, gt=0, lt=1)
    gpu_idle_minutes: int = Field(default=30, ge=5)
    gpu_pending_minutes: int = Field(default=15, ge=1)
    drift_psi: float = Field(default=0.2, gt=0)
    drift_minutes: int = Field(default=30, ge=1)


class MonitoringSettings(_Section):
    retention_days: int = Field(ge=1, le=3650)
    """How long Prometheus keeps samples."""
    storage_gb: int = Field(ge=5, le=16384)
    """Prometheus volume (encrypted gp3)."""
    slack_channel: str = "#ml-alerts"
    """Where Alertmanager posts; the webhook itself is the secret `mlops-platform:alertSlackWebhook`."""
    alerts: AlertSettings = Field(default_factory=AlertSettings)


class BudgetSettings(_Section):
    monthly_usd: float = Field(gt=0)
    alert_threshold_percent: int = Field(ge=1, le=1000)
    alert_emails: list[Email] = Field(min_length=1)
    """Who is told when actual or forecast spend crosses the threshold."""


class WaiverSettings(_Section):
    rule: str = Field(pattern=r"^MLOPS-[A-Z0-9]+-\d{3}$")
    """The rule ID waived (see the README's rule list)."""
    resource: str = Field(min_length=1)
    """The logical name of the one resource it is waived for, as `check` prints it."""
    reason: str = Field(min_length=15)
    """Why this is acceptable, for the reviewer: shown in every `check` output."""


_GITHUB_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?/[A-Za-z0-9._-]{1,100}$")
"""`owner/name` as GitHub allows them: an owner of up to 39 letters, digits and inner hyphens; a name of letters,
digits, '.', '_', '-'."""
_GITHUB_ENVIRONMENT = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_GITHUB_OIDC_PROVIDER_ARN = re.compile(
    r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$"
)
_MANAGED_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ADMINISTRATOR_ACCESS = "arn:aws:iam::aws:policy/AdministratorAccess"


def _no_wildcard(what: str, pattern: re.Pattern[str], allowed: str):
    """A value that ends up in a role's trust policy: wildcards are refused by name, not just as bad characters."""

    def check(value: str) -> str:
        if any(c in value for c in "*?"):
            raise ValueError(
                f"wildcards are not allowed: a role whose trust names {what} with '*' or '?' trusts far more than one; "
                f"allowed: {allowed}"
            )
        if not pattern.match(value):
            raise ValueError(f"not {allowed}")
        return value

    return check


GithubRepository = Annotated[
    str,
    AfterValidator(
        _no_wildcard("the repository", _GITHUB_REPOSITORY, "one repository as owner/name, e.g. acme/mlops-platform")
    ),
]
GithubEnvironment = Annotated[
    str,
    AfterValidator(
        _no_wildcard(
            "the environment", _GITHUB_ENVIRONMENT, "a GitHub environment name (letters, digits, '.', '_', '-')"
        )
    ),
]
GithubOidcProviderArn = Annotated[
    str,
    AfterValidator(
        _matches(_GITHUB_OIDC_PROVIDER_ARN, "the ARN of an IAM OIDC provider for token.actions.githubusercontent.com")
    ),
]
ManagedPolicyArn = Annotated[
    str,
    AfterValidator(
        _matches(
            _MANAGED_POLICY_ARN,
            "a managed policy ARN (arn:aws:iam::aws:policy/Name or arn:aws:iam::123456789012:policy/name)",
        )
    ),
]


class CiSettings(_Section):
    """The roles a GitHub Actions runner of one repository assumes (README: Delivery). Off unless set."""

    github_repository: GithubRepository
    """`owner/name` of the repository whose workflows may assume the roles, exactly as GitHub spells it (the
    token's `sub` claim is compared case-sensitively). Required: there is no default that trusts a repository."""
    deploy_environments: Annotated[list[GithubEnvironment], AfterValidator(_unique)] = Field(
        default_factory=list, min_length=1
    )
    """GitHub environments whose jobs may assume the deploy role (`sub` = `repo:<repository>:environment:<name>`);
    default: the stack's name. Give each a protection rule (required reviewers, the main branch only)."""
    preview_role: bool = True
    """Create the read-only role pull requests assume for `pulumi preview` (`sub` =
    `repo:<repository>:pull_request`)."""
    oidc_provider_arn: GithubOidcProviderArn | None = None
    """An account has one provider per issuer: the first stack in an account creates it; every other stack in the
    same account sets this to that stack's `ciOidcProviderArn` output."""
    deploy_policy_arns: Annotated[list[ManagedPolicyArn], AfterValidator(_unique)] = Field(
        default_factory=lambda: [ADMINISTRATOR_ACCESS], min_length=1
    )
    """What `pulumi up` may do. AdministratorAccess by default: the program creates IAM roles, so a narrower policy
    is only as narrow as the roles it may create (README: Delivery, why the deploy role is broad)."""
    state_bucket: Annotated[str, AfterValidator(_matches(_S3_BUCKET, "an S3 bucket name"))] | None = None
    """The S3 bucket of a self-managed Pulumi backend (`s3://<bucket>`): the preview role may read its `.pulumi/`
    state."""
    secrets_key_arn: (
        Annotated[
            str, AfterValidator(_matches(_KMS_KEY_ARN, "a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)"))
        ]
        | None
    ) = None
    """The KMS key of an `awskms://` secrets provider: the preview role may decrypt the stack's secret config with
    it."""
    max_session_hours: int = Field(default=1, ge=1, le=12)
    """How long one assumed session lasts; a `pulumi up` longer than this fails mid-way, so raise it for prod's first
    up."""


class PlatformSettings(_Section):
    """Everything one stack needs, validated. Built only by ``load_settings``."""

    profile: Literal[PROFILE_NAMES]  # type: ignore[valid-type]
    region: Annotated[str, AfterValidator(_matches(_REGION, "an AWS region such as us-east-1"))]
    owner: str = Field(min_length=1, max_length=64)
    name_prefix: Annotated[str, AfterValidator(_matches(_NAME, "3-20 characters of a-z, 0-9 and -"))]
    """Prefix of every physical name (defaults to `mlops-<stack>`), so stacks sharing an account never clash."""
    deletion_protection: bool
    """Protect stateful resources (buckets, keys, registries, database) from deletion."""
    network: NetworkSettings
    storage: StorageSettings
    registry: RegistrySettings
    database: DatabaseSettings
    cluster: ClusterSettings
    tracking: TrackingServerSettings
    monitoring: MonitoringSettings
    endpoints: list[EndpointSettings] = Field(default_factory=list)
    """Model endpoints this stack serves."""
    pipelines: list[PipelineSettings] = Field(default_factory=list)
    """Training pipelines: one CronJob each, on the node pools (README: Training, data versions and retraining)."""
    budget: BudgetSettings
    deploy_workloads: bool
    """Create the workloads that run the platform's own images (the self-hosted tracking server, the model
    endpoints). `false` only for the first `pulumi up` of a stack: its registry is created by that same `up`,
    so there is nothing to pull yet (README: First deploy and teardown)."""
    image_digests: dict[str, dict[ImageTag, ImageDigest]] = Field(default_factory=dict)
    """Digests recorded by whoever pushed the images (CI): `{<repository>: {<tag>: "sha256:..."}}`. Optional:
    `pulumi up` reads the digest of each tag from the registry; a recorded one must agree with it."""
    waivers: list[WaiverSettings] = Field(default_factory=list)
    """Reviewed exceptions to the checks: one rule, one resource, a reason."""
    ci: CiSettings | None = None
    """The GitHub Actions roles of this stack (README: Delivery); none unless `ci.githubRepository` is set."""

    @property
    def cluster_name(self) -> str:
        """The EKS cluster's fixed name: subnets and security groups are tagged with it before it exists."""
        return self.name_prefix


class SettingsError(ValueError):
    """Stack configuration is invalid; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid stack settings:\n  " + "\n  ".join(problems))


def load_settings(raw: Mapping[str, Any], *, stack: str, region: str | None) -> PlatformSettings:
    """Validate a stack's config (keys without the ``mlops-platform:`` prefix) onto its profile.

    Raises ``SettingsError`` listing every problem; nothing is declared before this returns.
    """
    raw = {k: v for k, v in raw.items() if k not in SECRET_KEYS}
    profile = raw.pop("profile", None)
    if profile not in PROFILES:
        allowed = ", ".join(json.dumps(p) for p in PROFILE_NAMES)
        got = "nothing" if profile is None else json.dumps(profile)
        raise SettingsError([f"{CONFIG_NAMESPACE}:profile: got {got}; allowed: {allowed}"])
    if region is None:
        raise SettingsError(["aws:region: required (for example `pulumi config set aws:region us-east-1`)"])

    merged = deep_merge(profile_defaults(profile), raw)
    merged.update(profile=profile, region=region)
    merged.setdefault("namePrefix", f"mlops-{stack}")
    if isinstance(merged.get("ci"), dict) and "deployEnvironments" not in merged["ci"]:
        merged["ci"] = {
            **merged["ci"],
            "deployEnvironments": [stack],
        }  # one GitHub environment per stack, named like it
    try:
        settings = PlatformSettings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None

    problems = _cross_field_problems(settings)
    if problems:
        raise SettingsError(problems)
    return settings


# Prod invariants: (key as written in YAML, getter, required value). They cannot be relaxed by
# a stack file; a team that truly needs a weaker prod must change this table in review.
PROD_INVARIANTS: tuple[tuple[str, Any, Any], ...] = (
    ("deletionProtection", lambda s: s.deletion_protection, True),
    ("database.multiAz", lambda s: s.database.multi_az, True),
    ("cluster.endpointPublicAccess", lambda s: s.cluster.endpoint_public_access, False),
    ("storage.versioning", lambda s: s.storage.versioning, True),
    ("storage.forceDestroy", lambda s: s.storage.force_destroy, False),
    ("registry.forceDelete", lambda s: s.registry.force_delete, False),
)


def _problem(key: str, message: str) -> str:
    """One settings problem as the error lists it: the full config key, then what is wrong."""
    return f"{CONFIG_NAMESPACE}:{key}: {message}"


def _unpinned_tag(key: str, tag: str, example: str = "") -> list[str]:
    """An image tag must name a version: `latest` moves under a running stack (rule MLOPS-K8S-008 checks the
    manifests)."""
    return (
        [_problem(key, 'got "latest"; pin a version' + (f" (for example {example})" if example else ""))]
        if tag == "latest"
        else []
    )


def _cross_field_problems(s: PlatformSettings) -> list[str]:
    """Rules that span several keys, checked after each key is individually valid."""
    problems = [*_prod_problems(s), *_cluster_problems(s), *_admin_role_problems(s)]

    from infra.checks.rules import rule_by_id  # the rule list, without a settings import cycle

    for index, waiver in enumerate(s.waivers):
        if rule_by_id(waiver.rule) is None:
            problems.append(
                _problem(
                    f"waivers[{index}].rule",
                    f'got "{waiver.rule}"; no such rule (see `python -m infra.cli check --list-rules`)',
                )
            )
    problems.extend(_endpoint_problems(s))
    if s.endpoints and s.tracking.mode == "managed":
        problems.append(
            _problem(
                "endpoints",
                "model endpoints read models from the self-hosted tracking server; set tracking.mode: selfHosted "
                "(managed MLflow needs SigV4 clients, not supported by the model server yet)",
            )
        )
    problems.extend(_pipeline_problems(s))
    problems.extend(_unpinned_tag("tracking.imageTag", s.tracking.image_tag, example="3.17.2-1"))
    if s.database.multi_az and s.network.az_count < 2:
        problems.append(_problem("database.multiAz", "needs network.azCount of at least 2"))
    problems.extend(_image_problems(s))
    return problems


def _prod_problems(s: PlatformSettings) -> list[str]:
    """The prod profile's invariants, backup retention, and HTTPS on the internal ALB."""
    if s.profile != "prod":
        return []
    problems = []
    for key, get, required in PROD_INVARIANTS:
        if get(s) != required:
            problems.append(
                _problem(
                    key, f"got {json.dumps(get(s))}; the prod profile requires {json.dumps(required)} (prod invariant)"
                )
            )
    if s.database.backup_retention_days < 7:
        problems.append(
            _problem(
                "database.backupRetentionDays",
                f"got {s.database.backup_retention_days}; the prod profile requires at least 7",
            )
        )
    internal_alb = s.endpoints or (s.tracking.mode == "selfHosted" and s.tracking.exposure == "internalAlb")
    if internal_alb and not s.tracking.certificate_arn:
        problems.append(
            _problem(
                "tracking.certificateArn",
                "required in prod: the internal ALB of the tracking server and the model endpoints "
                "then listens on HTTPS 443 only, so passwords and model inputs never cross the VPC in plain HTTP; "
                "an ACM "
                "certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/<id> (README: HTTPS on the "
                "internal ALB)",
            )
        )
    return problems


def _cluster_problems(s: PlatformSettings) -> list[str]:
    """Who reaches the API server (public CIDRs, deploy runners), and the system node group's sizes."""
    problems = []

    def add(key: str, message: str) -> None:
        problems.append(_problem(key, message))

    c = s.cluster
    if c.endpoint_public_access and not c.public_access_cidrs:
        add("cluster.publicAccessCidrs", "required when cluster.endpointPublicAccess is true (an allow-list of CIDRs)")
    for cidr in c.public_access_cidrs:
        if ipaddress.IPv4Network(cidr).prefixlen == 0:
            add(
                "cluster.publicAccessCidrs",
                f'got "{cidr}"; opening the API server to the whole internet is not allowed',
            )
    if not c.endpoint_public_access and c.public_access_cidrs:
        add(
            "cluster.publicAccessCidrs",
            "set, but cluster.endpointPublicAccess is false; remove it or enable public access",
        )
    if not c.endpoint_public_access and not (c.deploy_runner_cidrs or c.deploy_runner_security_group_ids):
        add(
            "cluster.deployRunnerCidrs",
            "required when cluster.endpointPublicAccess is false: the private API endpoint admits "
            "only these networks (or cluster.deployRunnerSecurityGroupIds), so without one `pulumi up` cannot "
            "install the "
            "add-ons; set the CI runner's subnet, e.g. the first private subnet (README: Reaching a private API "
            "endpoint)",
        )
    for cidr in c.deploy_runner_cidrs:
        if not any(ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network(space)) for space in _VPC_ADDRESS_SPACE):
            add(
                "cluster.deployRunnerCidrs",
                f'got "{cidr}"; allowed: ranges inside {", ".join(_VPC_ADDRESS_SPACE)} (what a VPC, '
                "a peering or a VPN routes); a runner on the internet uses cluster.endpointPublicAccess with "
                "publicAccessCidrs instead",
            )

    ng = c.system_node_group
    if ng.min_size > ng.max_size:
        add("cluster.systemNodeGroup.minSize", f"got {ng.min_size}, above maxSize {ng.max_size}")
    elif not ng.min_size <= ng.desired_size <= ng.max_size:
        add(
            "cluster.systemNodeGroup.desiredSize",
            f"got {ng.desired_size}; must lie between minSize {ng.min_size} and maxSize {ng.max_size}",
        )
    return problems


def _admin_role_problems(s: PlatformSettings) -> list[str]:
    """Each admin role's name names its access entry (`admin_entry_key`), so no two may share one.

    Two roles of one account never share a name; two accounts' roles, or names that differ only in
    `+=,@`, can. Refused rather than numbered: a number would again depend on the list's order."""
    found = []
    by_key: dict[str, list[str]] = {}
    for arn in s.cluster.admin_role_arns:
        by_key.setdefault(admin_entry_key(arn), []).append(arn)
    for key, arns in by_key.items():
        distinct = list(dict.fromkeys(arns))
        found += [f'got "{arn}" twice; a principal has one access entry' for arn in distinct if arns.count(arn) > 1]
        if len(distinct) > 1:
            got = " and ".join(f'"{arn}"' for arn in distinct)
            found.append(
                f'got {got}; {"both" if len(distinct) == 2 else "all"} name their access entry "{key}" (the role name, '
                "other characters than letters, digits, '.', '_' and '-' as '-'); keep one of them"
            )
        if key == CI_DEPLOY_ADMIN_KEY and s.ci is not None:
            found.append(
                f'got "{distinct[0]}"; its access entry would be named "{key}", the name of the CI deploy role\'s '
                "(ci is set), which is cluster-admin already; remove it or rename the role"
            )
    return [_problem("cluster.adminRoleArns", message) for message in found]


def _endpoint_problems(s: PlatformSettings) -> list[str]:
    """Endpoints: unique names, replica bounds, GPUs the pool can give, a distinct canary alias, a pinned image."""
    problems = []
    names = [e.name for e in s.endpoints]
    for index, endpoint in enumerate(s.endpoints):
        key = f"endpoints[{index}]"
        if names.count(endpoint.name) > 1:
            problems.append(_problem(f"{key}.name", f'got "{endpoint.name}" twice; endpoint names must be unique'))
        if endpoint.replicas.min > endpoint.replicas.max:
            problems.append(
                _problem(
                    f"{key}.replicas.min", f"got {endpoint.replicas.min}, above replicas.max {endpoint.replicas.max}"
                )
            )
        if endpoint.gpu and endpoint.gpu * endpoint.replicas.min > s.cluster.gpu_pool.max_gpus:
            problems.append(
                _problem(
                    f"{key}.gpu",
                    f"needs {endpoint.gpu * endpoint.replicas.min} GPUs at minimum replicas; "
                    f"cluster.gpuPool.maxGpus is {s.cluster.gpu_pool.max_gpus}",
                )
            )
        if endpoint.canary and endpoint.canary.alias == endpoint.alias:
            problems.append(
                _problem(f"{key}.canary.alias", f'got "{endpoint.canary.alias}", the same alias as the stable version')
            )
        problems.extend(_unpinned_tag(f"{key}.imageTag", endpoint.image_tag))
    return problems


def _pipeline_problems(s: PlatformSettings) -> list[str]:
    """Pipelines: unique names, an existing endpoint serving the same model, GPUs the pool can give."""
    problems = []
    names = [p.name for p in s.pipelines]
    endpoints = {e.name: e for e in s.endpoints}
    for index, p in enumerate(s.pipelines):
        key = f"{CONFIG_NAMESPACE}:pipelines[{index}]"
        if p.name in names[:index]:
            problems.append(f'{key}.name: got "{p.name}" twice; pipeline names must be unique')
        if p.endpoint is not None and p.endpoint not in endpoints:
            allowed = ", ".join(json.dumps(e) for e in endpoints) or "none (this stack has no endpoints)"
            problems.append(f'{key}.endpoint: got "{p.endpoint}"; allowed: {allowed}')
        elif p.endpoint is not None and endpoints[p.endpoint].model != p.model:
            problems.append(
                f'{key}.endpoint: "{p.endpoint}" serves model "{endpoints[p.endpoint].model}", not this '
                f'pipeline\'s "{p.model}"'
            )
        if p.gpu > s.cluster.gpu_pool.max_gpus:
            problems.append(f"{key}.gpu: got {p.gpu}; cluster.gpuPool.maxGpus is {s.cluster.gpu_pool.max_gpus}")
        problems.extend(_unpinned_tag(f"pipelines[{index}].imageTag", p.image_tag))
    if s.pipelines and s.tracking.mode == "managed":
        problems.append(
            f"{CONFIG_NAMESPACE}:pipelines: training pipelines log in to the self-hosted tracking server with "
            "their own users; "
            "set tracking.mode: selfHosted"
        )
    return problems


def _image_problems(s: PlatformSettings) -> list[str]:
    """Every image a workload runs, and every recorded digest, must name a repository this stack creates:
    the stack can pull only from its own registry."""
    repositories = s.registry.repositories
    allowed = ", ".join(json.dumps(r) for r in repositories)
    problems = []
    needed = {"tracking": "the self-hosted tracking server"} if s.tracking.mode == "selfHosted" else {}
    if s.endpoints:
        needed["serving"] = "the model endpoints"
    if s.pipelines:
        needed["training"] = "the training pipelines"
    for repository, user in needed.items():
        if repository not in repositories:
            problems.append(
                f'{CONFIG_NAMESPACE}:registry.repositories: got [{allowed}]; must include "{repository}": '
                f"the stack pulls the image of {user} from its own registry"
            )
    for repository in s.image_digests:
        if repository not in repositories:
            problems.append(
                f"{CONFIG_NAMESPACE}:imageDigests.{repository}: not a repository of this stack; allowed: {allowed}"
            )
    return problems


def _describe(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into lines that name the YAML key, the value and what is allowed."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [
            part
            for part in error["loc"]
            if not isinstance(part, str) or not (part.startswith("function-") or part == "[key]")
        ]
        key = _key_path(loc)
        value = error.get("input")
        ctx = error.get("ctx") or {}
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc[:-1]))
            lines.append(f"{CONFIG_NAMESPACE}:{key}: unknown key; allowed keys here: {allowed}")
            continue
        if kind == "missing":
            lines.append(f"{CONFIG_NAMESPACE}:{key}: required")
            continue
        if kind == "literal_error":
            expected = "allowed: " + ctx["expected"].replace("'", '"').replace(" or ", ", ")
        elif kind in ("too_short", "string_too_short"):
            count = ctx.get("min_length", 1)
            unit = ("character", "characters") if kind == "string_too_short" else ("entry", "entries")
            expected = f"expected at least {count} {unit[count != 1]}"
        elif kind == "value_error":
            expected = str(ctx.get("error", error["msg"]))
        else:
            expected = "expected " + re.sub(r"^(Input|Value) should (be|have) ", "", error["msg"])
        lines.append(f"{CONFIG_NAMESPACE}:{key}: got {_show(value)}; {expected}")
    return lines


def _key_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _allowed_keys(loc: list[Any]) -> list[str]:
    """The camelCase keys valid at ``loc`` (a path of YAML keys), for 'unknown key' messages."""
    model: type[BaseModel] = PlatformSettings
    for part in loc:
        if isinstance(part, int):
            continue
        field = next(f for name, f in model.model_fields.items() if to_camel(name) == part)
        model = _model_in(field.annotation)
    return sorted(to_camel(name) for name in model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel]:
    """The settings model inside a field's type: `X`, `list[X]`, `X | None`, `dict[str, X]`, `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        try:
            return _model_in(argument)
        except TypeError:
            continue
    raise TypeError(f"no settings model in {annotation!r}")


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
