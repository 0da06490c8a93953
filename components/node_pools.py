"""NodePools: Karpenter with a CPU pool and a GPU pool that both scale to zero.

Creates, in dependency order: the interruption queue (SQS, encrypted, TLS-only) and the
EventBridge rules that feed it spot interruptions, rebalance hints, scheduled maintenance,
instance state changes and capacity-reservation interruptions; Karpenter's workload role
(IRSA, with exactly the upstream controller policy of the pinned version); the CRD release,
then the Karpenter release on the system nodes; one `EC2NodeClass` and one `NodePool` per
pool; and the NVIDIA device plugin, scheduled only on GPU nodes.

GPU capacity cannot run away: the GPU pool is tainted `nvidia.com/gpu=true:NoSchedule` (only
pods that ask for GPUs land there), has a hard `limits` ceiling on GPUs, is consolidated as
soon as it has been empty for `consolidate_after`, and its nodes expire after `expire_after`.

`pulumi destroy` order: pools and node classes depend on the Karpenter release, the node
role's policies and the nodes' access entry, so they are deleted first while Karpenter still
runs and can terminate their nodes; the release depends on its own role's policy and goes
before the cluster (it depends on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import versions
from components.cluster import SYSTEM_POOL_LABEL
from components.identity import OidcIdentity, RoleWithPolicies, workload_role
from components.options import dependencies
from components.quantities import quantity

TOKEN = "mlops:k8s:NodePools"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
POOL_LABEL = "mlops.platform/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"

CONTROLLER_POLICY = Path(__file__).resolve().parent / "upstream" / "karpenter-v1.11.1" / "controller-policy.json"
"""The controller policies' statements from Karpenter's getting-started template, placeholders kept."""

INTERRUPTION_EVENTS = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "capacity-reservation-interruption": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"],
    },
}
"""The EventBridge rules of Karpenter's getting-started template, one for one."""


@dataclass(frozen=True, kw_only=True)
class PoolArgs:
    """One Karpenter pool. The families, sizes, capacity types and limits come from the stack's `cluster.cpuPool`
    / `cluster.gpuPool` settings (defaults in infra/profiles.py only); how each pool is consolidated and
    sized is decided where the pools are declared (infra/program.py), not here."""

    instance_families: Sequence[str]
    instance_sizes: Sequence[str]
    capacity_types: Sequence[Literal["spot", "on-demand"]]
    limits: Mapping[str, str]
    """Karpenter `limits`: the most this pool may ever hold, e.g. {"cpu": "32"} or {"nvidia.com/gpu": "2"}."""
    consolidate_after: str
    consolidation_policy: Literal["WhenEmpty", "WhenEmptyOrUnderutilized"]
    expire_after: str
    root_volume_gi: int


@dataclass(frozen=True, kw_only=True)
class NodePoolsArgs:
    """`ami_alias` and `replicas` come from the stack's `cluster` settings (defaults in infra/profiles.py only);
    the rest from the cluster."""

    cluster_name: str
    cluster_endpoint: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    identity: OidcIdentity
    node_role: RoleWithPolicies
    """Role of the nodes Karpenter launches (`Cluster.karpenter_node_role`)."""
    node_access: Sequence[pulumi.Resource]
    """What lets those nodes join (their access entry): NodeClasses depend on it, so it outlives the nodes."""
    cpu: PoolArgs
    gpu: PoolArgs
    ami_alias: str
    """EC2NodeClass AMI alias; pin a dated one (`al2023@v20251117`) in prod for repeatable nodes."""
    node_tags: Mapping[str, str]
    """Tags for the instances Karpenter launches (cost allocation sees them like any resource)."""
    replicas: int
    """Karpenter controller replicas (2 in prod: leader election keeps one active)."""

    def __post_init__(self) -> None:
        problems = []
        for pool_name, pool in (("cpu", self.cpu), ("gpu", self.gpu)):
            if not pool.instance_families:
                problems.append(f"{pool_name}.instance_families: at least one is required")
            if not pool.capacity_types:
                problems.append(f"{pool_name}.capacity_types: at least one is required")
            for resource, amount in pool.limits.items():
                try:
                    negative = quantity(amount) < 0
                except ValueError as exc:
                    problems.append(f"{pool_name}.limits[{resource}]: {exc}")
                    continue
                if negative:
                    problems.append(f"{pool_name}.limits[{resource}]: got {amount}, expected >= 0")
        if GPU_RESOURCE not in self.gpu.limits:
            problems.append("gpu.limits: must cap nvidia.com/gpu")
        if problems:
            raise ValueError("invalid NodePoolsArgs: " + "; ".join(problems))


def controller_policy(
    *, cluster_name: str, region: str, account: str, partition: str, queue_arn: str, node_role_arn: str
) -> str:
    """Karpenter's permissions: exactly the statements of the five controller policies in Karpenter's
    getting-started CloudFormation template of the pinned version (committed as a derived subset,
    see components/upstream/README.md), with the template's placeholders filled in.

    Upstream's scoping is kept whole, in particular: instance profiles may be created only with
    this cluster's tags in the request, and tagged, changed or deleted only when they already
    carry them (`aws:RequestTag/...` and `aws:ResourceTag/...` conditions); instances and launch
    templates likewise. One inline policy holds all of them (about 6.6k of the 10,240 characters
    IAM allows a role's inline policies).
    """
    placeholders = {
        "${ClusterName}": cluster_name,
        "${AWS::Region}": region,
        "${AWS::AccountId}": account,
        "${AWS::Partition}": partition,
        "${KarpenterInterruptionQueue.Arn}": queue_arn,
        "${KarpenterNodeRole.Arn}": node_role_arn,
    }

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for placeholder, actual in placeholders.items():
                value = value.replace(placeholder, actual)
            if "${" in value:
                raise ValueError(f"unknown placeholder in Karpenter's upstream policy: {value}")
            return value
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {fill(k): fill(v) for k, v in value.items()}
        return value

    policies = json.loads(CONTROLLER_POLICY.read_text())
    statements = [fill(statement) for policy in policies.values() for statement in policy]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def queue_policy(queue_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "EventBridgeWrite",
                    "Effect": "Allow",
                    "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                },
                {
                    "Sid": "DenyHTTP",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "sqs:*",
                    "Resource": queue_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ],
        }
    )


def node_class_spec(
    *,
    role_name: str,
    cluster_name: str,
    security_group_id: str,
    ami_alias: str,
    root_volume_gi: int,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    return {
        "role": role_name,
        "amiSelectorTerms": [{"alias": ami_alias}],
        "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}}],
        "securityGroupSelectorTerms": [{"id": security_group_id}],
        "metadataOptions": {
            "httpEndpoint": "enabled",
            "httpProtocolIPv6": "disabled",
            "httpPutResponseHopLimit": 1,
            "httpTokens": "required",
        },
        "blockDeviceMappings": [
            {
                "deviceName": "/dev/xvda",
                "ebs": {
                    "volumeSize": f"{root_volume_gi}Gi",
                    "volumeType": "gp3",
                    "encrypted": True,
                    "deleteOnTermination": True,
                },
            }
        ],
        "tags": dict(tags),
    }


def node_pool_spec(pool_name: str, pool: PoolArgs, *, gpu: bool) -> dict[str, Any]:
    requirements = [
        {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": list(pool.instance_families)},
        {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": list(pool.instance_sizes)},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(pool.capacity_types)},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    template_spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": pool_name},
        "requirements": requirements,
        "expireAfter": pool.expire_after,
    }
    if gpu:
        template_spec["taints"] = [dict(GPU_TAINT)]
    return {
        "template": {"metadata": {"labels": {POOL_LABEL: pool_name}}, "spec": template_spec},
        "disruption": {
            "consolidationPolicy": pool.consolidation_policy,
            "consolidateAfter": pool.consolidate_after,
            # never disrupt more than one GPU node (or 10% of CPU nodes) at a time
            "budgets": [{"nodes": "1" if gpu else "10%"}],
        },
        "limits": dict(pool.limits),
    }


class NodePools(pulumi.ComponentResource):
    queue_name: pulumi.Output[str]
    karpenter: k8s.helm.v3.Release
    karpenter_role_arn: pulumi.Output[str]
    """Karpenter controller's workload role (IRSA)."""
    gpu_node_selector: dict[str, str]
    """Node selector a GPU workload uses (with `gpu_toleration`)."""
    gpu_toleration: dict[str, str]

    def __init__(self, name: str, args: NodePoolsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """`opts.depends_on`: what must exist before Karpenter and the device plugin install (the system node group)."""
        super().__init__(TOKEN, name, None, opts)
        after = dependencies(opts)
        queue = self._interruption_queue(name)
        role = self._controller_role(name, args, queue)
        self.karpenter = self._karpenter(name, args, queue, role, after=after)
        # Node classes need the node role, its policies and its access entry for their nodes to
        # join; on destroy they (and their nodes) go first.
        after_karpenter = pulumi.ResourceOptions(
            parent=self, depends_on=[self.karpenter, *args.node_role.ready, *args.node_access]
        )
        for pool_name, pool, gpu in (("cpu", args.cpu, False), ("gpu", args.gpu, True)):
            self._pool(name, args, pool_name, pool, gpu=gpu, after_karpenter=after_karpenter)
        self.gpu_node_selector = {POOL_LABEL: "gpu"}
        self.gpu_toleration = {
            "key": GPU_TAINT["key"],
            "operator": "Equal",
            "value": GPU_TAINT["value"],
            "effect": GPU_TAINT["effect"],
        }
        self._device_plugin(name, after=after)
        self.queue_name = queue.name
        self.karpenter_role_arn = role.arn
        self.register_outputs({"queue_name": self.queue_name, "karpenter_role_arn": self.karpenter_role_arn})

    def _interruption_queue(self, name: str) -> aws.sqs.Queue:
        """The SQS queue Karpenter reads interruptions from, and the EventBridge rules that feed it."""
        child = pulumi.ResourceOptions(parent=self)
        queue = aws.sqs.Queue(
            f"{name}-interruptions", message_retention_seconds=300, sqs_managed_sse_enabled=True, opts=child
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruptions-policy", queue_url=queue.url, policy=queue.arn.apply(queue_policy), opts=child
        )
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern), opts=child)
            aws.cloudwatch.EventTarget(
                f"{name}-{event}-target",
                rule=rule.name,
                arn=queue.arn,
                target_id="karpenter-interruption-queue",
                opts=child,
            )
        return queue

    def _controller_role(self, name: str, args: NodePoolsArgs, queue: aws.sqs.Queue) -> RoleWithPolicies:
        """Karpenter's workload role: exactly the upstream controller policy of the pinned version."""
        caller = aws.get_caller_identity(opts=pulumi.InvokeOptions(parent=self))
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        partition = aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition
        return workload_role(
            f"{name}-karpenter",
            identity=args.identity,
            namespace=NAMESPACE,
            service_account=SERVICE_ACCOUNT,
            policy=pulumi.Output.all(queue.arn, args.node_role.arn).apply(
                lambda a: controller_policy(
                    cluster_name=args.cluster_name,
                    region=region,
                    account=caller.account_id,
                    partition=partition,
                    queue_arn=a[0],
                    node_role_arn=a[1],
                )
            ),
            parent=self,
        )

    def _karpenter(
        self,
        name: str,
        args: NodePoolsArgs,
        queue: aws.sqs.Queue,
        role: RoleWithPolicies,
        *,
        after: list[pulumi.Resource],
    ) -> k8s.helm.v3.Release:
        """The CRD release, then the controller release on the system nodes."""
        crds = versions.helm_release(
            f"{name}-karpenter-crd",
            versions.KARPENTER_CRD,
            release="karpenter-crd",
            namespace=NAMESPACE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
        return versions.helm_release(
            f"{name}-karpenter",
            versions.KARPENTER,
            release="karpenter",
            namespace=NAMESPACE,
            skip_crds=True,  # owned by the karpenter-crd release above
            values={
                "replicas": args.replicas,
                "settings": {
                    "clusterName": args.cluster_name,
                    "clusterEndpoint": args.cluster_endpoint,
                    "interruptionQueue": queue.name,
                },
                "serviceAccount": {"name": SERVICE_ACCOUNT, "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
                "nodeSelector": SYSTEM_POOL_LABEL,  # never on the nodes it manages
                "controller": {
                    "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
                },
            },
            # its policy outlives it: on destroy it still terminates the nodes of deleted pools
            opts=pulumi.ResourceOptions(parent=self, depends_on=[crds, *after, *role.ready]),
        )

    def _pool(
        self,
        name: str,
        args: NodePoolsArgs,
        pool_name: str,
        pool: PoolArgs,
        *,
        gpu: bool,
        after_karpenter: pulumi.ResourceOptions,
    ) -> None:
        """One pool: its EC2NodeClass (AMI, subnets, security group, IMDSv2, encrypted root volume) and NodePool."""
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-{pool_name}-class",
            api_version="karpenter.k8s.aws/v1",
            kind="EC2NodeClass",
            metadata={"name": pool_name},
            spec=pulumi.Output.all(args.node_role.name, args.cluster_security_group_id).apply(
                lambda a: node_class_spec(
                    role_name=a[0],
                    cluster_name=args.cluster_name,
                    security_group_id=a[1],
                    ami_alias=args.ami_alias,
                    root_volume_gi=pool.root_volume_gi,
                    tags={**args.node_tags, POOL_LABEL: pool_name},
                )
            ),
            opts=after_karpenter,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-{pool_name}-pool",
            api_version="karpenter.sh/v1",
            kind="NodePool",
            metadata={"name": pool_name},
            spec=node_pool_spec(pool_name, pool, gpu=gpu),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.karpenter, node_class]),
        )

    def _device_plugin(self, name: str, *, after: list[pulumi.Resource]) -> None:
        """The NVIDIA device plugin, on GPU nodes only: it advertises `nvidia.com/gpu` to the scheduler."""
        versions.helm_release(
            f"{name}-nvidia-device-plugin",
            versions.NVIDIA_DEVICE_PLUGIN,
            release="nvidia-device-plugin",
            namespace=NAMESPACE,
            values={
                # Only GPU nodes run the plugin; a list replaces the chart's default node affinity.
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": ["gpu"]}]}
                            ]
                        }
                    }
                },
                "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
