"""Cluster: EKS with encrypted secrets, a small system node group and workload identity.

Creates, in dependency order: a KMS key for Kubernetes secrets; the control-plane log group
(so retention is ours, not "never expire"); the cluster role and the cluster (pinned version,
standard support only, API endpoint private or allow-listed); the OIDC provider for IRSA;
the VPC CNI as a managed add-on with NetworkPolicy enforcement on; the system node role and a
launch template that enforces IMDSv2 with a hop limit of 1 (pods cannot borrow the node's
credentials) and tags what it launches; the system node group that runs the add-ons;
Karpenter's node role with its own access entry; access entries for admin roles; HTTPS rules
from the deploy runner into the cluster security group; and the `pulumi_kubernetes.Provider`
every Kubernetes object of the platform uses.

Every consumer of a role depends on the role's policies (`RoleWithPolicies.ready`), so
`pulumi destroy` removes permissions only after whatever used them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.identity import OidcIdentity, RoleWithPolicies, service_role

TOKEN = "mlops:cluster:Cluster"
SYSTEM_POOL_LABEL = {"mlops.platform/pool": "system"}
"""Node label of the managed system node group; add-ons pin themselves to it."""
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
CLUSTER_POLICY = "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy"
NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
)
"""The node role's managed policies, the same four as Karpenter's getting-started `KarpenterNodeRole`."""
VPC_CNI_ADDON = "vpc-cni"
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true"}
"""The add-on's configuration key (a string, not a boolean) that makes the VPC CNI enforce
NetworkPolicies (EKS User Guide, "Restrict Pod network traffic with Kubernetes network policies")."""
LAUNCHED_RESOURCE_TYPES = ("instance", "volume", "network-interface")
_ADMIN_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""An admin role's key, as it appears in its resources' names (IAM role names are at most 64 characters)."""


@dataclass(frozen=True, kw_only=True)
class ClusterArgs:
    """Values from the stack's `cluster` settings and the network; their defaults live in infra/profiles.py
    and infra/settings.py only."""

    cluster_name: str
    """Fixed EKS cluster name; the network's discovery tags already carry it."""
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    """Private subnets for the control-plane interfaces and the system nodes."""
    endpoint_public_access: bool
    """Expose the API endpoint publicly (only to `public_access_cidrs`); the private endpoint is always on."""
    public_access_cidrs: Sequence[str]
    log_types: Sequence[str]
    log_retention_days: int
    admin_role_arns: Mapping[str, pulumi.Input[str]]
    """IAM roles granted cluster-admin through access entries (besides whoever created the cluster), by a
    stable key that names their resources (`<name>-admin-<key>`): the role's name, say, never its position
    in a list, so adding, removing or reordering roles replaces no entry (EKS refuses a second entry for
    a principal with 409 while Pulumi creates the replacement)."""
    system_instance_type: str
    system_min_size: int
    system_max_size: int
    system_desired_size: int
    deletion_protection: bool
    """EKS refuses to delete the cluster, and Pulumi marks it `protect`ed."""
    deploy_runner_cidrs: Sequence[str]
    """Networks `pulumi up` runs from (a CI runner's subnet, a VPN range): HTTPS into the cluster
    security group, which is how a private API endpoint is reached."""
    deploy_runner_security_group_ids: Sequence[str]
    """Security groups of deploy runners in this VPC or a peered one, admitted like the CIDRs."""
    instance_tags: Mapping[str, str]
    """Tags for the system nodes' instances, volumes and network interfaces (cost allocation)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.endpoint_public_access and not (self.deploy_runner_cidrs or self.deploy_runner_security_group_ids):
            problems.append(
                "deploy_runner_cidrs or deploy_runner_security_group_ids: required with a private endpoint "
                "(nothing else can reach the API to install the add-ons)"
            )
        if any(c.endswith("/0") for c in self.deploy_runner_cidrs):
            problems.append("deploy_runner_cidrs: 0.0.0.0/0 is not allowed")
        if self.endpoint_public_access and not self.public_access_cidrs:
            problems.append("public_access_cidrs: required when endpoint_public_access is true")
        if any(c.endswith("/0") for c in self.public_access_cidrs):
            problems.append("public_access_cidrs: 0.0.0.0/0 is not allowed")
        if not self.system_min_size <= self.system_desired_size <= self.system_max_size:
            problems.append("system node group: expected min <= desired <= max")
        bad_keys = [key for key in self.admin_role_arns if not _ADMIN_KEY.match(key)]
        if bad_keys:
            problems.append(f"admin_role_arns: keys {bad_keys} must be 1-64 letters, digits, '.', '_' or '-'")
        if problems:
            raise ValueError("invalid ClusterArgs: " + "; ".join(problems))


def kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token`: no long-lived credential in state."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}
            ],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
            "users": [
                {
                    "name": cluster_name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": [
                                "eks",
                                "get-token",
                                "--cluster-name",
                                cluster_name,
                                "--region",
                                region,
                                "--output",
                                "json",
                            ],
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
    system_node_role: RoleWithPolicies
    """Role of the managed system node group; EKS registers its access entry itself."""
    karpenter_node_role: RoleWithPolicies
    """Role of the nodes Karpenter launches (it passes the role to EC2); see `_karpenter_node_identity`."""
    karpenter_node_access: aws.eks.AccessEntry
    """The `EC2_LINUX` access entry that lets Karpenter's nodes join; NodeClasses depend on it."""
    provider: k8s.Provider
    """Pass as `providers={"kubernetes": cluster.provider}` to every component with Kubernetes objects."""
    system_node_group: aws.eks.NodeGroup
    eks_cluster: aws.eks.Cluster
    vpc_cni: aws.eks.Addon
    """The VPC CNI as a managed add-on, with NetworkPolicy enforcement on."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        cluster = self.eks_cluster = self._control_plane(name, args)
        issuer = cluster.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=pulumi.ResourceOptions(parent=self)
        )
        self.identity = OidcIdentity(provider_arn=oidc.arn, issuer_url=issuer)
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.system_node_group = self._system_nodes(name, args, cluster)
        self.karpenter_node_role, self.karpenter_node_access = self._karpenter_node_identity(name, cluster)
        admin_access = self._admin_access(name, args, cluster)
        runner_rules = self._deploy_runner_access(name, args)

        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
                lambda a: kubeconfig(a[0], a[1], a[2], region)
            ),
            # Nothing reaches the API before the runner may (private endpoint) and nodes exist; on
            # destroy every Kubernetes object goes before the admins' access (the CI deploy role's
            # included), so whoever runs `pulumi destroy` is not Unauthorized half-way.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.system_node_group, *runner_rules, *admin_access]),
        )
        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.register_outputs(
            {
                "name": self.name,
                "endpoint": self.endpoint,
                "security_group_id": self.security_group_id,
                "oidc_provider_arn": self.identity.provider_arn,
                "system_node_role_arn": self.system_node_role.arn,
                "karpenter_node_role_arn": self.karpenter_node_role.arn,
            }
        )

    def _control_plane(self, name: str, args: ClusterArgs) -> aws.eks.Cluster:
        """KMS key for secrets, the log group (retention is ours), the cluster role and the cluster."""
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
            opts=pulumi.ResourceOptions(parent=self),
        )
        cluster_role = service_role(
            f"{name}-cluster-role", service="eks.amazonaws.com", managed_policy_arns=(CLUSTER_POLICY,), parent=self
        )
        return aws.eks.Cluster(
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
            # the cluster policy outlives the cluster on destroy (EKS needs it to delete its ENIs)
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[log_group, *cluster_role.ready], protect=args.deletion_protection
            ),
        )

    def _system_nodes(self, name: str, args: ClusterArgs, cluster: aws.eks.Cluster) -> aws.eks.NodeGroup:
        """The VPC CNI add-on, then the managed system node group with an IMDSv2-only launch template."""
        self.system_node_role = service_role(
            f"{name}-node-role", service="ec2.amazonaws.com", managed_policy_arns=NODE_POLICIES, parent=self
        )
        # Before any node: aws-node starts with NetworkPolicy enforcement on. It uses the node
        # role's CNI policy, so it depends on that role too.
        self.vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=cluster.name,
            addon_name=VPC_CNI_ADDON,
            configuration_values=json.dumps(VPC_CNI_CONFIGURATION),
            resolve_conflicts_on_create="OVERWRITE",  # EKS installed it self-managed with the cluster
            resolve_conflicts_on_update="OVERWRITE",  # our configuration is the truth
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.system_node_role.ready),
        )
        launch_template = self._system_launch_template(name, args)
        return aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster.name,
            node_role_arn=self.system_node_role.arn,
            subnet_ids=args.subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            instance_types=[args.system_instance_type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.system_min_size, max_size=args.system_max_size, desired_size=args.system_desired_size
            ),
            labels=SYSTEM_POOL_LABEL,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str)
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.vpc_cni, *self.system_node_role.ready],
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )

    def _system_launch_template(self, name: str, args: ClusterArgs) -> aws.ec2.LaunchTemplate:
        """System nodes: IMDSv2 only (hop limit 1, so pods can't borrow the node's role) and an encrypted root."""
        instance_tags = dict(args.instance_tags)
        return aws.ec2.LaunchTemplate(
            f"{name}-system-lt",
            description="system nodes: IMDSv2 only, hop limit 1, encrypted gp3 root volume",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=40, volume_type="gp3", encrypted="true"
                    ),
                )
            ],
            # The template's own `tags` stay on the template; what it launches is tagged here,
            # so the budget's `stack` filter counts the system nodes and their volumes.
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=instance_tags)
                for kind in LAUNCHED_RESOURCE_TYPES
            ]
            if instance_tags
            else None,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _karpenter_node_identity(
        self, name: str, cluster: aws.eks.Cluster
    ) -> tuple[RoleWithPolicies, aws.eks.AccessEntry]:
        """Karpenter's nodes get their own role and their own `EC2_LINUX` access entry.

        Why not reuse the system node group's role: EKS creates the access entry of a managed
        node group's role itself, and a principal can be in only one access entry
        (docs.aws.amazon.com/eks/latest/userguide/creating-access-entries.html), so a second
        entry for that role fails with 409, and Karpenter's nodes would hang on an entry whose
        lifecycle belongs to the node group. With a role of their own (as Karpenter's
        getting-started template does: `KarpenterNodeRole`), the entry is ours, Karpenter may
        pass only this role, and NodeClasses depend on the entry, so it outlives their nodes.
        """
        role = service_role(
            f"{name}-karpenter-node-role", service="ec2.amazonaws.com", managed_policy_arns=NODE_POLICIES, parent=self
        )
        entry = aws.eks.AccessEntry(
            f"{name}-karpenter-nodes",
            cluster_name=cluster.name,
            principal_arn=role.arn,
            type="EC2_LINUX",
            opts=pulumi.ResourceOptions(parent=self, depends_on=role.ready),
        )
        return role, entry

    def _admin_access(self, name: str, args: ClusterArgs, cluster: aws.eks.Cluster) -> list[pulumi.Resource]:
        """A `STANDARD` access entry and a cluster-admin association per admin role, named by its key."""
        access: list[pulumi.Resource] = []
        for key, role_arn in args.admin_role_arns.items():
            entry = aws.eks.AccessEntry(
                f"{name}-admin-{key}",
                cluster_name=cluster.name,
                principal_arn=role_arn,
                type="STANDARD",
                opts=pulumi.ResourceOptions(parent=self),
            )
            association = aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{key}-policy",
                cluster_name=cluster.name,
                principal_arn=role_arn,
                policy_arn=CLUSTER_ADMIN_POLICY,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )
            access += [entry, association]
        return access

    def _deploy_runner_access(self, name: str, args: ClusterArgs) -> list[pulumi.Resource]:
        """HTTPS into the cluster security group (the API endpoint's ENIs) from the deploy runner.

        The EKS-created group admits only itself; without these rules nothing outside the
        cluster reaches a private endpoint, and `pulumi up` cannot install a single chart.
        """
        # Named after the source, not its position: reordering the list must not replace a rule
        # (a replacement would first create a duplicate, which EC2 refuses).
        sources = [
            (cidr.replace("/", "-"), "the deploy runner", {"cidr_ipv4": cidr}) for cidr in args.deploy_runner_cidrs
        ]
        sources += [
            (group, "the deploy runner's security group", {"referenced_security_group_id": group})
            for group in args.deploy_runner_security_group_ids
        ]
        rules: list[pulumi.Resource] = []
        for key, who, source in sources:
            rules.append(
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-deploy-runner-{key}",
                    security_group_id=self.security_group_id,
                    description=f"Kubernetes API from {who}",
                    ip_protocol="tcp",
                    from_port=443,
                    to_port=443,
                    opts=pulumi.ResourceOptions(parent=self),
                    **source,
                )
            )
        return rules
