"""Cost estimates of known inventories, checked against totals computed here from the price table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.stub import Stubber

from infra.cost import report
from infra.cost.estimate import BASELINE, NOT_PRICED, WORST_CASE, estimate
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
    return Resource(urn=f"urn:pulumi:t::p::{type_}::{name}", type=type_, name=name, parent=parent, custom=not type_.startswith("mlops:"), inputs=inputs)


def inventory(*resources: Resource, stack: str = "t") -> Inventory:
    return Inventory(project="p", stack=stack, source="offline", resources=list(resources), region="us-east-1")


def est(inv: Inventory, region: str = "us-east-1", usage=None):
    return estimate(inv, table=TABLE, region=region, usage=usage or dict(DEFAULT_USAGE))


def gpu_pool(limit: int, families=("g5", "g6"), sizes=("xlarge", "2xlarge"), name="gpu") -> Resource:
    return res(
        f"{name}-pool",
        "kubernetes:karpenter.sh/v1:NodePool",
        metadata={"name": name},
        spec={
            "limits": {"nvidia.com/gpu": str(limit)},
            "template": {"spec": {"requirements": [
                {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": list(families)},
                {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": list(sizes)},
            ]}},
        },
    )


def test_known_inventory_priced_to_a_hand_computed_total():
    inv = inventory(
        res("eks", "aws:eks/cluster:Cluster", upgradePolicy={"supportType": "STANDARD"}),
        res("ng", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["t3.large"], scalingConfig={"desiredSize": 3}, diskSize=20),
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
    single = est(inventory(res("db", "aws:rds/instance:Instance", instanceClass="db.t4g.small", multiAz=False, allocatedStorage=100)))
    multi = est(inventory(res("db", "aws:rds/instance:Instance", instanceClass="db.t4g.small", multiAz=True, allocatedStorage=100)))
    assert single.baseline_monthly == pytest.approx(price("rds.instance.db.t4g.small.single-az") * HOURS + 100 * 0.115, abs=0.01)
    assert multi.baseline_monthly == pytest.approx(2 * single.baseline_monthly, abs=0.02)


@pytest.mark.parametrize("limit", [0, 2, 8])
def test_worst_case_gpu_line_is_limit_times_priciest_allowed_instance_times_hours(limit):
    result = est(inventory(gpu_pool(limit)))
    (worst,) = [line for line in result.lines if line.kind == WORST_CASE]
    priciest = max(price(f"ec2.instance.{t}") for t in ("g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge"))
    assert worst.monthly == pytest.approx(limit * priciest * HOURS, abs=0.01)
    assert result.baseline_monthly == 0  # the ceiling is shown, never added to the idle total
    assert result.worst_case_monthly == pytest.approx(worst.monthly, abs=0.01)


def test_multi_gpu_instances_count_as_fewer_nodes():
    result = est(inventory(gpu_pool(8, families=("p4d",), sizes=("24xlarge",))))
    (worst,) = [line for line in result.lines if line.kind == WORST_CASE]
    assert worst.quantity == 1 and worst.monthly == pytest.approx(price("ec2.instance.p4d.24xlarge") * HOURS, abs=0.01)


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
            assert entry["price"] >= 0 and entry["source"] and entry["confidence"] in "ABC" and entry["query"]["service"], (region, key)


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
    assert comparison.delta == pytest.approx(comparison.head.baseline_monthly - comparison.base.baseline_monthly, abs=0.01)
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
    return subprocess.run([sys.executable, "-m", "infra.cli", "cost", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


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
    increase = run_cost("--inventory", str(dev_inventory_file), "--compare", str(dev_inventory_file), "--max-increase", "0")
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
    assert data["stack"] == "dev" and data["baselineMonthly"] == pytest.approx(sum(l["monthly"] for l in data["lines"] if l["kind"] == "baseline"), abs=0.05)


def test_refresh_prices_from_the_price_list_api_offline():
    import boto3

    document = {
        "schema": "mlops-platform/prices@1", "date": "2000-01-01", "currency": "USD", "hoursPerMonth": 730,
        "regions": {"us-east-1": {
            "ec2.instance.t3.medium": {"price": 1.0, "unit": "hour", "source": "old", "confidence": "C", "query": {"service": "AmazonEC2", "filters": {"instanceType": "t3.medium"}}},
            "kms.key": {"price": 1.0, "unit": "month", "source": "old", "confidence": "C", "query": {"service": "awskms", "filters": {"usagetype": "KMS-Keys"}}},
        }},
    }
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    product = {"product": {"attributes": {}}, "terms": {"OnDemand": {"t": {"priceDimensions": {"d": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0416000000"}}}}}}}
    with Stubber(client) as stub:
        # entries are refreshed in key order: ec2... then kms...
        stub.add_response("get_products", {"PriceList": [json.dumps(product)], "FormatVersion": "aws_v1"},
                          {"ServiceCode": "AmazonEC2", "FormatVersion": "aws_v1", "Filters": [
                              {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "t3.medium"},
                              {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}]})
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
    result = subprocess.run([sys.executable, "-m", "infra.cli", "cost-comment", str(base), str(head)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(report.COMMENT_MARKER) and "will increase by" in result.stdout and "| dev | $0.00 |" in result.stdout


def test_cost_review_script_prices_only_the_stack_a_change_touches(tmp_path):
    """The script the workflow runs, end to end, in a scratch repository: the dev stack moves to one NAT per AZ."""
    import os
    import shutil

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo / name)
    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=repo, check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    stack_file = repo / "stacks" / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  mlops-platform:network:\n    natGateways: perAz\n")

    out = tmp_path / "cost"
    result = subprocess.run(
        ["bash", "scripts/cost-review.sh", "HEAD", str(out)], cwd=repo, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "stacks affected since HEAD: dev" in result.stdout
    comment = (out / "comment.md").read_text()
    nat = price("vpc.nat.hour") * HOURS + DEFAULT_USAGE["natGbPerGateway"] * price("vpc.nat.data") + price("vpc.public-ipv4") * HOURS
    assert f"will increase by **${nat:,.2f}/month**" in comment
    assert "| dev |" in comment and "| prod |" not in comment


def test_readme_states_the_current_dev_idle_cost(stack_inventories):
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    stated = int(re.search(r"dev stack idles at about \$(\d+)/month", readme).group(1))
    assert abs(stated - est(stack_inventories["dev"]).baseline_monthly) < 1.0
