"""ClusterAddons: the AWS Load Balancer Controller and the EBS CSI driver, each with its own role,
and metrics-server.

The EBS CSI driver also gets an encrypted gp3 StorageClass, `gp3-encrypted`.
The Load Balancer Controller turns Ingresses into ALBs (the serving canary uses its
weighted target groups) and Services into NLBs. Its role may change only load balancers,
target groups and security groups it tagged `elbv2.k8s.aws/cluster` itself. The EBS CSI
driver gives pods encrypted gp3 volumes (Prometheus, for instance) and runs as an EKS
managed add-on with AWS's managed policy. Both tag what they create with the platform's tags,
so the budget's `stack` filter counts load balancers and volumes too. metrics-server serves the
resource metrics API that CPU-based HorizontalPodAutoscalers read (EKS ships none).

Ordering for `pulumi destroy`: anything that creates a load balancer (an Ingress, a
`LoadBalancer` Service) must depend on `load_balancer_controller`, so it is deleted while
the controller still runs and can remove the load balancer before the subnets go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import versions
from components.cluster import SYSTEM_POOL_LABEL
from components.identity import OidcIdentity, RoleWithPolicies, workload_role
from components.options import dependencies

TOKEN = "mlops:k8s:ClusterAddons"
LBC_SERVICE_ACCOUNT = "aws-load-balancer-controller"
EBS_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
UPSTREAM = Path(__file__).resolve().parent / "upstream"
LBC_IAM_POLICY = UPSTREAM / "aws-load-balancer-controller-v2.14.0" / "iam_policy.json"
"""Verbatim copy of the controller's `docs/install/iam_policy.json` at tag v2.14.0."""


@dataclass(frozen=True, kw_only=True)
class ClusterAddonsArgs:
    """`replicas` and `ebs_csi_version` come from the stack's `cluster` settings (defaults in infra/profiles.py
    and infra/settings.py only); the rest from the cluster."""

    cluster_name: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    identity: OidcIdentity
    replicas: int
    """Load Balancer Controller replicas (2 in prod)."""
    ebs_csi_version: str | None
    """EBS CSI add-on version; None takes AWS's default for the cluster's Kubernetes version."""
    resource_tags: Mapping[str, str]
    """Platform tags for what the add-ons create outside Pulumi: load balancers, target groups,
    their security groups (the controller's `defaultTags`) and EBS volumes (`extraVolumeTags`)."""


def ebs_csi_configuration(tags: Mapping[str, str]) -> dict[str, Any]:
    """The EBS CSI add-on's configuration values: every volume it creates carries the platform's
    tags (`controller.extraVolumeTags`, in the add-on's configuration schema)."""
    return {"controller": {"extraVolumeTags": dict(tags)}} if tags else {}


def metrics_server_values(replicas: int) -> dict[str, Any]:
    """metrics-server chart values: on the system nodes; with two replicas, a PDB keeps one up."""
    values: dict[str, Any] = {"replicas": replicas, "nodeSelector": SYSTEM_POOL_LABEL}
    if replicas > 1:
        values["podDisruptionBudget"] = {"enabled": True, "minAvailable": 1}
    return values


def load_balancer_controller_policy() -> str:
    """Exactly the controller's upstream `iam_policy.json` of the pinned version, read from the
    committed copy (the single source of truth; bump it with the chart).

    Upstream's own scoping is the safe part: writes to load balancers, target groups and
    security groups need the `elbv2.k8s.aws/cluster` tag the controller sets on what it creates.
    Narrowing it breaks ALBs: the controller adds the ALB-to-pod rule to the *cluster* security
    group (untagged), and v2.14 tags listeners and rules when it creates them.
    """
    return json.dumps(json.loads(LBC_IAM_POLICY.read_text()))


class ClusterAddons(pulumi.ComponentResource):
    load_balancer_controller: k8s.helm.v3.Release
    """Depend on this from anything that creates a load balancer (see module docstring)."""
    metrics_server: k8s.helm.v3.Release
    """Serves `metrics.k8s.io`; CPU HPAs depend on it."""
    storage_class: str
    """Name of the encrypted gp3 StorageClass volumes should use."""
    storage_class_resource: k8s.storage.v1.StorageClass
    """Depend on it from anything with PVCs of this class (Prometheus, Alertmanager): on destroy the
    class and the EBS CSI driver behind it outlive the claims, so their volumes are deleted."""

    load_balancer_controller_role_arn: pulumi.Output[str]
    ebs_csi_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """`opts.depends_on`: what must exist before the add-ons install (the system node group)."""
        super().__init__(TOKEN, name, None, opts)
        self._after = dependencies(opts)
        lbc_role = self._load_balancer_controller(name, args)
        ebs_role = self._ebs_csi(name, args)
        self.metrics_server = versions.helm_release(
            f"{name}-metrics-server",
            versions.METRICS_SERVER,
            release="metrics-server",
            namespace="kube-system",
            values=metrics_server_values(args.replicas),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self._after)),
        )
        self.load_balancer_controller_role_arn, self.ebs_csi_role_arn = lbc_role.arn, ebs_role.arn
        self.register_outputs(
            {
                "load_balancer_controller_role_arn": self.load_balancer_controller_role_arn,
                "ebs_csi_role_arn": self.ebs_csi_role_arn,
            }
        )

    def _load_balancer_controller(self, name: str, args: ClusterAddonsArgs) -> RoleWithPolicies:
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        lbc_role = workload_role(
            f"{name}-lbc",
            identity=args.identity,
            namespace="kube-system",
            service_account=LBC_SERVICE_ACCOUNT,
            policy=load_balancer_controller_policy(),
            parent=self,
        )
        self.load_balancer_controller = versions.helm_release(
            f"{name}-aws-load-balancer-controller",
            versions.AWS_LOAD_BALANCER_CONTROLLER,
            release="aws-load-balancer-controller",
            namespace="kube-system",
            values={
                "clusterName": args.cluster_name,
                "region": region,
                "vpcId": args.vpc_id,  # explicit: nodes' IMDS is closed to pods (hop limit 1)
                "replicaCount": args.replicas,
                "serviceAccount": {
                    "create": True,
                    "name": LBC_SERVICE_ACCOUNT,
                    "annotations": {"eks.amazonaws.com/role-arn": lbc_role.arn},
                },
                "nodeSelector": SYSTEM_POOL_LABEL,
                # Do not silently take over every `type: LoadBalancer` Service in the cluster.
                "enableServiceMutatorWebhook": False,
                # ALBs, target groups and security groups it creates carry the platform's tags (budget: `stack`)
                "defaultTags": dict(args.resource_tags),
            },
            # its policy outlives it: on destroy it still deletes the ALBs of Ingresses removed before it
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self._after, *lbc_role.ready]),
        )
        return lbc_role

    def _ebs_csi(self, name: str, args: ClusterAddonsArgs) -> RoleWithPolicies:
        ebs_role = workload_role(
            f"{name}-ebs-csi",
            identity=args.identity,
            namespace="kube-system",
            service_account=EBS_SERVICE_ACCOUNT,
            managed_policy_arns=(EBS_CSI_POLICY,),
            parent=self,
        )
        ebs_addon = aws.eks.Addon(
            f"{name}-ebs-csi",
            cluster_name=args.cluster_name,
            addon_name=versions.EBS_CSI_ADDON,
            addon_version=args.ebs_csi_version,
            service_account_role_arn=ebs_role.arn,
            configuration_values=json.dumps(ebs_csi_configuration(args.resource_tags)),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            # its policy outlives it: volumes of PVCs deleted before it are still removed
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self._after, *ebs_role.ready]),
        )
        self.storage_class = "gp3-encrypted"
        self.storage_class_resource = k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata={"name": self.storage_class},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",  # in the zone of the pod that needs it
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ebs_addon]),
        )
        return ebs_role
