"""Network: a VPC across 2-3 availability zones for EKS, RDS and load balancers.

Creates, in dependency order: the VPC; an internet gateway; one public, one private and one
internal-load-balancer subnet per AZ (tagged so the AWS Load Balancer Controller and Karpenter
find them); NAT gateways (one for all AZs, or one per AZ); route tables; an S3 gateway endpoint
(free, and keeps artifact traffic off the NAT); and the interface endpoints the profile asks for.

Internal load balancers get subnets of their own, where nothing else is placed (no node, pod,
database or endpoint: those use the private subnets), so a workload's NetworkPolicy can admit
the internal ALB by these subnets' CIDRs alone. A NetworkPolicy cannot name the ALB's security
group, and in IP mode the ALB connects from its own addresses in its subnets; admitting the
private subnets instead would admit every pod of the cluster too, since pods take their
addresses there (VPC CNI). The Load Balancer Controller places internal load balancers only in
subnets tagged `kubernetes.io/role/internal-elb` when any subnet has that tag (v2.14.0,
`docs/deploy/subnet_discovery.md`, copied in components/upstream/), so the tag lives here only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Sequence

import pulumi
import pulumi_aws as aws

TOKEN = "mlops:network:Network"


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    """Values from the stack's `network` settings; their defaults live in infra/profiles.py only."""

    cidr: str
    """VPC block, /16 to /20. Private subnets get 1/8 of it per AZ, internal load balancers 1/64, public ones 1/256."""
    az_count: int
    """Availability zones used (2 or 3)."""
    nat_gateways: Literal["single", "perAz"]
    """`single` shares one NAT gateway (cheaper, one AZ failure cuts egress); `perAz` is highly available."""
    interface_endpoints: Sequence[str]
    """AWS services (e.g. `ecr.api`, `sts`) reached through private interface endpoints."""
    cluster_name: str
    """EKS cluster that will use these subnets: written into the discovery tags."""

    def __post_init__(self) -> None:
        problems = []
        if self.az_count not in (2, 3):
            problems.append(f"az_count: got {self.az_count}, expected 2 or 3")
        if self.nat_gateways not in ("single", "perAz"):
            problems.append(f"nat_gateways: got {self.nat_gateways!r}, expected 'single' or 'perAz'")
        prefix = ipaddress.IPv4Network(self.cidr).prefixlen
        if not 16 <= prefix <= 20:
            problems.append(f"cidr: got /{prefix}, expected /16 to /20")
        if problems:
            raise ValueError("invalid NetworkArgs: " + "; ".join(problems))


def subnet_blocks(cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """(private, public) blocks: large private subnets for pods, small public ones for LBs and NAT.

    For a /16: private 10.0.0.0/19, 10.0.32.0/19, ...; public 10.0.224.0/24, 10.0.225.0/24, ...
    """
    vpc = ipaddress.IPv4Network(cidr)
    eighths = list(vpc.subnets(prefixlen_diff=3))
    private = [str(block) for block in eighths[:az_count]]
    public = [str(block) for block in list(eighths[-1].subnets(prefixlen_diff=5))[:az_count]]
    return private, public


def load_balancer_blocks(cidr: str, az_count: int) -> list[str]:
    """Blocks of the internal load balancers' subnets: 1/64 of the VPC per AZ, from its seventh eighth
    (private subnets use the first three eighths, public ones the last). For a /16: 10.0.192.0/22,
    10.0.196.0/22, ...; for a /20 a /26 each, above the /27 with 8 free addresses an ALB needs."""
    seventh = list(ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=3))[-2]
    return [str(block) for block in list(seventh.subnets(prefixlen_diff=3))[:az_count]]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    """The VPC's id."""
    private_subnet_ids: pulumi.Output[list[str]]
    """Subnets for nodes, pods, databases and internal load balancers, one per AZ."""
    public_subnet_ids: pulumi.Output[list[str]]
    """Subnets for internet-facing load balancers and NAT gateways, one per AZ."""
    vpc_cidr: str
    """The VPC's block, for security group rules."""
    load_balancer_cidrs: list[str]
    """Blocks of the internal load balancers' subnets: what workloads behind the internal ALB admit."""
    nat_gateway_count: int

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self)).names[
            : args.az_count
        ]
        if len(zones) < args.az_count:
            raise ValueError(f"the region has {len(zones)} available zones; {args.az_count} requested")
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        # Lock down the default security group: nothing may use it by accident.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, ingress=[], egress=[], opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
        subnets = self._subnets(name, args, vpc, zones)
        # what makes the subnets usable: route associations, NATs, endpoints
        routes: list[pulumi.CustomResource] = self._public_routes(name, vpc, igw, subnets["public"])
        routes += self._internal_lb_routes(name, vpc, subnets["internal-lb"])
        nat_count = 1 if args.nat_gateways == "single" else len(zones)
        nats = self._nat_gateways(name, nat_count, igw, subnets["public"])
        private_routes, private_rts = self._private_routes(name, vpc, zones, nats, subnets["private"])
        routes += [*private_routes, *nats]
        routes += self._endpoints(name, args, vpc, private_rts, subnets["private"])

        self.vpc_id = vpc.id
        # Whoever uses the subnets also waits for their routes, NAT gateways and endpoints: nodes need
        # egress to join, and on `pulumi destroy` the controllers still cleaning up (load balancers,
        # instances, volumes) keep their way to the AWS APIs until they are gone themselves.
        self.private_subnet_ids = _ids_after(subnets["private"], routes)
        self.public_subnet_ids = _ids_after(subnets["public"], routes)
        self.vpc_cidr = args.cidr
        self.load_balancer_cidrs = load_balancer_blocks(args.cidr, args.az_count)
        self.nat_gateway_count = nat_count
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "public_subnet_ids": self.public_subnet_ids,
            }
        )

    def _subnets(
        self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, zones: Sequence[str]
    ) -> dict[str, list[aws.ec2.Subnet]]:
        """One public, one private and one internal-load-balancer subnet per AZ, each tagged for who finds it:
        the LB controller (`role/elb`, `role/internal-elb`), Karpenter (`karpenter.sh/discovery`)."""
        private_blocks, public_blocks = subnet_blocks(args.cidr, args.az_count)
        cluster_tag = f"kubernetes.io/cluster/{args.cluster_name}"
        kinds = {
            "public": (public_blocks, {"kubernetes.io/role/elb": "1"}, False),
            "private": (private_blocks, {"karpenter.sh/discovery": args.cluster_name}, None),
            "internal-lb": (
                load_balancer_blocks(args.cidr, args.az_count),
                {"kubernetes.io/role/internal-elb": "1"},
                None,
            ),
        }
        return {
            role: [
                aws.ec2.Subnet(
                    f"{name}-{role}-{index}",
                    vpc_id=vpc.id,
                    cidr_block=blocks[index],
                    availability_zone=zone,
                    tags={"Name": f"{name}-{role}-{zone}", **tags, cluster_tag: "shared"},
                    map_public_ip_on_launch=public_ip,
                    opts=pulumi.ResourceOptions(parent=self),
                )
                for index, zone in enumerate(zones)
            ]
            for role, (blocks, tags, public_ip) in kinds.items()
        }

    def _public_routes(
        self, name: str, vpc: aws.ec2.Vpc, igw: aws.ec2.InternetGateway, subnets: Sequence[aws.ec2.Subnet]
    ) -> list[pulumi.CustomResource]:
        """The public subnets' route table: the internet through the gateway."""
        child = pulumi.ResourceOptions(parent=self)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{name}-public"},
            opts=child,
        )
        return [
            aws.ec2.RouteTableAssociation(
                f"{name}-public-rta-{index}", subnet_id=subnet.id, route_table_id=public_rt.id, opts=child
            )
            for index, subnet in enumerate(subnets)
        ]

    def _internal_lb_routes(
        self, name: str, vpc: aws.ec2.Vpc, subnets: Sequence[aws.ec2.Subnet]
    ) -> list[pulumi.CustomResource]:
        """Internal load balancers answer inside the VPC only: their route table has just the VPC's local route."""
        child = pulumi.ResourceOptions(parent=self)
        lb_rt = aws.ec2.RouteTable(
            f"{name}-internal-lb-rt", vpc_id=vpc.id, routes=[], tags={"Name": f"{name}-internal-lb"}, opts=child
        )
        return [
            aws.ec2.RouteTableAssociation(
                f"{name}-internal-lb-rta-{index}", subnet_id=subnet.id, route_table_id=lb_rt.id, opts=child
            )
            for index, subnet in enumerate(subnets)
        ]

    def _nat_gateways(
        self, name: str, count: int, igw: aws.ec2.InternetGateway, public: Sequence[aws.ec2.Subnet]
    ) -> list[aws.ec2.NatGateway]:
        """`count` NAT gateways in the first public subnets, each with its Elastic IP."""
        nats = []
        for index in range(count):
            eip = aws.ec2.Eip(
                f"{name}-nat-eip-{index}",
                domain="vpc",
                tags={"Name": f"{name}-nat-{index}"},
                opts=pulumi.ResourceOptions(parent=self),
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{index}",
                    allocation_id=eip.id,
                    subnet_id=public[index].id,
                    tags={"Name": f"{name}-nat-{index}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
            )
        return nats

    def _private_routes(
        self,
        name: str,
        vpc: aws.ec2.Vpc,
        zones: Sequence[str],
        nats: Sequence[aws.ec2.NatGateway],
        subnets: Sequence[aws.ec2.Subnet],
    ) -> tuple[list[pulumi.CustomResource], list[aws.ec2.RouteTable]]:
        """A route table per private subnet, egress through its AZ's NAT (or the one shared NAT);
        (the associations, the tables)."""
        child = pulumi.ResourceOptions(parent=self)
        associations: list[pulumi.CustomResource] = []
        tables = []
        for index, subnet in enumerate(subnets):
            route_table = aws.ec2.RouteTable(
                f"{name}-private-rt-{index}",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nats[index % len(nats)].id)],
                tags={"Name": f"{name}-private-{zones[index]}"},
                opts=child,
            )
            associations.append(
                aws.ec2.RouteTableAssociation(
                    f"{name}-private-rta-{index}", subnet_id=subnet.id, route_table_id=route_table.id, opts=child
                )
            )
            tables.append(route_table)
        return associations, tables

    def _endpoints(
        self,
        name: str,
        args: NetworkArgs,
        vpc: aws.ec2.Vpc,
        private_rts: Sequence[aws.ec2.RouteTable],
        private: Sequence[aws.ec2.Subnet],
    ) -> list[pulumi.CustomResource]:
        """The S3 gateway endpoint (free; keeps artifact traffic off the NAT) and the interface endpoints
        the profile asks for, behind a security group admitting HTTPS from the VPC."""
        child = pulumi.ResourceOptions(parent=self)
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
        endpoints: list[pulumi.CustomResource] = [
            aws.ec2.VpcEndpoint(
                f"{name}-s3",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{region}.s3",
                vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_rts],
                tags={"Name": f"{name}-s3"},
                opts=child,
            )
        ]
        if not args.interface_endpoints:
            return endpoints
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            description="HTTPS from inside the VPC to AWS interface endpoints",
            vpc_id=vpc.id,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=[args.cidr])
            ],
            egress=[],
            tags={"Name": f"{name}-endpoints"},
            opts=child,
        )
        for service in args.interface_endpoints:
            endpoints.append(
                aws.ec2.VpcEndpoint(
                    f"{name}-{service.replace('.', '-')}",
                    vpc_id=vpc.id,
                    service_name=f"com.amazonaws.{region}.{service}",
                    vpc_endpoint_type="Interface",
                    private_dns_enabled=True,
                    subnet_ids=[s.id for s in private],
                    security_group_ids=[endpoint_sg.id],
                    tags={"Name": f"{name}-{service}"},
                    opts=child,
                )
            )
        return endpoints


def _ids_after(subnets: Sequence[aws.ec2.Subnet], ready: Sequence[pulumi.CustomResource]) -> pulumi.Output[list[str]]:
    """The subnets' ids, as an output that also depends on `ready` (an output carries its resources as dependencies)."""
    return pulumi.Output.all(*[s.id for s in subnets], *[r.id for r in ready]).apply(
        lambda ids: list(ids[: len(subnets)])
    )
