from __future__ import annotations

import pytest

from components.network import Network, NetworkArgs, load_balancer_blocks, subnet_blocks
from tests.conftest import declare
from tests.unit.builders import PREFIX, network_args

SUBNET = "aws:ec2/subnet:Subnet"
NAT = "aws:ec2/natGateway:NatGateway"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"


def network(**overrides) -> NetworkArgs:
    """tests/unit/builders.py's args: 10.0.0.0/16 over 2 AZs, one NAT, no interface endpoint, cluster `mlops-test`."""
    return network_args(**overrides)


@pytest.mark.parametrize(
    ("mode", "azs", "expected"), [("single", 2, 1), ("single", 3, 1), ("perAz", 2, 2), ("perAz", 3, 3)]
)
def test_nat_gateway_count_follows_mode(mode, azs, expected):
    inventory = declare(lambda: Network("net", network(nat_gateways=mode, az_count=azs)))
    assert len(inventory.of_type(NAT)) == expected
    assert len(inventory.of_type("aws:ec2/eip:Eip")) == expected


def test_private_subnets_route_to_a_nat_in_per_az_mode_each_their_own():
    inventory = declare(lambda: Network("net", network(nat_gateways="perAz", az_count=3)))
    private_routes = [rt for rt in inventory.of_type(ROUTE_TABLE) if "private" in rt.name]
    nat_targets = {rt.inputs["routes"][0]["natGatewayId"] for rt in private_routes}
    assert len(private_routes) == 3 and len(nat_targets) == 3


def test_one_public_one_private_and_one_internal_lb_subnet_per_az_with_discovery_tags():
    inventory = declare(lambda: Network("net", network(az_count=3)))
    subnets = inventory.of_type(SUBNET)
    public = [s for s in subnets if "public" in s.name]
    private = [s for s in subnets if "private" in s.name]
    internal_lb = [s for s in subnets if "internal-lb" in s.name]
    assert len(public) == len(private) == len(internal_lb) == 3 == len(subnets) / 3
    assert (
        len({s.inputs["availabilityZone"] for s in private})
        == len({s.inputs["availabilityZone"] for s in internal_lb})
        == 3
    )
    for s in public:
        assert s.inputs["tags"]["kubernetes.io/role/elb"] == "1"
        assert s.inputs["mapPublicIpOnLaunch"] is False
    for s in private:
        assert "kubernetes.io/role/internal-elb" not in s.inputs["tags"]  # pods live here: no load balancer
        assert s.inputs["tags"]["karpenter.sh/discovery"] == PREFIX
        assert s.inputs["tags"][f"kubernetes.io/cluster/{PREFIX}"] == "shared"
    for s in internal_lb:
        assert s.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1"
        assert "karpenter.sh/discovery" not in s.inputs["tags"]  # no node, so no pod, ever gets an address here
        assert s.inputs["tags"][f"kubernetes.io/cluster/{PREFIX}"] == "shared"


def test_internal_load_balancers_have_subnets_of_their_own_with_only_the_local_route():
    inventory = declare(lambda: Network("net", network(az_count=2)))
    (component,) = inventory.of_type("mlops:network:Network")
    # registration order under mocks follows output resolution, so order by name (net-internal-lb-<az index>)
    internal_lb = sorted((s for s in inventory.of_type(SUBNET) if "internal-lb" in s.name), key=lambda s: s.name)
    assert (
        [s.inputs["cidrBlock"] for s in internal_lb]
        == load_balancer_blocks("10.0.0.0/16", 2)
        == ["10.0.192.0/22", "10.0.196.0/22"]
    )
    (route_table,) = [rt for rt in inventory.of_type(ROUTE_TABLE) if "internal-lb" in rt.name]
    assert route_table.inputs.get("routes", []) == []  # answers inside the VPC only
    associations = [
        a for a in inventory.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation") if "internal-lb" in a.name
    ]
    assert len(associations) == 2


def test_the_pinned_controller_uses_only_role_tagged_subnets():
    """Why tagging only the load balancers' subnets keeps the internal ALB out of the private ones."""
    from pathlib import Path

    doc = (
        Path(__file__).parents[2] / "components/upstream/aws-load-balancer-controller-v2.14.0/subnet_discovery.md"
    ).read_text()
    assert "If subnets with matching [role tag](#subnet-role-tag) exists: Only these become candidates" in doc
    assert "`kubernetes.io/role/internal-elb`" in doc


def test_s3_gateway_endpoint_always_interface_endpoints_only_when_asked():
    without = declare(lambda: Network("net", network()))
    assert [e.inputs["vpcEndpointType"] for e in without.of_type(ENDPOINT)] == ["Gateway"]
    assert without.of_type("aws:ec2/securityGroup:SecurityGroup") == []

    with_endpoints = declare(lambda: Network("net", network(interface_endpoints=("ecr.api", "sts"))))
    services = {e.inputs["serviceName"]: e.inputs for e in with_endpoints.of_type(ENDPOINT)}
    assert set(services) == {
        "com.amazonaws.us-east-1.s3",
        "com.amazonaws.us-east-1.ecr.api",
        "com.amazonaws.us-east-1.sts",
    }
    assert services["com.amazonaws.us-east-1.sts"]["privateDnsEnabled"] is True
    sg = with_endpoints.of_type("aws:ec2/securityGroup:SecurityGroup")[0]
    assert sg.inputs["ingress"][0]["cidrBlocks"] == ["10.0.0.0/16"]  # only from inside the VPC


def test_default_security_group_is_emptied():
    inventory = declare(lambda: Network("net", network()))
    default_sg = inventory.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")[0]
    assert default_sg.inputs.get("ingress", []) == [] and default_sg.inputs.get("egress", []) == []


def test_subnet_blocks_do_not_overlap_and_fit_the_vpc():
    import ipaddress

    for vpc in ("10.20.0.0/16", "10.20.0.0/20"):
        private, public = subnet_blocks(vpc, 3)
        internal_lb = load_balancer_blocks(vpc, 3)
        blocks = [ipaddress.IPv4Network(b) for b in private + public + internal_lb]
        assert all(b.subnet_of(ipaddress.IPv4Network(vpc)) for b in blocks)
        assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
        assert all(ipaddress.IPv4Network(b).prefixlen <= 27 for b in internal_lb)  # an ALB needs a /27 or larger
    assert (
        subnet_blocks("10.20.0.0/16", 3)[0][0] == "10.20.0.0/19"
        and subnet_blocks("10.20.0.0/16", 3)[1][0] == "10.20.224.0/24"
    )


def test_children_are_parented_to_the_component():
    inventory = declare(lambda: Network("net", network()))
    component = inventory.of_type("mlops:network:Network")[0]
    assert all(r.parent == component.urn for r in inventory.resources if r is not component)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"az_count": 4}, "az_count"), ({"nat_gateways": "none"}, "nat_gateways"), ({"cidr": "10.0.0.0/8"}, "cidr")],
)
def test_bad_args_are_rejected_before_anything_is_declared(overrides, message):
    with pytest.raises(ValueError, match=message):
        network(**overrides)
