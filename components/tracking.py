"""TrackingServer: MLflow experiment tracking and model registry, self-hosted or managed.

Self-hosted (default), in dependency order: the database's subnet group, security group
(PostgreSQL only from the cluster's security group) and parameter group (TLS required); an
encrypted RDS PostgreSQL instance whose master password RDS generates and keeps in Secrets
Manager; the admin password, Flask secret key, the server's own database password, one
read-only user password per model endpoint and one user password per training pipeline
(services/tracking/writers.py), generated here and kept in Secrets Manager; the
workload role (read/write its own artifact prefix, read its secrets); the namespace
(restricted Pod Security), service account, migration Job, Deployment, Service,
PodDisruptionBudget and NetworkPolicy; and an internal ALB Ingress.

The migration Job is named after the image, so a new server version runs `migrate` first,
and the Deployment depends on it: Pulumi waits for the Job to finish before rolling out.
`migrate` logs in as the RDS master user with the secret as it is at that moment (RDS rotates
it weekly) and keeps the server's own role in step; the server never uses the master login,
so a rotation does not reach it (services/tracking/database.py).

Managed (`tracking.mode: managed`): a SageMaker MLflow tracking server with its own role on
the same artifact prefix. Same outputs, no database or Deployment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.identity import OidcIdentity, RoleWithPolicies, workload_role
from components.k8s_workload import (
    ALB_READINESS_GATE_LABELS,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TMP_MOUNT,
    TMP_VOLUME,
    alb_ingress_spec,
    aws_api_egress_rule,
    disruption_budget,
    dns_egress_rule,
    env_list,
    http_probe,
    internal_alb_annotations,
    load_balancer_ingress,
    pinned_image,
    resources,
    restricted_namespace_labels,
    zone_spread,
)
from services.tracking.auth import reader_username

TOKEN = "mlops:tracking:TrackingServer"
NAMESPACE = "mlflow"
SERVICE_ACCOUNT = "mlflow-tracking"
SERVICE = "mlflow-tracking"
"""The server's Service, Deployment and Ingress name."""
CONTAINER = "mlflow"
"""The server's container in its Deployment (dashboards select it)."""
PORT = 5000
DEREGISTRATION_DELAY_SECONDS = 25
"""The ALB's deregistration delay for the server's target group (AWS's default is 300 s): the pod gets
SIGTERM as it is deregistered and is killed after Kubernetes' default grace period (30 s), so the ALB
gives requests in flight at most 25 s and has ended them all before the kill."""
ARTIFACT_PREFIX = "mlflow"
APP_LABELS = {"app.kubernetes.io/name": "mlflow-tracking", "app.kubernetes.io/part-of": "mlops-platform"}
CLIENT_NAMESPACE_LABEL = "mlops.platform/tracking-client"
"""Namespaces with this label set to "true" may reach the tracking server (serving, jobs)."""
SERVER_LABELS = {**APP_LABELS, "app.kubernetes.io/component": "server"}
"""The server's pods, and its Service's selector (the migrate and ensure-user Jobs carry only APP_LABELS)."""
CLUSTER_HOST = f"{SERVICE}.{NAMESPACE}.svc.cluster.local:{PORT}"
CLUSTER_URL = f"http://{CLUSTER_HOST}"
"""The one in-cluster address of the server (model servers, training runs, the ensure-user Job).

The Service listens on the container's own port, and so does this URL: the VPC CNI's network
policy agent admits traffic sent to a ClusterIP only when the Service port equals the container
port (EKS user guide, "network policy considerations"; aws/aws-network-policy-agent#166), so a
Service mapping 80 to 5000 would be dropped by clients' egress rules that allow 5000."""


def client_egress_rule() -> dict:
    """The egress rule a client's NetworkPolicy needs for CLUSTER_URL: the server's pods, on PORT.

    The peer's podSelector equals the Service's selector, which is how the network policy
    controller decides that the Service's ClusterIP belongs to the rule as well."""
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "podSelector": {"matchLabels": dict(SERVER_LABELS)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": PORT}],
    }


DATABASE_DRIVER = "postgresql+psycopg2"
"""SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3; the image ships psycopg2
(services/tracking/requirements.txt), so the URI names it."""


def database_uri(address: str, database: str, *, sslmode: str = "require") -> str:
    """URI template of one of the server's databases at `address` (host:port). The entrypoint
    fills `{user}`/`{password}`: the master login for `migrate`, the server's own for `serve`."""
    return f"{DATABASE_DRIVER}://{{user}}:{{password}}@{address}/{database}?sslmode={sslmode}"


@dataclass(frozen=True, kw_only=True)
class DatabaseArgs:
    """The RDS PostgreSQL instance (values from the stack's `database` settings and its profile)."""

    instance_class: str
    multi_az: bool
    allocated_storage_gb: int
    backup_retention_days: int
    engine_version: str


@dataclass(frozen=True, kw_only=True)
class _ArtifactStoreArgs:
    """What both modes share: the artifact store."""

    artifact_bucket: pulumi.Input[str]
    artifact_bucket_arn: pulumi.Input[str]
    artifact_prefix: str = ARTIFACT_PREFIX
    """The server owns `s3://<bucket>/<prefix>/` and nothing else of the bucket."""
    kms_key_arn: pulumi.Input[str]
    """Data key: database storage, its secrets, and the bucket's SSE-KMS."""


@dataclass(frozen=True, kw_only=True)
class ManagedTrackingArgs(_ArtifactStoreArgs):
    """`tracking.mode: managed`: a SageMaker MLflow tracking server on the artifact prefix."""

    size: Literal["Small", "Medium", "Large"]


@dataclass(frozen=True, kw_only=True)
class SelfHostedTrackingArgs(_ArtifactStoreArgs):
    """`tracking.mode: selfHosted`: MLflow on the cluster with its own RDS PostgreSQL. Values from the stack's
    `tracking` and `database` settings (defaults in infra/profiles.py and infra/settings.py only) and the platform."""

    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    subnet_ids: pulumi.Input[Sequence[str]]
    cluster_security_group_id: pulumi.Input[str]
    identity: OidcIdentity
    image: str
    """Tracking image, pinned by tag or digest (built from services/tracking/Dockerfile)."""
    replicas: int
    database: DatabaseArgs
    exposure: Literal["internalAlb", "clusterOnly"]
    certificate_arn: str | None
    """ACM certificate for an HTTPS listener on the internal ALB; without it the ALB listens on HTTP 80 inside the
    VPC."""
    load_balancer_cidrs: Sequence[str]
    """Blocks of the internal load balancers' subnets (components/network.py): with `internalAlb`, the
    only addresses the NetworkPolicy admits besides the client namespaces (the ALB connects from them)."""
    allowed_hosts: Sequence[str]
    """Extra Host headers the server accepts (an internal DNS name for the ALB, say)."""
    protect: bool
    """Deletion protection on the database, `protect` on it and its secrets (prod)."""
    load_balancer_controller: pulumi.Resource | None
    """The Ingress depends on it, so destroy removes the ALB while the controller still runs."""
    ingress_group: str
    """ALB ingress group shared with the model endpoints: one internal load balancer for all of them."""
    node_selector: Mapping[str, str]
    """Where the server pods run (dev pins them to the system nodes so no pool node is needed)."""
    reader_endpoints: Sequence[str]
    """Model endpoints: each gets its own read-only tracking user (`serving-<endpoint>`) and password secret."""
    writer_models: Mapping[str, str]
    """Training pipelines -> the model each trains: each gets its own tracking user (`training-<pipeline>`,
    write access to its experiment and model only, services/tracking/writers.py) and password secret."""

    def __post_init__(self) -> None:
        problems = []
        if not pinned_image(self.image):
            problems.append(f"image: got {self.image!r}, expected an image pinned by tag or digest")
        if not 1 <= self.replicas <= 5:
            problems.append(f"replicas: got {self.replicas}, expected 1 to 5")
        if self.exposure == "internalAlb" and not self.load_balancer_cidrs:
            problems.append(
                "load_balancer_cidrs: required with exposure 'internalAlb' "
                "(the ALB reaches the pods from these subnets)"
            )
        if problems:
            raise ValueError("invalid SelfHostedTrackingArgs: " + "; ".join(problems))


TrackingServerArgs = SelfHostedTrackingArgs | ManagedTrackingArgs
"""Two shapes, one per `tracking.mode`: neither carries a placeholder for the other's fields."""


def artifact_policy(bucket_arn: str, prefix: str, kms_key_arn: str, secret_arns: Sequence[str]) -> str:
    """Read and write only `<prefix>/` of the bucket, use the data key, read the server's secrets."""
    statements = [
        {
            "Sid": "ObjectsUnderPrefix",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": f"{bucket_arn}/{prefix}/*",
        },
        {
            "Sid": "ListPrefix",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}},
        },
        {
            "Sid": "BucketKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": kms_key_arn,
        },
    ]
    if secret_arns:
        statements.append(
            {
                "Sid": "OwnSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": list(secret_arns),
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def allowed_hosts(vpc_cidr: str, region: str, extra: Sequence[str]) -> str:
    """Host headers the server accepts (DNS-rebinding guard): its service names, the internal ALB's AWS
    name, and IP literals of the VPC (kubelet probes and ALB health checks address pods by IP)."""
    vpc_ips = ".".join(vpc_cidr.split(".")[:2]) + ".*"
    return ",".join(
        [
            "localhost",
            f"{SERVICE}.{NAMESPACE}.svc:{PORT}",
            CLUSTER_HOST,
            f"internal-*.{region}.elb.amazonaws.com",
            vpc_ips,
            *extra,
        ]
    )


@dataclass(frozen=True)
class _ServerSecrets:
    """The self-hosted server's Secrets Manager secrets, by what reads them."""

    own: dict[str, aws.secretsmanager.Secret]
    """admin-password, flask-secret-key, database-password."""
    database_master_arn: pulumi.Output[str]
    """RDS's own secret of the master login (only `migrate` reads it)."""
    writers: dict[str, pulumi.Output[str]]
    """Per training pipeline: its tracking user's password secret."""


class TrackingServer(pulumi.ComponentResource):
    url: pulumi.Output[str]
    """Where clients send `MLFLOW_TRACKING_URI`."""
    admin_secret_arn: pulumi.Output[str] | None
    """Secrets Manager secret holding the `admin` password (self-hosted)."""
    reader_secret_arns: dict[str, pulumi.Output[str]]
    """Per model endpoint: the Secrets Manager secret of its read-only user (self-hosted)."""
    writer_passwords: dict[str, pulumi.Output[str]]
    """Per training pipeline: its tracking user's generated password (a Pulumi secret; the Training component
    hands it to the pipeline's pods in a Kubernetes Secret, so their role needs no Secrets Manager access)."""
    cluster_url: str
    """The in-cluster URL (model servers use it)."""
    database: aws.rds.Instance | None

    def __init__(self, name: str, args: TrackingServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        self.database = None
        self.admin_secret_arn = None
        self.reader_secret_arns = {}
        self.writer_passwords = {}
        self._passwords: dict[str, pulumi.Output[str]] = {}
        self.cluster_url = CLUSTER_URL
        if isinstance(args, ManagedTrackingArgs):
            self.url = self._managed(name, args)
        else:
            self.url = self._self_hosted(name, args)
        self.register_outputs(
            {"url": self.url, "admin_secret_arn": self.admin_secret_arn, "reader_secret_arns": self.reader_secret_arns}
        )

    def _generated_secret(
        self, name: str, role_name: str, length: int, args: SelfHostedTrackingArgs
    ) -> aws.secretsmanager.Secret:
        """A random password kept in a KMS-encrypted Secrets Manager secret (never in the stack file)."""
        generated = random.RandomPassword(
            f"{name}-{role_name}", length=length, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        secret = aws.secretsmanager.Secret(
            f"{name}-{role_name}-secret",
            description=f"MLflow tracking server {role_name}",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=30 if args.protect else 7,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-{role_name}-value",
            secret_id=secret.id,
            secret_string=generated.result,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._passwords[role_name] = generated.result
        return secret

    # -- managed ----------------------------------------------------------------------------
    def _managed(self, name: str, args: ManagedTrackingArgs) -> pulumi.Output[str]:
        role = aws.iam.Role(
            f"{name}-sagemaker",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sagemaker.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        artifacts_policy = aws.iam.RolePolicy(
            f"{name}-sagemaker-artifacts",
            role=role.id,
            policy=pulumi.Output.all(args.artifact_bucket_arn, args.kms_key_arn).apply(
                lambda a: artifact_policy(a[0], args.artifact_prefix, a[1], [])
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        server = aws.sagemaker.MlflowTrackingServer(
            f"{name}-managed",
            tracking_server_name=name,
            artifact_store_uri=pulumi.Output.concat("s3://", args.artifact_bucket, "/", args.artifact_prefix),
            role_arn=role.arn,
            tracking_server_size=args.size,
            automatic_model_registration=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[artifacts_policy]),  # the policy outlives the server
        )
        return server.tracking_server_url

    # -- self-hosted ------------------------------------------------------------------------
    def _self_hosted(self, name: str, args: SelfHostedTrackingArgs) -> pulumi.Output[str]:
        """Database, secrets, role, then the workload in its namespace, then (with `internalAlb`) the Ingress."""
        self.database = self._database(name, args)
        secrets = self._secrets(name, args)
        role = self._workload_role(name, args, secrets)
        labels = restricted_namespace_labels(ALB_READINESS_GATE_LABELS)
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata={"name": NAMESPACE, "labels": labels}, opts=pulumi.ResourceOptions(parent=self)
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={
                "name": SERVICE_ACCOUNT,
                "namespace": NAMESPACE,
                "annotations": {"eks.amazonaws.com/role-arn": role.arn},
            },
            automount_service_account_token=False,
            opts=in_namespace,
        )
        env = self._settings_env(args, secrets)
        # Migrations must complete before the new server version rolls out (the Deployment depends on it).
        # Every pod of the server uses the role, and all come after the migration: its policy outlives them on destroy.
        # Only migrate reads the RDS master secret, fresh on each run (RDS rotates it every 7 days).
        migration = self._entrypoint_job(
            name,
            args,
            env,
            "migrate",
            "migrate",
            backoff=2,
            cpu="100m",
            memory="512Mi",
            after=[namespace, self.database, *role.ready],
            extra_env={"TRACKING_DATABASE_SECRET_ARN": secrets.database_master_arn},
        )
        deployment = self._server(name, args, env, after=migration)
        # The read-only users model endpoints log in as; runs once the new server version is up.
        self._entrypoint_job(
            name, args, env, "ensure-reader", "ensure-user", backoff=6, cpu="50m", memory="256Mi", after=[deployment]
        )
        service = self._service(name, args, in_namespace)
        if args.exposure == "clusterOnly":
            return pulumi.Output.from_input(CLUSTER_URL)
        return self._ingress(name, args, after=[service, deployment])

    def _database(self, name: str, args: SelfHostedTrackingArgs) -> aws.rds.Instance:
        """The encrypted RDS PostgreSQL instance: private subnets, reachable only from the cluster's
        security group, TLS required; RDS generates, keeps and rotates the master password."""
        child = pulumi.ResourceOptions(parent=self)
        db = args.database
        subnet_group = aws.rds.SubnetGroup(f"{name}-db-subnets", subnet_ids=args.subnet_ids, opts=child)
        db_sg = aws.ec2.SecurityGroup(
            f"{name}-db-sg",
            description="PostgreSQL of the tracking server: only from the cluster",
            vpc_id=args.vpc_id,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=5432, to_port=5432, security_groups=[args.cluster_security_group_id]
                )
            ],
            egress=[],
            opts=child,
        )
        parameters = aws.rds.ParameterGroup(
            f"{name}-db-params",
            family=f"postgres{db.engine_version}",
            parameters=[aws.rds.ParameterGroupParameterArgs(name="rds.force_ssl", value="1")],
            opts=child,
        )
        return aws.rds.Instance(
            f"{name}-db",
            engine="postgres",
            engine_version=db.engine_version,
            instance_class=db.instance_class,
            allocated_storage=db.allocated_storage_gb,
            max_allocated_storage=db.allocated_storage_gb * 5,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=args.kms_key_arn,
            db_name="mlflow",
            username="mlflow",
            manage_master_user_password=True,  # RDS generates it, keeps and rotates it in Secrets Manager
            master_user_secret_kms_key_id=args.kms_key_arn,
            multi_az=db.multi_az,
            backup_retention_period=db.backup_retention_days,
            deletion_protection=args.protect,
            skip_final_snapshot=not args.protect,
            final_snapshot_identifier=f"{name}-final" if args.protect else None,
            copy_tags_to_snapshot=True,
            publicly_accessible=False,
            db_subnet_group_name=subnet_group.name,
            vpc_security_group_ids=[db_sg.id],
            parameter_group_name=parameters.name,
            auto_minor_version_upgrade=True,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )

    def _secrets(self, name: str, args: SelfHostedTrackingArgs) -> _ServerSecrets:
        """The passwords generated here: the server's own, one read-only user per endpoint, one user per pipeline."""
        assert self.database is not None
        own = {
            "admin-password": self._generated_secret(name, "admin-password", 32, args),
            "flask-secret-key": self._generated_secret(name, "flask-secret-key", 48, args),
            # the server's own database role (migrate creates it): RDS's master rotation never touches it
            "database-password": self._generated_secret(name, "database-password", 32, args),
        }
        self.reader_secret_arns = {
            endpoint: self._generated_secret(name, f"reader-{endpoint}-password", 32, args).arn
            for endpoint in args.reader_endpoints
        }
        writers = {
            pipeline: self._generated_secret(name, f"writer-{pipeline}-password", 32, args).arn
            for pipeline in args.writer_models
        }
        self.writer_passwords = {
            pipeline: self._passwords[f"writer-{pipeline}-password"] for pipeline in args.writer_models
        }
        self.admin_secret_arn = own["admin-password"].arn
        master = self.database.master_user_secrets.apply(lambda s: s[0].secret_arn)
        return _ServerSecrets(own=own, database_master_arn=master, writers=writers)

    def _workload_role(self, name: str, args: SelfHostedTrackingArgs, secrets: _ServerSecrets) -> RoleWithPolicies:
        """IRSA role of the server's pods: its artifact prefix, the data key, and its own secrets only."""
        return workload_role(
            f"{name}-workload",
            identity=args.identity,
            namespace=NAMESPACE,
            service_account=SERVICE_ACCOUNT,
            policy=pulumi.Output.all(
                args.artifact_bucket_arn,
                args.kms_key_arn,
                secrets.database_master_arn,
                *[secret.arn for secret in secrets.own.values()],
                *self.reader_secret_arns.values(),
                *secrets.writers.values(),
            ).apply(lambda a: artifact_policy(a[0], args.artifact_prefix, a[1], a[2:])),
            parent=self,
        )

    def _settings_env(self, args: SelfHostedTrackingArgs, secrets: _ServerSecrets) -> dict[str, pulumi.Input[str]]:
        """The entrypoint's TRACKING_* settings (services/tracking/settings.py), shared by the server and its Jobs."""
        assert self.database is not None
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        address = pulumi.Output.concat(self.database.address, ":5432")
        readers = {reader_username(endpoint): arn for endpoint, arn in self.reader_secret_arns.items()}
        return {
            "TRACKING_BACKEND_STORE_URI": address.apply(lambda a: database_uri(a, "mlflow")),
            "TRACKING_AUTH_DATABASE_URI": address.apply(lambda a: database_uri(a, "mlflow_auth")),
            "TRACKING_DATABASE_PASSWORD_SECRET_ARN": secrets.own["database-password"].arn,
            "TRACKING_ADMIN_PASSWORD_SECRET_ARN": secrets.own["admin-password"].arn,
            "TRACKING_FLASK_SECRET_KEY_SECRET_ARN": secrets.own["flask-secret-key"].arn,
            "TRACKING_ARTIFACTS_DESTINATION": pulumi.Output.concat(
                "s3://", args.artifact_bucket, "/", args.artifact_prefix
            ),
            "TRACKING_HOST": "0.0.0.0",
            "TRACKING_PORT": str(PORT),
            "TRACKING_WORKERS": "2",
            "TRACKING_ALLOWED_HOSTS": allowed_hosts(args.vpc_cidr, region, args.allowed_hosts),
            "TRACKING_REGION": region,
            "AWS_DEFAULT_REGION": region,  # what boto3 reads (botocore ignores AWS_REGION)
            "TRACKING_READERS": pulumi.Output.all(**readers).apply(lambda r: json.dumps(r, sort_keys=True))
            if readers
            else "{}",
            "TRACKING_WRITERS": pulumi.Output.all(**secrets.writers).apply(
                lambda arns: json.dumps(
                    {p: {"model": args.writer_models[p], "password_secret_arn": a} for p, a in arns.items()},
                    sort_keys=True,
                )
            )
            if secrets.writers
            else "{}",
            "TRACKING_SERVER_URL": CLUSTER_URL,
        }

    @staticmethod
    def _pod_common(args: SelfHostedTrackingArgs) -> dict[str, Any]:
        """Pod fields of the server and its Jobs alike."""
        return {
            **({"nodeSelector": dict(args.node_selector)} if args.node_selector else {}),
            "serviceAccountName": SERVICE_ACCOUNT,
            # no Kubernetes API calls: no API token (IRSA's token is a volume the EKS pod identity webhook projects
            # itself)
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "volumes": [TMP_VOLUME],
        }

    def _entrypoint_job(
        self,
        name: str,
        args: SelfHostedTrackingArgs,
        env: Mapping[str, pulumi.Input[str]],
        role: str,
        command: str,
        *,
        backoff: int,
        cpu: str,
        memory: str,
        after: list[pulumi.Resource],
        extra_env: Mapping[str, pulumi.Input[str]] | None = None,
    ) -> k8s.batch.v1.Job:
        """A Job running one entrypoint command of the tracking image, named after the image:
        a new version gets a new Job."""
        image_hash = hashlib.sha256(args.image.encode()).hexdigest()[:8]
        return k8s.batch.v1.Job(
            f"{name}-{role}",
            metadata={"name": f"mlflow-{role}-{image_hash}", "namespace": NAMESPACE, "labels": APP_LABELS},
            spec={
                "backoffLimit": backoff,
                "template": {
                    "metadata": {"labels": {**APP_LABELS, "app.kubernetes.io/component": role}},
                    "spec": {
                        **self._pod_common(args),
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": role,
                                "image": args.image,
                                "args": [command],
                                "env": env_list({**env, **(extra_env or {})}),
                                "resources": resources(cpu, memory),
                                "securityContext": CONTAINER_SECURITY_CONTEXT,
                                "volumeMounts": [TMP_MOUNT],
                            }
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=after, delete_before_replace=True),
        )

    def _server(
        self, name: str, args: SelfHostedTrackingArgs, env: Mapping[str, pulumi.Input[str]], *, after: pulumi.Resource
    ) -> k8s.apps.v1.Deployment:
        """The server's Deployment: zone-spread, surge-only rollouts, after the migration Job."""
        return k8s.apps.v1.Deployment(
            f"{name}-server",
            metadata={"name": SERVICE, "namespace": NAMESPACE, "labels": SERVER_LABELS},
            spec={
                "replicas": args.replicas,
                "selector": {"matchLabels": SERVER_LABELS},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": SERVER_LABELS},
                    "spec": {
                        **self._pod_common(args),
                        "topologySpreadConstraints": zone_spread(SERVER_LABELS),
                        "containers": [
                            {
                                "name": CONTAINER,
                                "image": args.image,
                                "args": ["serve"],
                                "ports": [{"name": "http", "containerPort": PORT}],
                                "env": env_list(env),
                                "resources": resources("250m", "1Gi"),
                                "readinessProbe": http_probe("/health", PORT, period=10),
                                "livenessProbe": http_probe("/health", PORT, period=20, failures=6, initial_delay=30),
                                "securityContext": CONTAINER_SECURITY_CONTEXT,
                                "volumeMounts": [TMP_MOUNT],
                            }
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[after]),
        )

    def _service(
        self, name: str, args: SelfHostedTrackingArgs, in_namespace: pulumi.ResourceOptions
    ) -> k8s.core.v1.Service:
        """The Service behind CLUSTER_URL, its PodDisruptionBudget, and the NetworkPolicy of the namespace's pods."""
        service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata={"name": SERVICE, "namespace": NAMESPACE, "labels": SERVER_LABELS},
            # Service port = container port: see CLUSTER_URL
            spec={"selector": SERVER_LABELS, "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]},
            opts=in_namespace,
        )
        disruption_budget(
            f"{name}-pdb",
            name=SERVICE,
            namespace=NAMESPACE,
            labels=SERVER_LABELS,
            replicas=args.replicas,
            opts=in_namespace,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata={"name": SERVICE, "namespace": NAMESPACE},
            spec=network_policy_spec(args),
            opts=in_namespace,
        )
        return service

    def _ingress(self, name: str, args: SelfHostedTrackingArgs, *, after: list[pulumi.Resource]) -> pulumi.Output[str]:
        """The catch-all path of the shared internal ALB; the URL is the ALB's once it has one."""
        annotations = {
            **internal_alb_annotations(
                group=args.ingress_group,
                healthcheck_path="/health",
                certificate_arn=args.certificate_arn,
                deregistration_delay_seconds=DEREGISTRATION_DELAY_SECONDS,
            ),
            # the catch-all "/" rule is evaluated after every endpoint's path
            "alb.ingress.kubernetes.io/group.order": "1000",
        }
        ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata={"name": SERVICE, "namespace": NAMESPACE, "annotations": annotations},
            spec=alb_ingress_spec("/", {"service": {"name": SERVICE, "port": {"number": PORT}}}),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*after, *([args.load_balancer_controller] if args.load_balancer_controller else [])],
            ),
        )
        scheme = "https" if args.certificate_arn else "http"
        return ingress.status.apply(
            lambda status: (
                f"{scheme}://{status.load_balancer.ingress[0].hostname}"
                if status and status.load_balancer and status.load_balancer.ingress
                else CLUSTER_URL
            )
        )


def network_policy_spec(args: SelfHostedTrackingArgs) -> dict[str, Any]:
    """Who reaches the server (client namespaces, its own Jobs, the ALB's subnets with `internalAlb`)
    and what its pods reach (DNS, the database in the VPC, the server itself, the AWS APIs)."""
    return {
        "podSelector": {"matchLabels": APP_LABELS},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {CLIENT_NAMESPACE_LABEL: "true"}}}],
                "ports": [{"protocol": "TCP", "port": PORT}],
            },
            {
                # the ensure-reader Job calls the server from inside the namespace
                "from": [{"podSelector": {"matchLabels": APP_LABELS}}],
                "ports": [{"protocol": "TCP", "port": PORT}],
            },
            *([load_balancer_ingress(args.load_balancer_cidrs, PORT)] if args.exposure == "internalAlb" else []),
        ],
        "egress": [
            dns_egress_rule(),
            {"to": [{"ipBlock": {"cidr": args.vpc_cidr}}], "ports": [{"protocol": "TCP", "port": 5432}]},
            {
                "to": [{"podSelector": {"matchLabels": SERVER_LABELS}}],
                "ports": [{"protocol": "TCP", "port": PORT}],
            },  # ensure-user
            aws_api_egress_rule(),  # S3, STS, Secrets Manager
        ],
    }
