"""Training: the stack file's pipelines as Kubernetes CronJobs on the cluster's node pools.

Creates, in dependency order: the `training` namespace (restricted Pod Security, allowed to
reach the tracking server) and a NetworkPolicy for its pipeline pods (DNS, the tracking server,
HTTPS to S3/STS; nothing may connect to them); then per pipeline: a workload role that reads
the datasets bucket (its DVC remote) and nothing else in AWS; its service account; a Secret with
its tracking user's password (the user itself, `training-<pipeline>`, with write access to its
own experiment and model only, is kept by the tracking server's `ensure-user`, see
services/tracking/writers.py); and a CronJob running the training image's runner
(services/training), suspended when the pipeline has no schedule (`kubectl create job
--from=cronjob/<name>` runs it; so does the drift receiver).

Kubernetes Jobs are the engine, not Argo Workflows: a run is one step (data, checks, train,
gate, promote in one process), so a DAG engine would add a controller, CRDs and their upgrades
for nothing a Job lacks: deadlines, retries, TTL, GPU placement, and `create job --from`.

Each Job has a deadline (`activeDeadlineSeconds`, the pipeline's timeout), a retry budget
(`backoffLimit`) and a TTL after it finishes; a pipeline asking for GPUs lands on the GPU pool
(its node selector and the taint's toleration, as the model endpoints do). Pods run as the
platform's non-root user with a read-only root file system and no Kubernetes API token (IRSA's
web-identity token is a projected volume of its own, added by EKS's pod identity webhook).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.identity import OidcIdentity, workload_role
from components.k8s_workload import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TMP_MOUNT,
    aws_api_egress_rule,
    dns_egress_rule,
    env_list,
    http_probe,
    kubernetes_api_client,
    pool_placement,
    resources,
    restricted_namespace_labels,
)
from components.tracking import CLIENT_NAMESPACE_LABEL, client_egress_rule
from services.tracking.writers import writer_username

TOKEN = "mlops:training:Training"
NAMESPACE = "training"
PIPELINE_LABEL = "mlops.platform/pipeline"
COMPONENT_LABEL = "app.kubernetes.io/component"
NEVER = "0 0 31 2 *"
"""February 31st: the schedule of a CronJob that only runs when started by hand (it is also suspended)."""
TTL_SECONDS = 7 * 24 * 3600
"""Finished Jobs (and their pods' logs) are kept a week, then deleted."""
CACHE_DIR = "/tmp/training-cache"
PASSWORD_DIR = "/etc/training/tracking"
"""Where the pipeline's tracking password is mounted (a read-only Secret volume), never an environment variable."""
PASSWORD_KEY = "password"
"""The key of the password in the pipeline's Secret, and so the file's name under PASSWORD_DIR."""


@dataclass(frozen=True, kw_only=True)
class PipelineArgs:
    """One pipeline's settings (`pipelines[]`; defaults in infra/settings.py only, none repeated here)."""

    name: str
    model: str
    entry_point: str
    data: str
    """The `.dvc` file: a path in the image, or an `s3://` URL in the datasets bucket."""
    image: str
    schedule: str | None
    """Cron schedule (UTC); None: suspended, runs only when started (by hand or on drift)."""
    cpu: str
    memory: str
    gpu: int
    scratch: str
    """Local disk for the data and MLflow's temporary files (an emptyDir at /tmp)."""
    timeout_minutes: int
    retries: int
    params: Mapping[str, Any]
    min_improvement: float
    canary_alias: str | None
    """The endpoint's canary alias: a passing version goes there first."""
    endpoint: str | None
    """The endpoint whose `DataDriftHigh` retrains this pipeline (through the receiver)."""
    retrain_min_interval_minutes: int

    def __post_init__(self) -> None:
        problems = []
        if self.image.endswith(":latest") or (":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image):
            problems.append(f"image: got {self.image!r}, expected an image pinned by tag or digest")
        if not 1 <= self.timeout_minutes <= 7 * 24 * 60:
            problems.append(f"timeout_minutes: got {self.timeout_minutes}, expected 1 to {7 * 24 * 60}")
        if not 0 <= self.retries <= 10:
            problems.append(f"retries: got {self.retries}, expected 0 to 10")
        if problems:
            raise ValueError(f"invalid PipelineArgs for {self.name}: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class TrainingArgs:
    pipelines: Sequence[PipelineArgs]
    datasets_bucket: pulumi.Input[str]
    datasets_bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    """The data key the datasets bucket is encrypted with (SSE-KMS): reading needs kms:Decrypt through S3."""
    region: str
    identity: OidcIdentity
    tracking_url: str
    """In-cluster URL of the tracking server."""
    tracking_passwords: Mapping[str, pulumi.Input[str]]
    """Per pipeline: its tracking user's password (TrackingServer.writer_passwords)."""
    gpu_node_selector: Mapping[str, str]
    gpu_toleration: Mapping[str, str]
    node_selector: Mapping[str, str]
    """Where CPU pipelines run when not on the Karpenter CPU pool (dev: the system nodes; empty: anywhere)."""
    receiver_token: pulumi.Input[str] | None
    """The bearer token Alertmanager sends (Monitoring.retrain_token); required when a pipeline names an endpoint."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.pipelines]
        missing = sorted(set(names) - set(self.tracking_passwords))
        if len(set(names)) != len(names) or missing:
            raise ValueError(
                "invalid TrainingArgs: pipeline names must be unique and each needs a tracking password (missing: "
                f"{missing})"
            )
        if any(p.endpoint for p in self.pipelines) and self.receiver_token is None:
            raise ValueError(
                "invalid TrainingArgs: receiver_token: required when a pipeline retrains on an endpoint's drift"
            )


def datasets_read_policy(bucket_arn: str, kms_key_arn: str, region: str) -> str:
    """Read the datasets bucket (the DVC remote and any `.dvc` pointer in it); nothing else in AWS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "ReadDatasets", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket_arn}/*"},
                {"Sid": "ListDatasets", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
                {
                    "Sid": "DecryptDatasets",
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": kms_key_arn,
                    "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
                },
            ],
        }
    )


def service_account(pipeline: str) -> str:
    return f"pipeline-{pipeline}"


def password_secret(pipeline: str) -> str:
    return f"pipeline-{pipeline}-tracking"


def pipeline_env(p: PipelineArgs, args: TrainingArgs, datasets_bucket: pulumi.Input[str]) -> list[dict[str, Any]]:
    """The runner's settings (services/training/settings.py) for one pipeline."""
    from services.training.dvc import DVC_PREFIX

    values: dict[str, Any] = {
        "TRAINING_PIPELINE": p.name,
        "TRAINING_MODEL_NAME": p.model,
        "TRAINING_ENTRY_POINT": p.entry_point,
        "TRAINING_DATA": p.data,
        "TRAINING_DVC_REMOTE": pulumi.Output.concat("s3://", datasets_bucket, "/", DVC_PREFIX),
        "TRAINING_PARAMS": json.dumps(dict(p.params), sort_keys=True),
        "TRAINING_MIN_IMPROVEMENT": f"{p.min_improvement:g}",
        "TRAINING_TRIGGER": "schedule" if p.schedule else "manual",
        "TRAINING_IMAGE": p.image,
        "TRAINING_CACHE_DIR": CACHE_DIR,
        "TRAINING_TRACKING_PASSWORD_FILE": f"{PASSWORD_DIR}/{PASSWORD_KEY}",
        "MLFLOW_TRACKING_URI": args.tracking_url,
        "MLFLOW_TRACKING_USERNAME": writer_username(p.name),
        "AWS_DEFAULT_REGION": args.region,  # what boto3 reads (botocore ignores AWS_REGION)
    }
    if p.canary_alias:
        values["TRAINING_CANARY_ALIAS"] = p.canary_alias
    return env_list(values)


def job_template(p: PipelineArgs, args: TrainingArgs, datasets_bucket: pulumi.Input[str]) -> dict[str, Any]:
    """The Job of one pipeline run: the CronJob's `jobTemplate`, and what the drift receiver creates."""
    labels = {"app.kubernetes.io/part-of": "mlops-training", PIPELINE_LABEL: p.name, COMPONENT_LABEL: "pipeline"}
    pod: dict[str, Any] = {
        "serviceAccountName": service_account(p.name),
        "automountServiceAccountToken": False,  # no Kubernetes API access; IRSA's token is its own projected volume
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY_CONTEXT,
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": p.scratch}},
            # readable by the pod's group (fsGroup) only; the runner reads it (TRAINING_TRACKING_PASSWORD_FILE)
            {"name": "tracking-password", "secret": {"secretName": password_secret(p.name), "defaultMode": 0o440}},
        ],
        "containers": [
            {
                "name": "train",
                "image": p.image,
                "args": ["run"],
                "env": pipeline_env(p, args, datasets_bucket),
                "resources": _with_scratch(resources(p.cpu, p.memory, gpus=p.gpu), p.scratch),
                "securityContext": CONTAINER_SECURITY_CONTEXT,
                "volumeMounts": [TMP_MOUNT, {"name": "tracking-password", "mountPath": PASSWORD_DIR, "readOnly": True}],
            }
        ],
    }
    pod.update(
        pool_placement(
            p.gpu,
            gpu_node_selector=args.gpu_node_selector,
            gpu_toleration=args.gpu_toleration,
            node_selector=args.node_selector,
        )
    )
    return {
        "metadata": {"labels": labels},
        "spec": {
            "activeDeadlineSeconds": p.timeout_minutes * 60,
            "backoffLimit": p.retries,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _with_scratch(spec: dict[str, Any], scratch: str) -> dict[str, Any]:
    """Requests and limits with the scratch disk as ephemeral storage (the scheduler places by it)."""
    return {
        "requests": {**spec["requests"], "ephemeral-storage": scratch},
        "limits": {**spec["limits"], "ephemeral-storage": scratch},
    }


class Training(pulumi.ComponentResource):
    cron_jobs: dict[str, k8s.batch.v1.CronJob]
    role_arns: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": NAMESPACE, "labels": restricted_namespace_labels({CLIENT_NAMESPACE_LABEL: "true"})},
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        self._network_policy(name, args, in_namespace)
        self.cron_jobs, self.role_arns = {}, {}
        for p in args.pipelines:
            self.cron_jobs[p.name] = self._pipeline(name, p, args, in_namespace)
        retraining = [p for p in args.pipelines if p.endpoint]
        if retraining:
            RetrainReceiver(
                f"{name}-receiver",
                retraining,
                args,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace]),
            )
        self.register_outputs({"role_arns": self.role_arns, "namespace": NAMESPACE})

    def _pipeline(
        self, name: str, p: PipelineArgs, args: TrainingArgs, in_namespace: pulumi.ResourceOptions
    ) -> k8s.batch.v1.CronJob:
        role = workload_role(
            f"{name}-{p.name}-workload",
            identity=args.identity,
            namespace=NAMESPACE,
            service_account=service_account(p.name),
            policy=pulumi.Output.all(args.datasets_bucket_arn, args.kms_key_arn).apply(
                lambda a: datasets_read_policy(a[0], a[1], args.region)
            ),
            parent=self,
        )
        self.role_arns[p.name] = role.arn
        account = k8s.core.v1.ServiceAccount(
            f"{name}-{p.name}-sa",
            metadata={
                "name": service_account(p.name),
                "namespace": NAMESPACE,
                "labels": {PIPELINE_LABEL: p.name},
                "annotations": {"eks.amazonaws.com/role-arn": role.arn},
            },
            automount_service_account_token=False,
            opts=in_namespace,
        )
        password = k8s.core.v1.Secret(
            f"{name}-{p.name}-tracking",
            metadata={"name": password_secret(p.name), "namespace": NAMESPACE, "labels": {PIPELINE_LABEL: p.name}},
            string_data=pulumi.Output.secret({PASSWORD_KEY: args.tracking_passwords[p.name]}),
            opts=in_namespace,
        )
        return k8s.batch.v1.CronJob(
            f"{name}-{p.name}",
            metadata={"name": p.name, "namespace": NAMESPACE, "labels": {PIPELINE_LABEL: p.name}},
            spec={
                "schedule": p.schedule or NEVER,
                "timeZone": "Etc/UTC",
                "suspend": p.schedule is None,
                "concurrencyPolicy": "Forbid",  # one run of a pipeline at a time: two would race for the aliases
                "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": job_template(p, args, args.datasets_bucket),
            },
            # its pods use the role: the policy outlives them on destroy, and exists before the first run
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace, account, password, *role.ready]),
        )

    def _network_policy(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions) -> None:
        k8s.networking.v1.NetworkPolicy(
            f"{name}-pipelines-netpol",
            metadata={"name": "pipelines", "namespace": NAMESPACE},
            spec={
                "podSelector": {"matchLabels": {COMPONENT_LABEL: "pipeline"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],  # nothing connects to a training run
                "egress": [
                    dns_egress_rule(),
                    # the tracking server's pods, on the port of its Service (components/tracking.CLUSTER_URL)
                    client_egress_rule(),
                    aws_api_egress_rule(),  # S3 (the DVC remote), STS
                ],
            },
            opts=opts,
        )


RECEIVER = "retrain-receiver"
RECEIVER_PORT = 8080
RECEIVER_URL = f"http://{RECEIVER}.{NAMESPACE}.svc.cluster.local:{RECEIVER_PORT}/alerts"
"""Where Alertmanager posts `DataDriftHigh` (Service port = container port, as the VPC CNI's policy agent needs)."""
RECEIVER_TOKEN = "/etc/receiver/token"
RECEIVER_PIPELINES = "/etc/receiver/pipelines"


def receiver_rules() -> list[dict[str, Any]]:
    """All the receiver may do in Kubernetes: create Jobs in the training namespace (its Role's only rule)."""
    return [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]


def receiver_pipelines(pipelines: Sequence[PipelineArgs], args: TrainingArgs) -> pulumi.Output[str]:
    """The receiver's pipelines file: each pipeline's endpoint, rate limit and Job (the CronJob's own template)."""
    return pulumi.Output.json_dumps(
        {
            p.name: {
                "endpoint": p.endpoint,
                "min_interval_seconds": p.retrain_min_interval_minutes * 60,
                "job": job_template(p, args, args.datasets_bucket),
            }
            for p in pipelines
        }
    )


RECEIVER_LABELS = {
    "app.kubernetes.io/name": RECEIVER,
    "app.kubernetes.io/part-of": "mlops-training",
    COMPONENT_LABEL: "receiver",
}
RECEIVER_META = {"name": RECEIVER, "namespace": NAMESPACE, "labels": RECEIVER_LABELS}


def receiver_env() -> dict[str, str]:
    """The receiver's settings (services/training/receiver.py, `RECEIVER_*`)."""
    return {
        "RECEIVER_HOST": "0.0.0.0",
        "RECEIVER_PORT": str(RECEIVER_PORT),
        "RECEIVER_TOKEN_FILE": f"{RECEIVER_TOKEN}/token",
        "RECEIVER_PIPELINES_FILE": f"{RECEIVER_PIPELINES}/pipelines.json",
        "RECEIVER_LAUNCHER": "kubernetes",
        "RECEIVER_NAMESPACE": NAMESPACE,
    }


def receiver_pod(image: str, node_selector: Mapping[str, str]) -> dict[str, Any]:
    """The receiver's pod: the token and pipelines file as read-only volumes, an API token (it creates Jobs)."""
    return {
        "serviceAccountName": RECEIVER,
        "automountServiceAccountToken": True,  # it creates Jobs through the API: the one pod here that needs a token
        "securityContext": POD_SECURITY_CONTEXT,
        **({"nodeSelector": dict(node_selector)} if node_selector else {}),
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "token", "secret": {"secretName": RECEIVER}},
            {"name": "pipelines", "configMap": {"name": RECEIVER}},
        ],
        "containers": [
            {
                "name": "receiver",
                "image": image,
                "args": ["receiver"],
                "env": env_list(receiver_env()),
                "ports": [{"name": "http", "containerPort": RECEIVER_PORT}],
                "resources": resources("50m", "256Mi"),
                "readinessProbe": http_probe("/healthz", RECEIVER_PORT, period=10),
                "livenessProbe": http_probe("/healthz", RECEIVER_PORT, period=20),
                "securityContext": CONTAINER_SECURITY_CONTEXT,
                "volumeMounts": [
                    TMP_MOUNT,
                    {"name": "token", "mountPath": RECEIVER_TOKEN, "readOnly": True},
                    {"name": "pipelines", "mountPath": RECEIVER_PIPELINES, "readOnly": True},
                ],
            }
        ],
    }


class RetrainReceiver(pulumi.ComponentResource):
    """The drift webhook receiver (services/training/receiver.py): Alertmanager posts `DataDriftHigh`, it creates
    the endpoint's pipeline Job. Its service account may create Jobs in the training namespace and nothing else;
    only the monitoring namespace may reach it, with the bearer token both sides get from Monitoring."""

    def __init__(
        self,
        name: str,
        pipelines: Sequence[PipelineArgs],
        args: TrainingArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlops:training:RetrainReceiver", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        access = self._access(name)
        token = k8s.core.v1.Secret(
            f"{name}-token",
            metadata=RECEIVER_META,
            opts=child,
            string_data=pulumi.Output.secret({"token": args.receiver_token}),
        )
        pipelines_file = receiver_pipelines(pipelines, args)
        config = k8s.core.v1.ConfigMap(
            f"{name}-pipelines", metadata=RECEIVER_META, opts=child, data={"pipelines.json": pipelines_file}
        )
        # a changed pipelines file rolls the pod (it reads the file at start)
        digest = pipelines_file.apply(lambda text: hashlib.sha256(text.encode()).hexdigest())
        rollout = {"mlops.platform/pipelines-sha256": digest}
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                **RECEIVER_META,
                "annotations": kubernetes_api_client(
                    "creates the pipeline Jobs on drift; its Role allows creating Jobs in training and nothing else"
                ),
            },
            spec={
                "replicas": 1,
                "selector": {"matchLabels": RECEIVER_LABELS},
                "template": {
                    "metadata": {"labels": RECEIVER_LABELS, "annotations": rollout},
                    "spec": receiver_pod(pipelines[0].image, args.node_selector),
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*access, token, config]),
        )
        self._network(name)
        self.register_outputs({"url": RECEIVER_URL})

    def _access(self, name: str) -> list[pulumi.Resource]:
        """Its service account, and a Role that may create Jobs in the training namespace, bound to it."""
        child = pulumi.ResourceOptions(parent=self)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=RECEIVER_META, opts=child, automount_service_account_token=False
        )
        role = k8s.rbac.v1.Role(f"{name}-role", metadata=RECEIVER_META, rules=receiver_rules(), opts=child)
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-binding",
            metadata=RECEIVER_META,
            opts=child,
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RECEIVER},
            subjects=[{"kind": "ServiceAccount", "name": RECEIVER, "namespace": NAMESPACE}],
        )
        return [account, role, binding]

    def _network(self, name: str) -> None:
        """Its Service, and a NetworkPolicy: only the monitoring namespace may connect; out: DNS and the API server."""
        from components.monitoring import MONITORING_NAMESPACE_LABEL

        child = pulumi.ResourceOptions(parent=self)
        ports = [{"name": "http", "port": RECEIVER_PORT, "targetPort": RECEIVER_PORT}]
        k8s.core.v1.Service(
            f"{name}-svc", metadata=RECEIVER_META, opts=child, spec={"selector": RECEIVER_LABELS, "ports": ports}
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=RECEIVER_META,
            opts=child,
            spec={
                "podSelector": {"matchLabels": RECEIVER_LABELS},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {"namespaceSelector": {"matchLabels": {MONITORING_NAMESPACE_LABEL: "true"}}}
                        ],  # Alertmanager
                        "ports": [{"protocol": "TCP", "port": RECEIVER_PORT}],
                    }
                ],
                "egress": [
                    dns_egress_rule(),
                    {"ports": [{"protocol": "TCP", "port": 443}]},  # the Kubernetes API server
                ],
            },
        )
