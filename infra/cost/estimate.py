"""Price an inventory: one or more lines per resource, each with its quantity and assumption.

Three kinds of line:
- `baseline`: what the stack costs while idle (control plane, system nodes, NAT, database,
  storage at the usage file's volumes). The budget gate compares this total.
- `worst-case`: what a Karpenter pool costs if it fills to its ceiling: the costliest allowed
  nodes whose capacity stays within its limit, with their root volumes, × 730 h. The stack's
  worst case is baseline + Σ over pools (ceiling − floor): a pool's floor is part of its
  ceiling, so it is counted once. (`pools.py` sizes floors and ceilings.)
- `not-priced`: a resource type or instance type the table cannot price, with the reason.
  Never silently zero.
- `pipeline`: a training pipeline's own worst case (a CronJob: its runs a month × each run's
  deadline and attempts, on the cheapest node of its pool that fits it; `pipelines.py`). It runs
  inside its pool's ceiling, so neither total adds it.
Resource types that cost nothing by themselves (IAM, route tables, Kubernetes objects that run
on already-priced nodes...) are listed in FREE_TYPES with the reason, and produce no line.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from components.quantities import cpu_cores, gibibytes, whole
from infra.cost import instances, pools
from infra.cost.prices import PriceTable
from infra.inventory import Inventory, Resource

BASELINE, WORST_CASE, NOT_PRICED = "baseline", "worst-case", "not-priced"

FREE_TYPES: dict[str, str] = {
    "aws:ec2/vpc:Vpc": "no charge",
    "aws:ec2/subnet:Subnet": "no charge",
    "aws:ec2/routeTable:RouteTable": "no charge",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "no charge",
    "aws:ec2/internetGateway:InternetGateway": "no charge (data transfer out is usage)",
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": "no charge",
    "aws:ec2/securityGroup:SecurityGroup": "no charge",
    "aws:ec2/securityGroupRule:SecurityGroupRule": "no charge",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "no charge",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "no charge",
    "aws:ec2/launchTemplate:LaunchTemplate": "no charge (its volumes are priced with the node group)",
    "aws:iam/role:Role": "no charge",
    "aws:iam/policy:Policy": "no charge",
    "aws:iam/rolePolicy:RolePolicy": "no charge",
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": "no charge",
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": "no charge",
    "aws:kms/alias:Alias": "no charge",
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": "configuration",
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": "configuration",
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": "configuration",
    "aws:s3/bucketVersioning:BucketVersioning": "configuration (old versions count in the bucket's GB)",
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": "configuration",
    "aws:s3/bucketPolicy:BucketPolicy": "configuration",
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": "configuration",
    "aws:eks/accessEntry:AccessEntry": "no charge",
    "aws:eks/accessPolicyAssociation:AccessPolicyAssociation": "no charge",
    "aws:eks/addon:Addon": "runs on nodes priced elsewhere",
    "aws:sqs/queuePolicy:QueuePolicy": "configuration",
    "aws:cloudwatch/eventRule:EventRule": "AWS service events on the default bus are free",
    "aws:cloudwatch/eventTarget:EventTarget": "no charge",
    "aws:budgets/budget:Budget": "the first two budgets of an account are free",
    "aws:rds/subnetGroup:SubnetGroup": "no charge",
    "aws:rds/parameterGroup:ParameterGroup": "no charge",
    "aws:secretsmanager/secretVersion:SecretVersion": "priced with its secret",
}
FREE_PREFIXES: dict[str, str] = {
    "mlops:": "a component groups resources priced individually",
    "pulumi:providers:": "a Pulumi provider",
    "random:": "generated in Pulumi, no cloud resource",
    "kubernetes:": "a Kubernetes object runs on nodes priced elsewhere",
}


@dataclass
class Line:
    component: str
    resource: str
    type: str
    urn: str
    item: str
    kind: str
    quantity: float = 0.0
    unit: str = ""
    hourly: float | None = None
    monthly: float | None = None
    assumption: str = ""
    key: str = ""
    """Where the resource sits, independent of the stack's name (`logical_address`): compare matches on it."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Estimate:
    stack: str
    region: str
    price_date: str
    lines: list[Line] = field(default_factory=list)

    @property
    def baseline_monthly(self) -> float:
        return round(sum(line.monthly or 0.0 for line in self.lines if line.kind == BASELINE), 2)

    @property
    def worst_case_monthly(self) -> float:
        """Baseline + Σ over pools (ceiling − floor): every pool full, its floor counted once."""
        pools_full = {line.urn for line in self.lines if line.kind == WORST_CASE}
        extra = sum(
            (line.monthly or 0.0) * (1 if line.kind == WORST_CASE else -1)
            for line in self.lines
            if line.urn in pools_full and line.kind in (WORST_CASE, BASELINE)
        )
        return round(self.baseline_monthly + extra, 2)

    @property
    def not_priced(self) -> list[Line]:
        return [line for line in self.lines if line.kind == NOT_PRICED]

    def by_component(self) -> dict[str, list[Line]]:
        groups: dict[str, list[Line]] = {}
        for line in self.lines:
            groups.setdefault(line.component, []).append(line)
        return groups

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "region": self.region,
            "priceDate": self.price_date,
            "baselineMonthly": self.baseline_monthly,
            "worstCaseMonthly": self.worst_case_monthly,
            "notPriced": len(self.not_priced),
            "lines": [line.to_json() for line in self.lines],
        }


class _Pricer:
    """Turns resources into lines, with the table, region and usage of one stack."""

    def __init__(self, inventory: Inventory, table: PriceTable, region: str, usage: dict[str, float]) -> None:
        self.inventory, self.table, self.region, self.usage = inventory, table, region, usage
        self.hours = table.hours_per_month
        self.lines: list[Line] = []
        self.addresses = logical_addresses(inventory)

    def base(self, r: Resource, item: str) -> dict[str, Any]:
        component = self.inventory.component_of(r)
        return dict(
            component=component.name if component else "(stack)",
            resource=r.name,
            type=r.type,
            urn=r.urn,
            item=item,
            key=self.addresses[r.urn],
        )

    def line(
        self,
        r: Resource,
        item: str,
        key: str,
        quantity: float,
        assumption: str,
        *,
        kind: str = BASELINE,
        per_hour: bool | None = None,
    ) -> None:
        """Add a line priced `quantity` × the table's `key` (× hours for hourly prices)."""
        base = self.base(r, item)
        price = self.table.get(self.region, key)
        if price is None:
            self.lines.append(
                Line(
                    **base,
                    kind=NOT_PRICED,
                    quantity=quantity,
                    assumption=f"no price for {key} in {self.region} (table of {self.table.date})",
                )
            )
            return
        hourly_unit = price.unit == "hour" if per_hour is None else per_hour
        if hourly_unit:
            hourly = price.price * quantity
            self.lines.append(
                Line(
                    **base,
                    kind=kind,
                    quantity=quantity,
                    unit=price.unit,
                    hourly=round(hourly, 6),
                    monthly=round(hourly * self.hours, 2),
                    assumption=assumption,
                )
            )
        else:
            self.lines.append(
                Line(
                    **base,
                    kind=kind,
                    quantity=quantity,
                    unit=price.unit,
                    hourly=None,
                    monthly=round(price.price * quantity, 2),
                    assumption=assumption,
                )
            )

    def not_priced(self, r: Resource, item: str, reason: str) -> None:
        self.lines.append(Line(**self.base(r, item), kind=NOT_PRICED, assumption=reason))

    def pool_line(
        self,
        r: Resource,
        item: str,
        kind: str,
        quantity: float,
        unit: str,
        hourly: float | None,
        assumption: str,
        *,
        monthly: float | None = None,
    ) -> None:
        """A line whose cost the caller computed (a pool's nodes or their volumes)."""
        monthly = hourly * self.hours if monthly is None and hourly is not None else monthly
        self.lines.append(
            Line(
                **self.base(r, item),
                kind=kind,
                quantity=quantity,
                unit=unit,
                hourly=None if hourly is None else round(hourly, 6),
                monthly=round(monthly or 0.0, 2),
                assumption=assumption,
            )
        )

    def volume_price(self, volume_type: str) -> float:
        """$ per GB-month of an EBS volume type (the caller checked the table has it)."""
        price = self.table.get(self.region, f"ebs.{volume_type}.storage")
        if price is None:
            raise AttributeError(
                f"no price for ebs.{volume_type}.storage in {self.region}: check the table before calling volume_price"
            )
        return price.price


def logical_addresses(inventory: Inventory) -> dict[str, str]:
    """URN -> where the resource sits, independent of the stack's name: the chain of (type, name
    relative to its parent's name) from the top; a name that does not extend its parent's (and a
    top-level one) loses the stack's common name prefix instead. A stack file renamed (`dev` ->
    `dev-eu`, names `mlops-dev-*` -> `mlops-dev-eu-*`) keeps every address, so compare matches
    its resources with the base's."""
    top = [r.name for r in inventory.resources if r.parent is None and not r.type.startswith("pulumi:providers:")]
    prefix = os.path.commonprefix(top) if len(top) > 1 else (top[0] if top else "")
    prefix = prefix[: prefix.rfind("-") + 1]
    by_urn = {r.urn: r for r in inventory.resources}
    addresses: dict[str, str] = {}

    def address(r: Resource) -> str:
        if r.urn not in addresses:
            parent = by_urn.get(r.parent) if r.parent else None
            outer = address(parent) if parent else ""
            strip = next((p for p in (parent.name if parent else "", prefix) if p and r.name.startswith(p)), "")
            relative = r.name[len(strip) :]
            addresses[r.urn] = f"{outer}/{r.type}:{relative}"
        return addresses[r.urn]

    for resource in inventory.resources:
        address(resource)
    return addresses


# -- rules: one function per priced type ---------------------------------------------------


def _eks_cluster(p: _Pricer, r: Resource) -> None:
    support = (r.inputs.get("upgradePolicy") or {}).get("supportType", "EXTENDED")
    if support != "STANDARD":
        p.not_priced(
            r,
            "EKS control plane",
            "upgradePolicy.supportType is not STANDARD: extended support costs $0.60/h once the version ages out",
        )
    p.line(r, "EKS control plane (standard support)", "eks.cluster.standard", 1, "one cluster, 730 h")


def _node_group(p: _Pricer, r: Resource) -> None:
    scaling = r.inputs.get("scalingConfig") or {}
    count = scaling.get("desiredSize", scaling.get("minSize", 1))
    for instance_type in (r.inputs.get("instanceTypes") or ["t3.medium"])[:1]:
        p.line(
            r,
            f"{count} × {instance_type} (on-demand)",
            f"ec2.instance.{instance_type}",
            count,
            f"desiredSize {count}, always on",
        )
    size, volume_type = _root_volume(p.inventory, r)
    p.line(
        r,
        f"{count} × {size} GB {volume_type} root volumes",
        f"ebs.{volume_type}.storage",
        count * size,
        "root volume of each node",
    )


def _root_volume(inventory: Inventory, node_group: Resource) -> tuple[int, str]:
    """Size and type of the node group's root disk: from its launch template when the component has one."""
    component = inventory.component_of(node_group)
    for candidate in inventory.descendants(component.urn) if component else []:
        if candidate.type == "aws:ec2/launchTemplate:LaunchTemplate":
            for mapping in candidate.inputs.get("blockDeviceMappings") or []:
                ebs = mapping.get("ebs") or {}
                if "volumeSize" in ebs:
                    return int(ebs["volumeSize"]), ebs.get("volumeType", "gp3")
    return int(node_group.inputs.get("diskSize", 20)), "gp2"


def _karpenter_pool(p: _Pricer, r: Resource) -> None:
    """A pool's floor (baseline) and its ceiling (worst case), root volumes included."""
    spec = r.inputs.get("spec") or {}
    pool = (r.inputs.get("metadata") or {}).get("name", r.name)
    limits = spec.get("limits") or {}
    if pools.GPU in limits:
        limit, capacity, what = whole(limits[pools.GPU]), (lambda t: t.gpus), "GPUs"
    elif "cpu" in limits:
        limit, capacity, what = math.floor(cpu_cores(limits["cpu"])), (lambda t: t.vcpus), "vCPUs"
    else:
        p.not_priced(
            r, f"Karpenter pool `{pool}` worst case", "no cpu or nvidia.com/gpu limit: the pool has no ceiling"
        )
        return
    volume_gib, volume_type = _node_class_volume(p.inventory, spec)
    if p.table.get(p.region, f"ebs.{volume_type}.storage") is None:
        p.not_priced(
            r,
            f"Karpenter pool `{pool}`",
            f"no price for ebs.{volume_type}.storage (the EC2NodeClass root volume) in {p.region}",
        )
        return
    options, skipped = _pool_options(p, spec, volume_gib, volume_type)
    if not options:
        p.not_priced(
            r,
            f"Karpenter pool `{pool}` worst case",
            f"no allowed instance type has a price: {', '.join(skipped) or 'none allowed'}",
        )
        return
    _pool_floor(p, r, pool, options, volume_gib, volume_type)
    ceiling = pools.costliest_ceiling(limit, capacity, options)
    nodes = sum(ceiling.counts.values())
    mix = " + ".join(f"{count} × {name}" for name, count in sorted(ceiling.counts.items()))
    hourly = sum(
        count * next(o.hourly for o in options if o.instance.name == name) for name, count in ceiling.counts.items()
    )
    note = f"ceiling {limit} {what} = {mix or 'no node'} on-demand, {p.hours:g} h"
    if skipped:
        note += f"; not considered: {', '.join(skipped)}"
    p.pool_line(r, f"Karpenter pool `{pool}` at its ceiling", WORST_CASE, nodes, "nodes", hourly, note)
    p.pool_line(
        r,
        f"Karpenter pool `{pool}` root volumes at its ceiling",
        WORST_CASE,
        nodes * volume_gib,
        "GB-month",
        None,
        f"{nodes} × {volume_gib:g} GiB {volume_type} (EC2NodeClass blockDeviceMappings)",
        monthly=nodes * volume_gib * p.volume_price(volume_type),
    )


def _pool_options(
    p: _Pricer, spec: dict[str, Any], volume_gib: float, volume_type: str
) -> tuple[list[pools.Option], list[str]]:
    """The allowed instance types with a price, and the allowed ones left out (unknown or unpriced)."""
    requirements = {
        q["key"]: q.get("values", []) for q in (spec.get("template") or {}).get("spec", {}).get("requirements", [])
    }
    options, skipped = [], []
    for family in requirements.get("karpenter.k8s.aws/instance-family", []):
        for size in requirements.get("karpenter.k8s.aws/instance-size", []):
            name = f"{family}.{size}"
            price = p.table.get(p.region, f"ec2.instance.{name}")
            try:
                instance = instances.get(name)
            except KeyError:
                skipped.append(f"{name} (capacity unknown)")
                continue
            if price is None:
                skipped.append(f"{name} (no price)")
                continue
            monthly = price.price * p.hours + volume_gib * p.volume_price(volume_type)
            options.append(pools.Option(instance, price.price, monthly))
    return options, skipped


def _node_class_volume(inventory: Inventory, pool_spec: dict[str, Any]) -> tuple[float, str]:
    """Root volume size (GiB) and type of the pool's EC2NodeClass (Karpenter's default: 20 GiB gp3)."""
    ref = ((pool_spec.get("template") or {}).get("spec") or {}).get("nodeClassRef") or {}
    for node_class in inventory.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        if (node_class.inputs.get("metadata") or {}).get("name") == ref.get("name"):
            mappings = (node_class.inputs.get("spec") or {}).get("blockDeviceMappings") or []
            root = next((m for m in mappings if m.get("rootVolume")), mappings[0] if mappings else None)
            ebs = (root or {}).get("ebs") or {}
            if "volumeSize" in ebs:
                return gibibytes(ebs["volumeSize"]), ebs.get("volumeType", "gp3")
    return 20.0, "gp3"


def _pool_floor(
    p: _Pricer, r: Resource, pool: str, options: list[pools.Option], volume_gib: float, volume_type: str
) -> None:
    """The idle lines of a pool: nothing, or the nodes its always-on pods need, with their volumes."""
    pods = pools.workload_pods(p.inventory, pool)
    if not pods:
        p.pool_line(
            r,
            f"Karpenter pool `{pool}` while idle",
            BASELINE,
            0,
            "nodes",
            0.0,
            "scales to zero: no pod of the stack needs this pool while idle",
        )
        return
    floor = pools.cheapest_floor(pods, options)
    if floor is None:
        p.not_priced(
            r,
            f"Karpenter pool `{pool}` floor",
            "a pod requests more than any allowed instance type can hold: "
            + ", ".join(
                sorted(
                    {pod.name for pod in pods if not any(pod.requests.fits_in(o.instance.allocatable) for o in options)}
                )
            ),
        )
        return
    total = sum((pod.requests for pod in pods), instances.Resources())
    node = floor.option.instance
    allocatable = node.allocatable
    p.pool_line(
        r,
        f"Karpenter pool `{pool}` floor for always-on pods",
        BASELINE,
        floor.nodes,
        "nodes",
        floor.nodes * floor.option.hourly,
        f"{len(pods)} pod(s) at minimum replicas request {total.cpu_milli / 1000:g} CPU, "
        f"{total.memory_mib / 1024:g} GiB, "
        f"{total.gpus} GPU: first-fit decreasing on allocatable ({allocatable.cpu_milli}m, "
        f"{allocatable.memory_mib:g} MiB, "
        f"{allocatable.gpus} GPU, {allocatable.pods} pods of {node.name}) = {floor.nodes} × {node.name} "
        f"(${floor.option.hourly}/h on-demand)",
    )
    p.pool_line(
        r,
        f"Karpenter pool `{pool}` floor root volumes",
        BASELINE,
        floor.nodes * volume_gib,
        "GB-month",
        None,
        f"{floor.nodes} × {volume_gib:g} GiB {volume_type} (EC2NodeClass blockDeviceMappings)",
        monthly=floor.nodes * volume_gib * p.volume_price(volume_type),
    )


def workload_demand(inventory: Inventory, pool: str, resource: str) -> tuple[float, int]:
    """CPUs (or GPUs) requested on `pool` at minimum replicas, and the number of pods (see `pools.workload_pods`)."""
    pods = pools.workload_pods(inventory, pool)
    total = sum((pod.requests for pod in pods), instances.Resources())
    return (round(total.cpu_milli / 1000, 3) if resource == "cpu" else float(total.gpus)), len(pods)


def _nat(p: _Pricer, r: Resource) -> None:
    p.line(r, "NAT gateway hours", "vpc.nat.hour", 1, "one gateway, 730 h")
    gb = p.usage["natGbPerGateway"]
    p.line(r, f"NAT data processed ({gb:g} GB)", "vpc.nat.data", gb, "usage natGbPerGateway", per_hour=False)


def _eip(p: _Pricer, r: Resource) -> None:
    p.line(r, "public IPv4 address", "vpc.public-ipv4", 1, "every public IPv4 address is billed hourly")


def _vpc_endpoint(p: _Pricer, r: Resource) -> None:
    if r.inputs.get("vpcEndpointType", "Gateway") == "Gateway":
        return  # gateway endpoints (S3, DynamoDB) are free
    azs = len(r.inputs.get("subnetIds") or []) or 1
    p.line(
        r,
        f"interface endpoint in {azs} AZs",
        "vpc.interface-endpoint.hour",
        azs,
        f"{azs} endpoint network interfaces, 730 h",
    )
    gb = p.usage["interfaceEndpointGbPerEndpoint"]
    p.line(
        r,
        f"interface endpoint data ({gb:g} GB)",
        "vpc.interface-endpoint.data",
        gb,
        "usage interfaceEndpointGbPerEndpoint",
        per_hour=False,
    )


def _load_balancer(p: _Pricer, r: Resource, kind: str | None = None) -> None:
    kind = kind or ("network" if r.inputs.get("loadBalancerType") == "network" else "application")
    p.line(r, f"{kind} load balancer hours", f"elb.{kind}.hour", 1, "730 h")
    lcu = p.usage["loadBalancerLcu"]
    p.line(
        r,
        f"{kind} load balancer capacity ({lcu:g} LCU)",
        f"elb.{kind}.lcu",
        lcu,
        "usage loadBalancerLcu",
        per_hour=True,
    )


def _ingress(p: _Pricer, r: Resource) -> None:
    spec = r.inputs.get("spec") or {}
    annotations = (r.inputs.get("metadata") or {}).get("annotations") or {}
    if spec.get("ingressClassName") == "alb" or annotations.get("kubernetes.io/ingress.class") == "alb":
        if "alb.ingress.kubernetes.io/group.name" in annotations:
            group = annotations["alb.ingress.kubernetes.io/group.name"]
            sharing = [
                x
                for x in p.inventory.of_type(r.type)
                if ((x.inputs.get("metadata") or {}).get("annotations") or {}).get(
                    "alb.ingress.kubernetes.io/group.name"
                )
                == group
            ]
            if sharing and sharing[0].urn != r.urn:
                return  # an ingress group shares one ALB; price it once
        _load_balancer(p, r, "application")


def _service(p: _Pricer, r: Resource) -> None:
    if (r.inputs.get("spec") or {}).get("type") == "LoadBalancer":
        _load_balancer(p, r, "network")


def _rds(p: _Pricer, r: Resource) -> None:
    cls = r.inputs.get("instanceClass", "?")
    multi = bool(r.inputs.get("multiAz"))
    deployment = "multi-az" if multi else "single-az"
    p.line(
        r,
        f"RDS PostgreSQL {cls} ({'Multi-AZ' if multi else 'Single-AZ'})",
        f"rds.instance.{cls}.{deployment}",
        1,
        "730 h" + ("; Multi-AZ: primary + standby" if multi else ""),
    )
    if r.inputs.get("manageMasterUserPassword"):
        p.line(
            r,
            "Secrets Manager secret of the master password",
            "secretsmanager.secret",
            1,
            "RDS keeps the generated password in Secrets Manager",
            per_hour=False,
        )
    gb = r.inputs.get("allocatedStorage", 20)
    p.line(
        r,
        f"RDS storage {gb} GB gp3",
        f"rds.storage.gp3.{deployment}",
        gb,
        "allocated storage" + ("; Multi-AZ doubles it" if multi else ""),
        per_hour=False,
    )


def _bucket(p: _Pricer, r: Resource) -> None:
    key = "s3DatasetsGb" if "dataset" in r.name else "s3ArtifactsGb"
    gb = p.usage[key]
    p.line(r, f"S3 Standard {gb:g} GB", "s3.standard.storage", gb, f"usage {key}", per_hour=False)


def _ecr(p: _Pricer, r: Resource) -> None:
    gb = p.usage["ecrGbPerRepository"]
    p.line(r, f"ECR storage {gb:g} GB", "ecr.storage", gb, "usage ecrGbPerRepository", per_hour=False)


def _kms(p: _Pricer, r: Resource) -> None:
    p.line(r, "KMS customer managed key", "kms.key", 1, "one key", per_hour=False)


def _secret(p: _Pricer, r: Resource) -> None:
    p.line(r, "Secrets Manager secret", "secretsmanager.secret", 1, "one secret", per_hour=False)


def _log_group(p: _Pricer, r: Resource) -> None:
    gb = p.usage["logsGbPerLogGroup"]
    p.line(r, f"CloudWatch Logs ingestion {gb:g} GB", "logs.ingestion", gb, "usage logsGbPerLogGroup", per_hour=False)
    retention = r.inputs.get("retentionInDays") or 3653
    stored = round(gb * min(retention, 365) / 30, 2)
    p.line(
        r,
        f"CloudWatch Logs storage {stored:g} GB",
        "logs.storage",
        stored,
        f"{gb:g} GB/month kept {retention} days (compressed size not modelled)",
        per_hour=False,
    )


def _sqs(p: _Pricer, r: Resource) -> None:
    billable = max(p.usage["sqsMillionRequests"] - 1, 0)
    p.line(
        r,
        f"SQS requests beyond the free million ({billable:g} M)",
        "sqs.requests",
        billable,
        "usage sqsMillionRequests; first million free",
        per_hour=False,
    )


def _ebs_volume(p: _Pricer, r: Resource) -> None:
    kind = r.inputs.get("type", "gp3")
    p.line(
        r,
        f"EBS {kind} {r.inputs.get('size', 0)} GB",
        f"ebs.{kind}.storage",
        r.inputs.get("size", 0),
        "provisioned size",
        per_hour=False,
    )


def _helm_release(p: _Pricer, r: Resource) -> None:
    """Charts run on priced nodes; kube-prometheus-stack also claims EBS volumes for its data."""
    if not str(r.inputs.get("chart", "")).endswith("kube-prometheus-stack"):
        return
    values = r.inputs.get("values") or {}
    claims = {
        "Prometheus": ((values.get("prometheus") or {}).get("prometheusSpec") or {}).get("storageSpec"),
        "Alertmanager": ((values.get("alertmanager") or {}).get("alertmanagerSpec") or {}).get("storage"),
    }
    for what, spec in claims.items():
        size = (
            (((spec or {}).get("volumeClaimTemplate") or {}).get("spec") or {})
            .get("resources", {})
            .get("requests", {})
            .get("storage")
        )
        if size:
            gb = gibibytes(size)
            p.line(
                r,
                f"{what} volume {gb:g} GB gp3",
                "ebs.gp3.storage",
                gb,
                "persistent volume claimed by the chart",
                per_hour=False,
            )


def _cron_job(p: _Pricer, r: Resource) -> None:
    from infra.cost.pipelines import price_cron_job  # it uses this module's pool helpers

    price_cron_job(p, r)


def _sagemaker_mlflow(p: _Pricer, r: Resource) -> None:
    size = str(r.inputs.get("trackingServerSize", "Small")).lower()
    p.line(r, f"SageMaker managed MLflow ({size})", f"sagemaker.mlflow.{size}", 1, "730 h")


RULES: dict[str, Callable[[_Pricer, Resource], None]] = {
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:eks/nodeGroup:NodeGroup": _node_group,
    "kubernetes:karpenter.sh/v1:NodePool": _karpenter_pool,
    "aws:ec2/natGateway:NatGateway": _nat,
    "aws:ec2/eip:Eip": _eip,
    "aws:ec2/vpcEndpoint:VpcEndpoint": _vpc_endpoint,
    "aws:lb/loadBalancer:LoadBalancer": _load_balancer,
    "aws:alb/loadBalancer:LoadBalancer": _load_balancer,
    "kubernetes:networking.k8s.io/v1:Ingress": _ingress,
    "kubernetes:core/v1:Service": _service,
    "aws:rds/instance:Instance": _rds,
    "aws:s3/bucket:Bucket": _bucket,
    "aws:ecr/repository:Repository": _ecr,
    "aws:kms/key:Key": _kms,
    "aws:secretsmanager/secret:Secret": _secret,
    "aws:cloudwatch/logGroup:LogGroup": _log_group,
    "aws:sqs/queue:Queue": _sqs,
    "aws:ebs/volume:Volume": _ebs_volume,
    "aws:sagemaker/mlflowTrackingServer:MlflowTrackingServer": _sagemaker_mlflow,
    "kubernetes:helm.sh/v3:Release": _helm_release,
    "kubernetes:batch/v1:CronJob": _cron_job,
}


def free_reason(type_token: str) -> str | None:
    if type_token in FREE_TYPES:
        return FREE_TYPES[type_token]
    return next((reason for prefix, reason in FREE_PREFIXES.items() if type_token.startswith(prefix)), None)


def estimate(inventory: Inventory, *, table: PriceTable, region: str, usage: dict[str, float]) -> Estimate:
    pricer = _Pricer(inventory, table, region, usage)
    if region not in table.regions:
        raise ValueError(
            f"no prices for region {region}; the table covers {', '.join(table.regions)} (run `cost refresh-prices "
            f"--region {region}`)"
        )
    for resource in inventory.resources:
        rule = RULES.get(resource.type)
        if rule is not None:
            rule(pricer, resource)
        elif free_reason(resource.type) is None:
            pricer.not_priced(resource, resource.type, f"no price rule for {resource.type}")
    return Estimate(stack=inventory.stack, region=region, price_date=table.date, lines=pricer.lines)


def priced_types() -> Iterable[str]:
    return RULES.keys()
