"""NodePools: Karpenter with a CPU pool and a GPU pool that both scale to zero.

Creates, in dependency order: the interruption queue (SQS, encrypted, TLS-only) and the
EventBridge rules that feed it spot interruptions, rebalance hints, scheduled maintenance
and instance state changes; Karpenter's workload role (IRSA, scoped to this cluster's
resources); the CRD release, then the Karpenter release on the system nodes; one
`EC2NodeClass` and one `NodePool` per pool; and the NVIDIA device plugin, scheduled only on
GPU nodes.

GPU capacity cannot run away: the GPU pool is tainted `nvidia.com/gpu=true:NoSchedule` (only
pods that ask for GPUs land there), has a hard `limits` ceiling on GPUs, is consolidated as
soon as it has been empty for `consolidate_after`, and its nodes expire after `expire_after`.

`pulumi destroy` order: pools and node classes depend on the Karpenter release, so they are
deleted first while Karpenter still runs and can terminate their nodes; the release goes
before the cluster (it depends on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import versions
from components.cluster import SYSTEM_POOL_LABEL
from components.identity import OidcIdentity, workload_role

TOKEN = "mlops:k8s:NodePools"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
POOL_LABEL = "mlops.platform/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"

INTERRUPTION_EVENTS = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
}


@dataclass(frozen=True, kw_only=True)
class PoolArgs:
    instance_families: Sequence[str]
    instance_sizes: Sequence[str]
    capacity_types: Sequence[Literal["spot", "on-demand"]]
    limits: Mapping[str, str]
    """Karpenter `limits`: the most this pool may ever hold, e.g. {"cpu": "32"} or {"nvidia.com/gpu": "2"}."""
    consolidate_after: str = "1m"
    consolidation_policy: Literal["WhenEmpty", "WhenEmptyOrUnderutilized"] = "WhenEmptyOrUnderutilized"
    expire_after: str = "720h"
    root_volume_gi: int = 50


@dataclass(frozen=True, kw_only=True)
class NodePoolsArgs:
    cluster_name: str
    cluster_endpoint: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    identity: OidcIdentity
    node_role: aws.iam.Role
    depends_on: Sequence[pulumi.Resource] = ()
    """What must exist before Karpenter installs (the system node group)."""
    cpu: PoolArgs
    gpu: PoolArgs
    ami_alias: str = "al2023@latest"
    """EC2NodeClass AMI alias; pin a dated one (`al2023@v20251117`) in prod for repeatable nodes."""
    node_tags: Mapping[str, str] = field(default_factory=dict)
    """Tags for the instances Karpenter launches (cost allocation sees them like any resource)."""
    replicas: int = 1
    """Karpenter controller replicas (2 in prod: leader election keeps one active)."""

    def __post_init__(self) -> None:
        problems = []
        for pool_name, pool in (("cpu", self.cpu), ("gpu", self.gpu)):
            if not pool.instance_families:
                problems.append(f"{pool_name}.instance_families: at least one is required")
            if not pool.capacity_types:
                problems.append(f"{pool_name}.capacity_types: at least one is required")
            for resource, amount in pool.limits.items():
                if int(amount) < 0:
                    problems.append(f"{pool_name}.limits[{resource}]: got {amount}, expected >= 0")
        if GPU_RESOURCE not in self.gpu.limits:
            problems.append("gpu.limits: must cap nvidia.com/gpu")
        if problems:
            raise ValueError("invalid NodePoolsArgs: " + "; ".join(problems))


def controller_policy(*, cluster_name: str, region: str, account: str, partition: str, queue_arn: str, node_role_arn: str) -> str:
    """Karpenter's permissions, scoped to resources tagged as this cluster's (after the
    Karpenter v1 reference policy): launch and terminate only its own instances, pass only
    the node role, read only the interruption queue."""
    owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    request_owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned", "aws:RequestTag/eks:eks-cluster-name": cluster_name}
    ec2 = f"arn:{partition}:ec2:{region}"
    instance_profile = f"arn:{partition}:iam::{account}:instance-profile/*"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AllowScopedEC2InstanceAccessActions",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": [f"{ec2}::image/*", f"{ec2}::snapshot/*", f"{ec2}:*:security-group/*", f"{ec2}:*:subnet/*", f"{ec2}:*:capacity-reservation/*"],
        },
        {
            "Sid": "AllowScopedEC2LaunchTemplateAccessActions",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": f"{ec2}:*:launch-template/*",
            "Condition": {"StringEquals": owned, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}},
        },
        {
            "Sid": "AllowScopedEC2InstanceActionsWithTags",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
            "Resource": [f"{ec2}:*:{kind}/*" for kind in ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")],
            "Condition": {"StringEquals": request_owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}},
        },
        {
            "Sid": "AllowScopedResourceCreationTagging",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": [f"{ec2}:*:{kind}/*" for kind in ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")],
            "Condition": {
                "StringEquals": {**request_owned, "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]},
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedResourceTagging",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": f"{ec2}:*:instance/*",
            "Condition": {
                "StringEquals": owned,
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]},
            },
        },
        {
            "Sid": "AllowScopedDeletion",
            "Effect": "Allow",
            "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
            "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
            "Condition": {"StringEquals": owned, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}},
        },
        {
            "Sid": "AllowRegionalReadActions",
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates", "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory",
                "ec2:DescribeSubnets", "ec2:DescribeCapacityReservations",
            ],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
        },
        {"Sid": "AllowSSMReadActions", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*"},
        {"Sid": "AllowPricingReadActions", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
        {
            "Sid": "AllowInterruptionQueueActions",
            "Effect": "Allow",
            "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
            "Resource": queue_arn,
        },
        {
            "Sid": "AllowPassingInstanceRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": node_role_arn,
            "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]}},
        },
        {
            "Sid": "AllowScopedInstanceProfileActions",
            "Effect": "Allow",
            "Action": ["iam:CreateInstanceProfile", "iam:TagInstanceProfile", "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"],
            "Resource": instance_profile,
            "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned", "aws:ResourceTag/topology.kubernetes.io/region": region}},
        },
        {
            "Sid": "AllowScopedInstanceProfileCreation",
            "Effect": "Allow",
            "Action": ["iam:CreateInstanceProfile", "iam:TagInstanceProfile"],
            "Resource": instance_profile,
            "Condition": {
                "StringEquals": {**request_owned, "aws:RequestTag/topology.kubernetes.io/region": region},
                "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
        },
        {"Sid": "AllowInstanceProfileReadActions", "Effect": "Allow", "Action": ["iam:GetInstanceProfile", "iam:ListInstanceProfiles"], "Resource": instance_profile},
        {"Sid": "AllowAPIServerEndpointDiscovery", "Effect": "Allow", "Action": "eks:DescribeCluster", "Resource": f"arn:{partition}:eks:{region}:{account}:cluster/{cluster_name}"},
    ]
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
    *, role_name: str, cluster_name: str, security_group_id: str, ami_alias: str, root_volume_gi: int, tags: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "role": role_name,
        "amiSelectorTerms": [{"alias": ami_alias}],
        "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}}],
        "securityGroupSelectorTerms": [{"id": security_group_id}],
        "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled", "httpPutResponseHopLimit": 1, "httpTokens": "required"},
        "blockDeviceMappings": [
            {"deviceName": "/dev/xvda", "ebs": {"volumeSize": f"{root_volume_gi}Gi", "volumeType": "gp3", "encrypted": True, "deleteOnTermination": True}}
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
    gpu_node_selector: dict[str, str]
    """Node selector a GPU workload uses (with `gpu_toleration`)."""
    gpu_toleration: dict[str, str]

    def __init__(self, name: str, args: NodePoolsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        caller = aws.get_caller_identity(opts=pulumi.InvokeOptions(parent=self))
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        partition = aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition

        queue = aws.sqs.Queue(
            f"{name}-interruptions",
            message_retention_seconds=300,
            sqs_managed_sse_enabled=True,
            opts=child,
        )
        aws.sqs.QueuePolicy(f"{name}-interruptions-policy", queue_url=queue.url, policy=queue.arn.apply(queue_policy), opts=child)
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern), opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{event}-target", rule=rule.name, arn=queue.arn, target_id="karpenter-interruption-queue", opts=child)

        role = workload_role(
            f"{name}-karpenter",
            identity=args.identity,
            namespace=NAMESPACE,
            service_account=SERVICE_ACCOUNT,
            policy=pulumi.Output.all(queue.arn, args.node_role.arn).apply(
                lambda a: controller_policy(
                    cluster_name=args.cluster_name, region=region, account=caller.account_id, partition=partition, queue_arn=a[0], node_role_arn=a[1]
                )
            ),
            parent=self,
        )

        crds = versions.helm_release(
            f"{name}-karpenter-crd",
            versions.KARPENTER_CRD,
            release="karpenter-crd",
            namespace=NAMESPACE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )
        self.karpenter = versions.helm_release(
            f"{name}-karpenter",
            versions.KARPENTER,
            release="karpenter",
            namespace=NAMESPACE,
            skip_crds=True,  # owned by the karpenter-crd release above
            values={
                "replicas": args.replicas,
                "settings": {"clusterName": args.cluster_name, "clusterEndpoint": args.cluster_endpoint, "interruptionQueue": queue.name},
                "serviceAccount": {"name": SERVICE_ACCOUNT, "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
                "nodeSelector": SYSTEM_POOL_LABEL,  # never on the nodes it manages
                "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[crds, *args.depends_on]),
        )

        after_karpenter = pulumi.ResourceOptions(parent=self, depends_on=[self.karpenter])
        for pool_name, pool, gpu in (("cpu", args.cpu, False), ("gpu", args.gpu, True)):
            node_class = k8s.apiextensions.CustomResource(
                f"{name}-{pool_name}-class",
                api_version="karpenter.k8s.aws/v1",
                kind="EC2NodeClass",
                metadata={"name": pool_name},
                spec=pulumi.Output.all(args.node_role.name, args.cluster_security_group_id).apply(
                    lambda a, pool=pool, pool_name=pool_name: node_class_spec(
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

        self.gpu_node_selector = {POOL_LABEL: "gpu"}
        self.gpu_toleration = {"key": GPU_TAINT["key"], "operator": "Equal", "value": GPU_TAINT["value"], "effect": GPU_TAINT["effect"]}
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
                            "nodeSelectorTerms": [{"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": ["gpu"]}]}]
                        }
                    }
                },
                "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )

        self.queue_name = queue.name
        self.register_outputs({"queue_name": self.queue_name, "karpenter_role_arn": role.arn})
