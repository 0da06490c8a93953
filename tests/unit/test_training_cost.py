"""The cost tool and training pipelines: each pipeline's worst case (runs a month × deadline × attempts on the
cheapest node of its pool that fits it), or not priced with the reason; the stack's totals unchanged by it."""

from __future__ import annotations

import pytest

from infra.cost.estimate import NOT_PRICED, estimate
from infra.cost.pipelines import PIPELINE, runs_per_month
from infra.cost.prices import PriceTable
from infra.cost.usage import DEFAULT_USAGE
from tests.conftest import offline_stack
from tests.unit.test_training_component import REPOSITORIES

TABLE = PriceTable.load()
BASE = {"model": "m", "entryPoint": "examples.diabetes:task", "data": "examples/data/diabetes.csv.dvc"}
PIPELINES = [
    {
        **BASE,
        "name": "weekly-gpu",
        "schedule": "0 3 * * 1",
        "gpu": 1,
        "cpu": "4",
        "memory": "16Gi",
        "timeoutMinutes": 240,
        "retries": 2,
    },
    {**BASE, "name": "on-drift", "model": "diabetes", "endpoint": "diabetes", "retrainMinIntervalMinutes": 360},
    {**BASE, "name": "by-hand", "model": "other"},
    {**BASE, "name": "too-big", "schedule": "@daily", "gpu": 1, "cpu": "16", "memory": "64Gi"},
]


@pytest.fixture(scope="module")
def prod():
    inventory = offline_stack("prod", registry=REPOSITORIES, pipelines=PIPELINES)
    return inventory, estimate(inventory, table=TABLE, region="us-east-1", usage=dict(DEFAULT_USAGE))


def line(result, pipeline: str):
    (found,) = [line for line in result.lines if line.item == f"training pipeline `{pipeline}` worst case"]
    return found


def price(key: str) -> float:
    return TABLE.get("us-east-1", key).price


def test_runs_a_month_follow_the_schedule():
    assert runs_per_month("0 3 * * 1", 730) == 4  # Mondays from 2026-01-01 00:00 to 2026-01-31 10:00
    assert runs_per_month("@daily", 730) == 31
    assert runs_per_month("*/30 * * * *", 730) == 1461


def test_a_scheduled_gpu_pipeline_is_priced_on_the_cheapest_gpu_node_that_fits(prod):
    _, result = prod
    found = line(result, "weekly-gpu")
    hours = 4 * 3 * 4  # 4 starts, 3 attempts, 4 h deadline
    cheapest = min(
        ("g5.2xlarge", "g6.2xlarge"), key=lambda t: price(f"ec2.instance.{t}")
    )  # 4 CPU, 16 GiB, 1 GPU: the xlarge ones are too small
    hourly = (
        price(f"ec2.instance.{cheapest}") + 100 * price("ebs.gp3.storage") / 730
    )  # the GPU pool's 100 GiB root volume
    assert found.kind == PIPELINE and found.quantity == hours and found.unit == "run-hours"
    assert found.monthly == pytest.approx(hours * hourly, abs=0.01)
    assert f"1 × {cheapest}" in found.assumption and "4 starts in 730 h" in found.assumption


def test_a_drift_retrained_pipeline_is_bounded_by_the_receivers_rate_limit(prod):
    _, result = prod
    found = line(result, "on-drift")
    assert found.kind == PIPELINE and found.quantity == 121 * 2 * 1  # 730 h / 6 h starts, 2 attempts, 1 h each
    assert "drift retraining at most once per 360 min: 121 starts" in found.assumption and found.monthly > 0


def test_a_pipeline_only_a_person_starts_or_that_fits_no_node_is_not_priced_with_the_reason(prod):
    _, result = prod
    by_hand, too_big = line(result, "by-hand"), line(result, "too-big")
    assert by_hand.kind == NOT_PRICED and "runs only when a person starts it" in by_hand.assumption
    assert (
        too_big.kind == NOT_PRICED and "no allowed instance type of pool `gpu` holds its requests" in too_big.assumption
    )


def test_pipelines_add_nothing_to_the_stacks_totals(prod):
    """They run inside their pools' ceilings, which the worst case already counts."""
    inventory, result = prod
    without = estimate(
        type(inventory)(
            project=inventory.project,
            stack=inventory.stack,
            source=inventory.source,
            region=inventory.region,
            resources=[r for r in inventory.resources if r.type != "kubernetes:batch/v1:CronJob"],
        ),
        table=TABLE,
        region="us-east-1",
        usage=dict(DEFAULT_USAGE),
    )
    assert (result.baseline_monthly, result.worst_case_monthly) == (
        without.baseline_monthly,
        without.worst_case_monthly,
    )


def test_on_the_system_nodes_a_pipeline_needs_no_node_of_its_own():
    inventory = offline_stack(
        "dev", registry=REPOSITORIES, pipelines=[{**BASE, "name": "nightly", "schedule": "@daily"}]
    )
    found = line(estimate(inventory, table=TABLE, region="us-east-1", usage=dict(DEFAULT_USAGE)), "nightly")
    assert found.kind == PIPELINE and found.monthly == 0 and "always-on `system` nodes" in found.assumption
