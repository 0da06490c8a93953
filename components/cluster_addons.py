"""ClusterAddons: the AWS Load Balancer Controller and the EBS CSI driver, each with its own role.

The EBS CSI driver also gets an encrypted gp3 StorageClass, `gp3-encrypted`.
The Load Balancer Controller turns Ingresses into ALBs (the serving canary uses its
weighted target groups) and Services into NLBs. Its role may change only load balancers,
target groups and security groups it tagged `elbv2.k8s.aws/cluster` itself. The EBS CSI
driver gives pods encrypted gp3 volumes (Prometheus, for instance) and runs as an EKS
managed add-on with AWS's managed policy.

Ordering for `pulumi destroy`: anything that creates a load balancer (an Ingress, a
`LoadBalancer` Service) must depend on `load_balancer_controller`, so it is deleted while
the controller still runs and can remove the load balancer before the subnets go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import versions
from components.cluster import SYSTEM_POOL_LABEL
from components.identity import OidcIdentity, workload_role

TOKEN = "mlops:k8s:ClusterAddons"
LBC_SERVICE_ACCOUNT = "aws-load-balancer-controller"
EBS_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
_TAGGED = {"Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}}
_TAGGING_ON_CREATE = {"Null": {"aws:RequestTag/elbv2.k8s.aws/cluster": "false"}}


@dataclass(frozen=True, kw_only=True)
class ClusterAddonsArgs:
    cluster_name: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    identity: OidcIdentity
    depends_on: Sequence[pulumi.Resource] = ()
    """What must exist first (the system node group)."""
    replicas: int = 1
    """Load Balancer Controller replicas (2 in prod)."""
    ebs_csi_version: str | None = None
    """EBS CSI add-on version; None takes AWS's default for the cluster's Kubernetes version."""


def load_balancer_controller_policy() -> str:
    """Read broadly, write only what the controller tagged as its own."""
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": "iam:CreateServiceLinkedRole",
            "Resource": "*",
            "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}},
        },
        {
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeAccountAttributes", "ec2:DescribeAddresses", "ec2:DescribeAvailabilityZones", "ec2:DescribeInternetGateways",
                "ec2:DescribeVpcs", "ec2:DescribeVpcPeeringConnections", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
                "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "ec2:DescribeRouteTables",
                "ec2:GetCoipPoolUsage", "ec2:DescribeCoipPools", "ec2:GetSecurityGroupsForVpc", "ec2:DescribeIpamPools",
                "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeListenerCertificates",
                "elasticloadbalancing:DescribeListenerAttributes", "elasticloadbalancing:DescribeSSLPolicies",
                "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeTags", "elasticloadbalancing:DescribeTrustStores",
                "elasticloadbalancing:DescribeCapacityReservation",
                "acm:ListCertificates", "acm:DescribeCertificate", "iam:ListServerCertificates", "iam:GetServerCertificate",
                "cognito-idp:DescribeUserPoolClient", "wafv2:GetWebACL", "wafv2:GetWebACLForResource",
                "wafv2:AssociateWebACL", "wafv2:DisassociateWebACL", "shield:GetSubscriptionState",
                "shield:DescribeProtection", "shield:CreateProtection", "shield:DeleteProtection",
            ],
            "Resource": "*",
        },
        {"Effect": "Allow", "Action": ["ec2:CreateSecurityGroup"], "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "arn:aws:ec2:*:*:security-group/*",
            "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}, **_TAGGING_ON_CREATE},
        },
        {
            "Effect": "Allow",
            "Action": ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:CreateTags", "ec2:DeleteTags"],
            "Resource": "arn:aws:ec2:*:*:security-group/*",
            "Condition": _TAGGED,
        },
        {
            "Effect": "Allow",
            "Action": ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
            "Resource": "*",
            "Condition": _TAGGING_ON_CREATE,
        },
        {
            "Effect": "Allow",
            "Action": [
                "elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener", "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:DeleteRule", "elasticloadbalancing:ModifyListener", "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:SetRulePriorities", "elasticloadbalancing:AddListenerCertificates",
                "elasticloadbalancing:RemoveListenerCertificates", "elasticloadbalancing:ModifyListenerAttributes",
            ],
            "Resource": [
                "arn:aws:elasticloadbalancing:*:*:loadbalancer/app/*/*",
                "arn:aws:elasticloadbalancing:*:*:loadbalancer/net/*/*",
                "arn:aws:elasticloadbalancing:*:*:listener/*/*/*/*",
                "arn:aws:elasticloadbalancing:*:*:listener-rule/*/*/*/*/*",
            ],
        },
        {
            "Effect": "Allow",
            "Action": [
                "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType",
                "elasticloadbalancing:SetSecurityGroups", "elasticloadbalancing:SetSubnets", "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup", "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup", "elasticloadbalancing:ModifyCapacityReservation",
                "elasticloadbalancing:ModifyIpPools", "elasticloadbalancing:SetWebAcl",
                "elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags",
            ],
            "Resource": "*",
            "Condition": _TAGGED,
        },
        {
            "Effect": "Allow",
            "Action": "elasticloadbalancing:AddTags",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"]},
                **_TAGGING_ON_CREATE,
            },
        },
        {
            "Effect": "Allow",
            "Action": ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
            "Resource": "arn:aws:elasticloadbalancing:*:*:targetgroup/*/*",
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class ClusterAddons(pulumi.ComponentResource):
    load_balancer_controller: k8s.helm.v3.Release
    """Depend on this from anything that creates a load balancer (see module docstring)."""
    storage_class: str
    """Name of the encrypted gp3 StorageClass volumes should use."""

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
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
                "serviceAccount": {"create": True, "name": LBC_SERVICE_ACCOUNT, "annotations": {"eks.amazonaws.com/role-arn": lbc_role.arn}},
                "nodeSelector": SYSTEM_POOL_LABEL,
                # Do not silently take over every `type: LoadBalancer` Service in the cluster.
                "enableServiceMutatorWebhook": False,
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )

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
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )
        self.storage_class = "gp3-encrypted"
        k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata={"name": self.storage_class},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",  # in the zone of the pod that needs it
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ebs_addon]),
        )
        self.register_outputs({"load_balancer_controller_role_arn": lbc_role.arn, "ebs_csi_role_arn": ebs_role.arn})
