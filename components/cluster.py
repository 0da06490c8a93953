"""Cluster: EKS with encrypted secrets, a small system node group and workload identity.

Creates, in dependency order: a KMS key for Kubernetes secrets; the control-plane log group
(so retention is ours, not "never expire"); the cluster role and the cluster (pinned version,
standard support only, API endpoint private or allow-listed); the OIDC provider for IRSA;
the node role shared by the system node group and Karpenter's nodes; a launch template that
enforces IMDSv2 with a hop limit of 1 (pods cannot borrow the node's credentials); the system
node group that runs the add-ons; access entries for admin roles and Karpenter's nodes; and
the `pulumi_kubernetes.Provider` every Kubernetes object of the platform uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.identity import OidcIdentity, service_role

TOKEN = "mlops:cluster:Cluster"
SYSTEM_POOL_LABEL = {"mlops.platform/pool": "system"}
"""Node label of the managed system node group; add-ons pin themselves to it."""
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
)


@dataclass(frozen=True, kw_only=True)
class ClusterArgs:
    cluster_name: str
    """Fixed EKS cluster name; the network's discovery tags already carry it."""
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    """Private subnets for the control-plane interfaces and the system nodes."""
    endpoint_public_access: bool = False
    """Expose the API endpoint publicly (only to `public_access_cidrs`); the private endpoint is always on."""
    public_access_cidrs: Sequence[str] = ()
    log_types: Sequence[str] = ("api", "audit", "authenticator")
    log_retention_days: int = 30
    admin_role_arns: Sequence[str] = ()
    """IAM roles granted cluster-admin through access entries (besides whoever runs `pulumi up`)."""
    system_instance_type: str = "t3.medium"
    system_min_size: int = 2
    system_max_size: int = 3
    system_desired_size: int = 2
    deletion_protection: bool = False
    """EKS refuses to delete the cluster, and Pulumi marks it `protect`ed."""

    def __post_init__(self) -> None:
        problems = []
        if self.endpoint_public_access and not self.public_access_cidrs:
            problems.append("public_access_cidrs: required when endpoint_public_access is true")
        if any(c.endswith("/0") for c in self.public_access_cidrs):
            problems.append("public_access_cidrs: 0.0.0.0/0 is not allowed")
        if not self.system_min_size <= self.system_desired_size <= self.system_max_size:
            problems.append("system node group: expected min <= desired <= max")
        if problems:
            raise ValueError("invalid ClusterArgs: " + "; ".join(problems))


def kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token`: no long-lived credential in state."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
            "users": [
                {
                    "name": cluster_name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
                        }
                    },
                }
            ],
        }
    )


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    """The EKS-managed cluster security group, shared by control plane and nodes."""
    identity: OidcIdentity
    """OIDC provider for workload roles (see components/identity.py)."""
    node_role: aws.iam.Role
    """Role of every node (system group and Karpenter's); Karpenter passes it to EC2."""
    provider: k8s.Provider
    """Pass as `providers={"kubernetes": cluster.provider}` to every component with Kubernetes objects."""
    system_node_group: aws.eks.NodeGroup
    eks_cluster: aws.eks.Cluster

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region

        secrets_key = aws.kms.Key(
            f"{name}-secrets-key",
            description=f"{args.cluster_name}: envelope encryption of Kubernetes secrets",
            enable_key_rotation=True,
            deletion_window_in_days=30 if args.deletion_protection else 7,
            # losing this key makes every Kubernetes secret of the cluster unreadable
            opts=pulumi.ResourceOptions(parent=self, protect=args.deletion_protection),
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane-logs",
            name=f"/aws/eks/{args.cluster_name}/cluster",  # the name EKS writes to
            retention_in_days=args.log_retention_days,
            opts=child,
        )
        cluster_role = service_role(
            f"{name}-cluster-role",
            service="eks.amazonaws.com",
            managed_policy_arns=("arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",),
            parent=self,
        )

        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=args.cluster_name,
            version=args.kubernetes_version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.subnet_ids,
                endpoint_private_access=True,
                endpoint_public_access=args.endpoint_public_access,
                public_access_cidrs=list(args.public_access_cidrs) if args.endpoint_public_access else None,
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn), resources=["secrets"]
            ),
            enabled_cluster_log_types=list(args.log_types),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",
                # whoever runs `pulumi up` must reach the API to install the add-ons
                bootstrap_cluster_creator_admin_permissions=True,
            ),
            # Standard support only: extended support costs 6x ($0.60/h); an old version must be upgraded.
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
            deletion_protection=args.deletion_protection,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group], protect=args.deletion_protection),
        )

        issuer = cluster.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child)
        self.identity = OidcIdentity(provider_arn=oidc.arn, issuer_url=issuer)

        self.node_role = service_role(f"{name}-node-role", service="ec2.amazonaws.com", managed_policy_arns=NODE_POLICIES, parent=self)
        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-system-lt",
            description="system nodes: IMDSv2 only, hop limit 1, encrypted gp3 root volume",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(volume_size=40, volume_type="gp3", encrypted="true"),
                )
            ],
            opts=child,
        )
        self.system_node_group = aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster.name,
            node_role_arn=self.node_role.arn,
            subnet_ids=args.subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            instance_types=[args.system_instance_type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.system_min_size, max_size=args.system_max_size, desired_size=args.system_desired_size
            ),
            labels=SYSTEM_POOL_LABEL,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=launch_template.id, version=launch_template.latest_version.apply(str)),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]),
        )

        # Karpenter's nodes join with the node role; the system group's entry is created by EKS itself.
        aws.eks.AccessEntry(f"{name}-karpenter-nodes", cluster_name=cluster.name, principal_arn=self.node_role.arn, type="EC2_LINUX", opts=child)
        for index, role_arn in enumerate(args.admin_role_arns):
            entry = aws.eks.AccessEntry(f"{name}-admin-{index}", cluster_name=cluster.name, principal_arn=role_arn, type="STANDARD", opts=child)
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{index}-policy",
                cluster_name=cluster.name,
                principal_arn=role_arn,
                policy_arn=CLUSTER_ADMIN_POLICY,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )

        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
                lambda a: kubeconfig(a[0], a[1], a[2], region)
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.system_node_group]),
        )

        self.eks_cluster = cluster
        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.register_outputs(
            {
                "name": self.name,
                "endpoint": self.endpoint,
                "security_group_id": self.security_group_id,
                "oidc_provider_arn": oidc.arn,
                "node_role_arn": self.node_role.arn,
            }
        )
