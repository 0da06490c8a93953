"""Cost estimates of known inventories, checked against totals computed here from the price table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from botocore.stub import Stubber

from infra.cost import report
from infra.cost.estimate import BASELINE, WORST_CASE, estimate
from infra.cost.prices import PriceTable, refresh
from infra.cost.usage import DEFAULT_USAGE, UsageError, load_usage
from infra.inventory import Inventory, Resource
from infra.stackfile import REPO_ROOT

TABLE = PriceTable.load()
HOURS = 730
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def price(key: str, region: str = "us-east-1") -> float:
    return TABLE.get(region, key).price


def res(name: str, type_: str, parent: str | None = None, **inputs) -> Resource:
    return Resource(
        urn=f"urn:pulumi:t::p::{type_}::{name}",
        type=type_,
        name=name,
        parent=parent,
        custom=not type_.startswith("mlops:"),
        inputs=inputs,
    )


def inventory(*resources: Resource, stack: str = "t") -> Inventory:
    return Inventory(project="p", stack=stack, source="offline", resources=list(resources), region="us-east-1")


def est(inv: Inventory, region: str = "us-east-1", usage=None):
    return estimate(inv, table=TABLE, region=region, usage=usage or dict(DEFAULT_USAGE))


def gpu_pool(limit: int, families=("g5", "g6"), sizes=("xlarge", "2xlarge"), name="gpu", limits=None) -> Resource:
    return res(
        f"{name}-pool",
        "kubernetes:karpenter.sh/v1:NodePool",
        metadata={"name": name},
        spec={
            "limits": limits or {"nvidia.com/gpu": str(limit)},
            "template": {
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": name},
                    "requirements": [
                        {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": list(families)},
                        {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": list(sizes)},
                    ],
                }
            },
        },
    )


def cpu_pool(limit: str, families=("c6i", "m6i"), sizes=("large", "xlarge", "2xlarge")) -> Resource:
    return gpu_pool(0, families, sizes, name="cpu", limits={"cpu": limit})


def node_class(name: str, size: str) -> Resource:
    """An EC2NodeClass as components/node_pools.py declares it."""
    return res(
        f"{name}-class",
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        metadata={"name": name},
        spec={
            "blockDeviceMappings": [
                {"deviceName": "/dev/xvda", "ebs": {"volumeSize": size, "volumeType": "gp3", "encrypted": True}}
            ]
        },
    )


def deployment(
    name: str, *, pool: str | None, cpu: str, memory: str, gpus: str | None = None, replicas: int = 1
) -> Resource:
    requests = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": gpus} if gpus else {})}
    pod = {"containers": [{"name": "main", "resources": {"requests": requests, "limits": {"memory": memory}}}]}
    if pool:
        pod["nodeSelector"] = {"mlops.platform/pool": pool}
    return res(
        name,
        "kubernetes:apps/v1:Deployment",
        metadata={"namespace": "serving", "name": name},
        spec={"replicas": replicas, "template": {"spec": pod}},
    )


def lines_of(result, kind: str, text: str) -> list:
    return [line for line in result.lines if line.kind == kind and text in line.item]


def test_known_inventory_priced_to_a_hand_computed_total():
    inv = inventory(
        res("eks", "aws:eks/cluster:Cluster", upgradePolicy={"supportType": "STANDARD"}),
        res(
            "ng",
            "aws:eks/nodeGroup:NodeGroup",
            instanceTypes=["t3.large"],
            scalingConfig={"desiredSize": 3},
            diskSize=20,
        ),
        res("nat", "aws:ec2/natGateway:NatGateway"),
        res("eip", "aws:ec2/eip:Eip"),
        res("key", "aws:kms/key:Key"),
        res("vpc", "aws:ec2/vpc:Vpc"),
    )
    expected = (
        price("eks.cluster.standard") * HOURS
        + 3 * price("ec2.instance.t3.large") * HOURS
        + 3 * 20 * price("ebs.gp2.storage")
        + price("vpc.nat.hour") * HOURS
        + DEFAULT_USAGE["natGbPerGateway"] * price("vpc.nat.data")
        + price("vpc.public-ipv4") * HOURS
        + price("kms.key")
    )
    result = est(inv)
    assert result.baseline_monthly == pytest.approx(expected, abs=0.05)
    assert result.not_priced == []


def test_multi_az_doubles_instance_and_storage():
    single = est(
        inventory(
            res("db", "aws:rds/instance:Instance", instanceClass="db.t4g.small", multiAz=False, allocatedStorage=100)
        )
    )
    multi = est(
        inventory(
            res("db", "aws:rds/instance:Instance", instanceClass="db.t4g.small", multiAz=True, allocatedStorage=100)
        )
    )
    assert single.baseline_monthly == pytest.approx(
        price("rds.instance.db.t4g.small.single-az") * HOURS + 100 * 0.115, abs=0.01
    )
    assert multi.baseline_monthly == pytest.approx(2 * single.baseline_monthly, abs=0.02)


@pytest.mark.parametrize("limit", [0, 2, 8])
def test_worst_case_gpu_line_is_limit_times_priciest_allowed_instance_times_hours(limit):
    result = est(inventory(gpu_pool(limit)))
    (nodes,) = lines_of(result, WORST_CASE, "` at its ceiling")
    (volumes,) = lines_of(result, WORST_CASE, "root volumes at its ceiling")
    priciest = max(price(f"ec2.instance.{t}") for t in ("g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge"))
    assert nodes.monthly == pytest.approx(limit * priciest * HOURS, abs=0.01)
    assert volumes.monthly == pytest.approx(
        limit * 20 * price("ebs.gp3.storage"), abs=0.01
    )  # no EC2NodeClass: Karpenter's 20 GiB
    assert result.baseline_monthly == 0  # the ceiling is shown, never added to the idle total
    assert result.worst_case_monthly == pytest.approx(nodes.monthly + volumes.monthly, abs=0.01)


def test_multi_gpu_instances_count_as_fewer_nodes():
    result = est(inventory(gpu_pool(8, families=("p4d",), sizes=("24xlarge",))))
    (worst,) = lines_of(result, WORST_CASE, "` at its ceiling")
    assert worst.quantity == 1 and worst.monthly == pytest.approx(price("ec2.instance.p4d.24xlarge") * HOURS, abs=0.01)


def test_a_ceiling_never_passes_the_limit():
    """Karpenter launches no node that would take the pool past its limit: 7 vCPUs hold one 4-vCPU node, not two."""
    result = est(inventory(cpu_pool("7", families=("m6i",), sizes=("xlarge",))))
    (worst,) = lines_of(result, WORST_CASE, "` at its ceiling")
    assert worst.quantity == 1 and worst.monthly == pytest.approx(price("ec2.instance.m6i.xlarge") * HOURS, abs=0.01)
    mixed = est(inventory(cpu_pool("7", families=("m6i",), sizes=("large", "xlarge"))))
    (worst,) = lines_of(mixed, WORST_CASE, "` at its ceiling")
    assert worst.monthly == pytest.approx(
        3 * price("ec2.instance.m6i.large") * HOURS, abs=0.01
    )  # 6 of the 7 vCPUs, however mixed


# -- issue 13, item 1: floors fit pods by CPU, memory and GPU on allocatable capacity ------------


def test_allocatable_formula_gives_what_karpenter_publishes_for_every_type():
    """The EKS AMI's reserves (CPU tiers 6/1/0.5/0.25 %, 255 MiB + 11 MiB × max pods, 100 MiB eviction) and
    Karpenter's 7.5 % VM overhead give, for every type, the allocatable of Karpenter's v1.11.1 reference."""
    from infra.cost import instances

    reference = instances.karpenter_reference()
    priced = {
        key.removeprefix("ec2.instance.")
        for key in TABLE.document["regions"]["us-east-1"]
        if key.startswith("ec2.instance.")
    }
    assert priced <= set(reference)  # every priced type has its capacity from upstream
    for name in reference:
        instance = instances.get(name)
        assert instance.allocatable == instances.published_allocatable(name), name
        assert instance.max_pods == int(reference[name]["resources"]["pods"]), name  # ENI limits agree with Karpenter
    chart = yaml.safe_load(
        (REPO_ROOT / "components" / "upstream" / "karpenter-v1.11.1" / "chart-values.yaml").read_text()
    )
    assert chart["settings"]["vmMemoryOverheadPercent"] == instances.VM_MEMORY_OVERHEAD  # the pinned chart's default
    g6 = instances.get("g6.xlarge")
    assert (g6.kube_reserved_cpu_milli, g6.kube_reserved_memory_mib) == (60 + 10 + 10, 255 + 11 * 58)


def test_gpu_pods_too_big_for_g6_xlarge_are_priced_on_g6_2xlarge():
    """Two pods of 4 CPU, 16 Gi and 1 GPU: a g6.xlarge has 4 vCPUs and 16 GiB before reserves, so they do not fit."""
    result = est(
        inventory(
            gpu_pool(16),
            node_class("gpu", "100Gi"),
            deployment("reranker", pool="gpu", cpu="4", memory="16Gi", gpus="1", replicas=2),
        )
    )
    (floor,) = lines_of(result, BASELINE, "floor for always-on pods")
    assert (floor.quantity, "2 × g6.2xlarge") == (2, floor.assumption.split(" = ")[1].split(" (")[0])
    expected = 2 * price("ec2.instance.g6.2xlarge") * HOURS + 2 * 100 * price("ebs.gp3.storage")
    assert result.baseline_monthly == pytest.approx(expected, abs=0.01)


def test_floors_count_memory_not_only_cpu():
    """1 CPU in all, but 2 × 6 GiB.

    A c6i.large (4 GiB) holds neither pod; one m6i.xlarge (14,162 MiB allocatable) holds both.
    """
    result = est(
        inventory(
            cpu_pool("64"),
            node_class("cpu", "50Gi"),
            deployment("api", pool=None, cpu="500m", memory="6Gi", replicas=2),
        )
    )
    (floor,) = lines_of(result, BASELINE, "floor for always-on pods")
    assert floor.quantity == 1 and "= 1 × m6i.xlarge" in floor.assumption
    assert floor.monthly == pytest.approx(price("ec2.instance.m6i.xlarge") * HOURS, abs=0.01)


def test_a_pod_no_allowed_type_can_hold_is_reported():
    result = est(
        inventory(gpu_pool(4, sizes=("xlarge",)), deployment("huge", pool="gpu", cpu="4", memory="16Gi", gpus="1"))
    )
    (line,) = result.not_priced
    assert "serving/huge" in line.assumption and "more than any allowed instance type" in line.assumption


# -- items 2 and 3: root volumes in floors and ceilings; worst case counts each floor once -----


def test_node_root_volumes_are_priced_in_floors_and_ceilings():
    result = est(
        inventory(gpu_pool(4), node_class("gpu", "100Gi"), deployment("r", pool="gpu", cpu="2", memory="8Gi", gpus="1"))
    )
    (floor_volumes,) = lines_of(result, BASELINE, "floor root volumes")
    (ceiling_volumes,) = lines_of(result, WORST_CASE, "root volumes at its ceiling")
    assert (floor_volumes.quantity, floor_volumes.monthly) == (100, pytest.approx(100 * price("ebs.gp3.storage")))
    assert (ceiling_volumes.quantity, ceiling_volumes.monthly) == (400, pytest.approx(400 * price("ebs.gp3.storage")))


def test_worst_case_is_baseline_plus_each_pool_ceiling_minus_its_floor():
    nat = res("nat", "aws:ec2/natGateway:NatGateway")
    result = est(
        inventory(
            nat, gpu_pool(4), node_class("gpu", "100Gi"), deployment("r", pool="gpu", cpu="2", memory="8Gi", gpus="1")
        )
    )
    ceiling = sum(line.monthly for line in result.lines if line.kind == WORST_CASE)
    floor = sum(line.monthly for line in result.lines if line.kind == BASELINE and line.resource == "gpu-pool")
    assert floor > 0 and ceiling > floor
    assert result.worst_case_monthly == pytest.approx(result.baseline_monthly + ceiling - floor, abs=0.01)
    assert result.worst_case_monthly == pytest.approx(
        est(inventory(nat)).baseline_monthly + ceiling, abs=0.01
    )  # the floor is inside the ceiling


# -- item 4: one quantity parser ------------------------------------------------------------------


def test_quantities_are_read_by_the_kubernetes_parser():
    from components.quantities import cpu_cores, cpu_millicores, gibibytes, mebibytes, whole

    assert (cpu_cores("32000m"), cpu_cores("2"), cpu_millicores("0.1"), cpu_millicores("1e3m")) == (
        32.0,
        2.0,
        100,
        1000,
    )
    assert (mebibytes("16Gi"), mebibytes("512Mi"), gibibytes("100Gi"), whole("1")) == (16384.0, 512.0, 100.0, 1)
    for bad in ("4 cores", "1.5.2", "NaN"):
        with pytest.raises(ValueError, match="not a Kubernetes quantity"):
            cpu_cores(bad)


def test_components_read_quantities_with_the_same_parser():
    from tests.unit.builders import cpu_pool_args, endpoint_args, node_pools_args

    def pools(cpu_limit: str):
        return node_pools_args(None, cpu=cpu_pool_args(limits={"cpu": cpu_limit}))

    assert pools("32000m").cpu.limits == {"cpu": "32000m"}  # a valid quantity, not a crash of int("32000m")
    with pytest.raises(ValueError, match=r"cpu.limits\[cpu\]: not a Kubernetes quantity: 'lots'"):
        pools("lots")
    assert [endpoint_args(None, cpu=cpu).workers for cpu in ("1500m", "2", "2500m", "250m")] == [1, 2, 2, 1]


def test_a_cpu_limit_in_millicores_is_read_as_cores():
    """`"32000m"` is 32 vCPUs: 16 × m6i.large at most, not 16,000."""
    (worst,) = lines_of(
        est(inventory(cpu_pool("32000m", families=("m6i",), sizes=("large",)))), WORST_CASE, "` at its ceiling"
    )
    assert worst.quantity == 16 and worst.assumption.startswith("ceiling 32 vCPUs = 16 × m6i.large")


def test_unknown_types_and_unpriced_instances_are_reported_not_dropped():
    result = est(
        inventory(
            res("thing", "aws:neptune/cluster:Cluster"),
            res("ng", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["x9.huge"], scalingConfig={"desiredSize": 1}),
            res("db", "aws:rds/instance:Instance", instanceClass="db.x1.huge", allocatedStorage=20),
        )
    )
    reasons = {line.resource: line.assumption for line in result.not_priced}
    assert reasons["thing"] == "no price rule for aws:neptune/cluster:Cluster"
    assert "ec2.instance.x9.huge" in reasons["ng"]
    assert "rds.instance.db.x1.huge.single-az" in reasons["db"]


def test_pool_without_a_ceiling_is_not_priced():
    pool = gpu_pool(1)
    pool.inputs["spec"]["limits"] = {}
    (line,) = est(inventory(pool)).not_priced
    assert "no cpu or nvidia.com/gpu limit" in line.assumption


def test_regions_have_their_own_prices():
    inv = inventory(res("nat", "aws:ec2/natGateway:NatGateway"))
    assert est(inv, "eu-west-1").baseline_monthly > est(inv, "us-east-1").baseline_monthly
    with pytest.raises(ValueError, match="no prices for region ap-south-2"):
        est(inv, "ap-south-2")


def test_every_entry_of_the_table_is_dated_and_sourced():
    assert TABLE.date and set(TABLE.regions) >= {"us-east-1", "us-west-2", "eu-west-1"}
    for region in TABLE.regions:
        for key, entry in TABLE.document["regions"][region].items():
            assert (
                entry["price"] >= 0 and entry["source"] and entry["confidence"] in "ABC" and entry["query"]["service"]
            ), (region, key)


def compare_fixture():
    bucket = res("artifacts", "aws:s3/bucket:Bucket")
    base = inventory(
        res("ng", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["t3.medium"], scalingConfig={"desiredSize": 2}),
        res("nat", "aws:ec2/natGateway:NatGateway"),
        bucket,
        gpu_pool(2),
        stack="dev",
    )
    head = inventory(
        res("ng", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["t3.medium"], scalingConfig={"desiredSize": 3}),
        bucket,
        res("db", "aws:rds/instance:Instance", instanceClass="db.t4g.micro", allocatedStorage=20),
        gpu_pool(4),
        stack="dev",
    )
    return report.compare(est(base), est(head))


def test_compare_shows_added_removed_and_changed():
    comparison = compare_fixture()
    statuses = {(c.status, c.resource) for c in comparison.changes}
    assert ("removed", "nat") in statuses and ("added", "db") in statuses
    assert ("changed", "ng") in statuses and ("changed", "gpu-pool") in statuses
    assert not any(c.resource == "artifacts" for c in comparison.changes)  # unchanged lines are not listed
    node_group = next(c for c in comparison.changes if c.resource == "ng" and "t3.medium" in c.item)
    assert node_group.delta == pytest.approx(price("ec2.instance.t3.medium") * HOURS, abs=0.01)
    assert comparison.delta == pytest.approx(
        comparison.head.baseline_monthly - comparison.base.baseline_monthly, abs=0.01
    )
    assert sum(c.delta for c in comparison.changes if c.kind == BASELINE) == pytest.approx(comparison.delta, abs=0.05)


def test_markdown_comment_matches_its_snapshot():
    markdown = report.render_markdown([compare_fixture()])
    snapshot = FIXTURES / "cost-comment.md"
    assert markdown.splitlines()[1].startswith("💰 Monthly cost will increase by **$")
    assert markdown == snapshot.read_text(encoding="utf-8")


def test_usage_file_overrides_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "u.yaml"
    good.write_text("natGbPerGateway: 500\n")
    assert load_usage("x", good)["natGbPerGateway"] == 500
    bad = tmp_path / "b.yaml"
    bad.write_text("natGB: 5\n")
    with pytest.raises(UsageError, match="unknown usage key 'natGB'"):
        load_usage("x", bad)
    negative = tmp_path / "n.yaml"
    negative.write_text("s3ArtifactsGb: -1\n")
    with pytest.raises(UsageError, match="expected a number >= 0"):
        load_usage("x", negative)


def test_a_real_pulumi_preview_is_priced():
    inv = Inventory.read(FIXTURES / "pulumi-preview-dev.json")
    result = est(inv)
    items = {(line.resource, line.item) for line in result.lines}
    assert ("mlops-dev-storage-key", "KMS customer managed key") in items
    assert any(r == "mlops-dev-storage-artifacts" for r, _ in items)


def run_cost(*args):
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "cost", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def dev_inventory_file(tmp_path_factory, stack_inventories):
    path = tmp_path_factory.mktemp("inv") / "dev.json"
    stack_inventories["dev"].write(path)
    return path


def test_budget_gate_exit_codes(dev_inventory_file):
    under = run_cost("--inventory", str(dev_inventory_file), "--fail-over-budget", "--budget", "10000")
    assert under.returncode == 0, under.stderr
    over = run_cost("--inventory", str(dev_inventory_file), "--fail-over-budget", "--budget", "50")
    assert over.returncode == 1 and "over its budget of $50.00" in over.stderr
    increase = run_cost(
        "--inventory", str(dev_inventory_file), "--compare", str(dev_inventory_file), "--max-increase", "0"
    )
    assert increase.returncode == 0
    missing = run_cost("--inventory", str(dev_inventory_file), "--max-increase", "5")
    assert missing.returncode == 2 and "--max-increase needs --compare" in missing.stderr


def test_dev_stack_idles_under_250_dollars_with_gpus_at_zero(stack_inventories):
    result = est(stack_inventories["dev"])
    assert result.baseline_monthly < 250
    gpu_lines = [line for line in result.lines if "`gpu`" in line.item]
    assert {line.kind for line in gpu_lines} == {BASELINE, WORST_CASE}
    assert next(line for line in gpu_lines if line.kind == BASELINE).monthly == 0
    assert next(line for line in gpu_lines if line.kind == WORST_CASE).monthly > 0
    assert result.not_priced == []


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_shipped_stack_is_fully_priced_and_within_budget(stack_inventories, stack):
    from infra.cli import settings_for
    from infra.stackfile import load_stack_config

    result = est(stack_inventories[stack])
    assert result.not_priced == [], [line.assumption for line in result.not_priced]
    assert result.baseline_monthly <= settings_for(load_stack_config(stack)).budget.monthly_usd


def test_json_format_round_trips(dev_inventory_file):
    out = run_cost("--inventory", str(dev_inventory_file), "--format", "json")
    data = json.loads(out.stdout)
    baseline = sum(line["monthly"] for line in data["lines"] if line["kind"] == "baseline")
    assert data["stack"] == "dev" and data["baselineMonthly"] == pytest.approx(baseline, abs=0.05)


def test_refresh_prices_from_the_price_list_api_offline():
    import boto3

    document = {
        "schema": "mlops-platform/prices@1",
        "date": "2000-01-01",
        "currency": "USD",
        "hoursPerMonth": 730,
        "regions": {
            "us-east-1": {
                "ec2.instance.t3.medium": {
                    "price": 1.0,
                    "unit": "hour",
                    "source": "old",
                    "confidence": "C",
                    "query": {"service": "AmazonEC2", "filters": {"instanceType": "t3.medium"}},
                },
                "kms.key": {
                    "price": 1.0,
                    "unit": "month",
                    "source": "old",
                    "confidence": "C",
                    "query": {"service": "awskms", "filters": {"usagetype": "KMS-Keys"}},
                },
            }
        },
    }
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    dimension = {"unit": "Hrs", "pricePerUnit": {"USD": "0.0416000000"}}
    product = {"product": {"attributes": {}}, "terms": {"OnDemand": {"t": {"priceDimensions": {"d": dimension}}}}}
    with Stubber(client) as stub:
        # entries are refreshed in key order: ec2... then kms...
        stub.add_response(
            "get_products",
            {"PriceList": [json.dumps(product)], "FormatVersion": "aws_v1"},
            {
                "ServiceCode": "AmazonEC2",
                "FormatVersion": "aws_v1",
                "Filters": [
                    {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "t3.medium"},
                    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
                ],
            },
        )
        stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"})
        new, unchanged = refresh(client, table=PriceTable(document), regions=["us-east-1"], progress=lambda _: None)
        stub.assert_no_pending_responses()
    entry = new["regions"]["us-east-1"]["ec2.instance.t3.medium"]
    assert entry["price"] == 0.0416 and entry["confidence"] == "A" and "Price List API" in entry["source"]
    assert unchanged == ["us-east-1 kms.key"] and new["regions"]["us-east-1"]["kms.key"]["price"] == 1.0
    assert new["date"] != "2000-01-01"


def test_cost_comment_over_directories_marks_new_stacks_as_added(tmp_path, dev_inventory_file):
    base, head = tmp_path / "base", tmp_path / "head"
    base.mkdir(), head.mkdir()
    (head / "dev.json").write_text(dev_inventory_file.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "cost-comment", str(base), str(head)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.startswith(report.COMMENT_MARKER)
        and "will increase by" in result.stdout
        and "| dev | $0.00 |" in result.stdout
    )


def test_cost_review_script_prices_only_the_stack_a_change_touches(tmp_path):
    """The script the workflow runs, end to end, in a scratch repository: the dev stack moves to one NAT per AZ."""
    import os
    import shutil

    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo / name)

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True, capture_output=True
        )

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    stack_file = repo / "stacks" / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  mlops-platform:network:\n    natGateways: perAz\n")

    out = tmp_path / "cost"
    result = subprocess.run(
        ["bash", "scripts/cost-review.sh", "HEAD", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "stacks affected since HEAD: dev" in result.stdout
    comment = (out / "comment.md").read_text()
    nat = (
        price("vpc.nat.hour") * HOURS
        + DEFAULT_USAGE["natGbPerGateway"] * price("vpc.nat.data")
        + price("vpc.public-ipv4") * HOURS
    )
    assert f"will increase by **${nat:,.2f}/month**" in comment
    assert "| dev |" in comment and "| prod |" not in comment


def test_readme_states_what_the_cost_command_prints_now(stack_inventories):
    """The README's figures per stack (baseline and worst case) and its sample comment are today's."""
    import re

    readme = (REPO_ROOT / "README.md").read_text()

    def money(text: str) -> float:
        return float(text.replace("$", "").replace(",", ""))

    for stack in ("dev", "staging", "prod"):
        row = re.search(rf"^\| {stack} \| (\$[\d,.]+) \| .* \| (\$[\d,.]+) \|$", readme, re.MULTILINE)
        assert row, f"no README row for {stack}"
        result = est(stack_inventories[stack])
        assert (money(row.group(1)), money(row.group(2))) == (result.baseline_monthly, result.worst_case_monthly), stack
    assert f"dev stack idles at ${est(stack_inventories['dev']).baseline_monthly:,.2f}/month" in readme
    assert (FIXTURES / "cost-comment.md").read_text(encoding="utf-8").rstrip("\n") in readme


# -- item 5: errors, not tracebacks ------------------------------------------------------------


def one_line_error(result, *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_missing_files_and_bad_inventories_exit_2_with_one_line(tmp_path, dev_inventory_file):
    missing = tmp_path / "missing.json"
    one_line_error(run_cost("--inventory", str(missing)), str(missing), "cannot read the inventory", "No such file")
    one_line_error(
        run_cost("--inventory", str(dev_inventory_file), "--compare", str(missing)),
        str(missing),
        "cannot read the inventory",
    )
    one_line_error(
        run_cost("--inventory", str(dev_inventory_file), "--usage", str(tmp_path / "usage.yaml")),
        str(tmp_path / "usage.yaml"),
        "cannot read the usage file",
    )
    document = json.loads(dev_inventory_file.read_text())
    del document["resources"][3]["type"]
    typeless = tmp_path / "typeless.json"
    typeless.write_text(json.dumps(document))
    one_line_error(run_cost("--inventory", str(typeless)), str(typeless), "resources[3]: no `type`")


# -- item 6: compare matches resources by their place among the components, not by URN ---------


def staged(stack: str, desired: int = 2) -> Inventory:
    """A small stack whose names carry the stack's name, as the platform's do (`mlops-<stack>-...`)."""

    def r(name, type_, parent=None, **inputs):
        return Resource(
            urn=f"urn:pulumi:{stack}::p::{type_}::mlops-{stack}-{name}",
            type=type_,
            name=f"mlops-{stack}-{name}",
            parent=parent and f"urn:pulumi:{stack}::p::{parent[0]}::mlops-{stack}-{parent[1]}",
            custom=not type_.startswith("mlops:"),
            inputs=inputs,
        )

    net, cluster = ("mlops:network:Network", "net"), ("mlops:cluster:Cluster", "cluster")
    return inventory(
        r("net", net[0]),
        r("net-nat-0", "aws:ec2/natGateway:NatGateway", net),
        r("net-eip-0", "aws:ec2/eip:Eip", net),
        r("cluster", cluster[0]),
        r(
            "cluster-system",
            "aws:eks/nodeGroup:NodeGroup",
            cluster,
            instanceTypes=["t3.medium"],
            scalingConfig={"desiredSize": desired},
        ),
        stack=stack,
    )


def test_compare_matches_a_renamed_stack_by_logical_name():
    same = report.compare(est(staged("dev")), est(staged("dev-eu")))
    assert same.changes == [] and same.delta == 0
    grown = report.compare(est(staged("dev")), est(staged("dev-eu", desired=3)))
    assert {(c.status, c.resource) for c in grown.changes} == {("changed", "mlops-dev-eu-cluster-system")}
    assert grown.delta == pytest.approx(
        price("ec2.instance.t3.medium") * HOURS + 20 * price("ebs.gp2.storage"), abs=0.01
    )


def test_a_copy_of_the_dev_stack_file_under_a_new_name_compares_equal(tmp_path, stack_inventories):
    from infra.cli import offline_inventory
    from infra.stackfile import load_stack_file

    copy = tmp_path / "Pulumi.dev-copy.yaml"
    copy.write_text((REPO_ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    renamed = offline_inventory(load_stack_file(copy))
    assert {r.urn for r in renamed.resources}.isdisjoint({r.urn for r in stack_inventories["dev"].resources})
    comparison = report.compare(est(stack_inventories["dev"]), est(renamed))
    assert comparison.changes == [], [(c.status, c.resource, c.item) for c in comparison.changes]


def test_prod_idle_total_recounted_by_hand(stack_inventories):
    """Prod's baseline, recounted from the price table and the prod profile, not from the estimate's lines.
    (Change this list with the prod stack: each entry says where its quantity comes from.)"""
    gp3 = price("ebs.gp3.storage")
    expected = {
        "EKS control plane": price("eks.cluster.standard") * HOURS,
        "system nodes: 3 × m6i.large, 40 GiB each": 3 * price("ec2.instance.m6i.large") * HOURS + 3 * 40 * gp3,
        "NAT per AZ (3): hours, 20 GB, its IPv4": 3
        * (price("vpc.nat.hour") * HOURS + 20 * price("vpc.nat.data") + price("vpc.public-ipv4") * HOURS),
        "interface endpoints ecr.api, ecr.dkr, sts, logs in 3 AZs, 5 GB each": 4
        * (3 * price("vpc.interface-endpoint.hour") * HOURS + 5 * price("vpc.interface-endpoint.data")),
        "RDS db.m6g.large Multi-AZ, 100 GB": price("rds.instance.db.m6g.large.multi-az") * HOURS
        + 100 * price("rds.storage.gp3.multi-az"),
        "KMS keys: cluster secrets, storage": 2 * price("kms.key"),
        "secrets: RDS master, tracking admin/flask/database, 2 endpoint readers, Grafana admin": 7
        * price("secretsmanager.secret"),
        "control-plane logs: 5 GB ingested, kept 90 days": 5 * price("logs.ingestion")
        + 5 * 90 / 30 * price("logs.storage"),
        "S3: 50 GB artifacts + 100 GB datasets": 150 * price("s3.standard.storage"),
        "ECR: 3 repositories × 2 GB": 3 * 2 * price("ecr.storage"),
        "Prometheus 200 GB + Alertmanager 2 GB": 202 * gp3,
        "internal ALB: hours + 1 LCU": (price("elb.application.hour") + price("elb.application.lcu")) * HOURS,
        "cpu pool floor: 3 × 2 CPU + 2 × 250m, 8 GiB = 1 × c6i.2xlarge, 50 GiB": price("ec2.instance.c6i.2xlarge")
        * HOURS
        + 50 * gp3,
        "gpu pool floor: 2 × (4 CPU, 16 Gi, 1 GPU) = 2 × g6.2xlarge, 100 GiB each": 2
        * price("ec2.instance.g6.2xlarge")
        * HOURS
        + 2 * 100 * gp3,
    }
    result = est(stack_inventories["prod"])
    assert result.not_priced == []
    assert result.baseline_monthly == pytest.approx(sum(expected.values()), abs=0.05)
    assert result.baseline_monthly == pytest.approx(2493.71, abs=0.005)  # the figure the README states
