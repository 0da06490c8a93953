from __future__ import annotations

import json

import pytest

from components.budget import Budget
from components.registry import Registry
from tests.conftest import declare, only
from tests.unit.builders import budget_args, registry_args

KEY = "arn:aws:kms:us-east-1:123456789012:key/test"


def test_repositories_are_immutable_scanned_and_kms_encrypted():
    inventory = declare(
        lambda: Registry("reg", registry_args(namespace="mlops-t", repositories=("a", "b"), kms_key_arn=KEY))
    )
    repos = inventory.of_type("aws:ecr/repository:Repository")
    assert sorted(r.inputs["name"] for r in repos) == ["mlops-t/a", "mlops-t/b"]
    for repo in repos:
        assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
        assert repo.inputs["imageScanningConfiguration"]["scanOnPush"] is True
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": KEY}]


def test_lifecycle_keeps_the_last_n_images():
    inventory = declare(
        lambda: Registry("reg", registry_args(namespace="m", repositories=("a",), kms_key_arn=KEY, keep_images=7))
    )
    rules = json.loads(only(inventory, "aws:ecr/lifecyclePolicy:LifecyclePolicy").inputs["policy"])["rules"]
    keep = next(r for r in rules if r["selection"]["countType"] == "imageCountMoreThan")
    assert keep["selection"]["countNumber"] == 7 and keep["action"]["type"] == "expire"


def test_registry_protection_and_force_delete():
    inventory = declare(
        lambda: Registry(
            "reg", registry_args(namespace="m", repositories=("a",), kms_key_arn=KEY, protect=True, force_delete=False)
        )
    )
    repo = only(inventory, "aws:ecr/repository:Repository")
    assert repo.protect is True and repo.inputs["forceDelete"] is False


def test_budget_alerts_on_forecast_and_actual_for_this_stack_only():
    inventory = declare(
        lambda: Budget(
            "b", budget_args(stack="dev", monthly_usd=250, alert_threshold_percent=80, alert_emails=("a@x.io",))
        )
    )
    budget = only(inventory, "aws:budgets/budget:Budget")
    assert budget.inputs["limitAmount"] == "250.00" and budget.inputs["timeUnit"] == "MONTHLY"
    assert budget.inputs["costFilters"] == [{"name": "TagKeyValue", "values": ["user:stack$dev"]}]
    kinds = {n["notificationType"]: n for n in budget.inputs["notifications"]}
    assert set(kinds) == {"FORECASTED", "ACTUAL"}
    assert all(n["threshold"] == 80 and n["subscriberEmailAddresses"] == ["a@x.io"] for n in kinds.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"repositories": ()}, "repositories"),
        ({"keep_images": 0}, "keep_images"),
    ],
)
def test_bad_registry_args(args, message):
    with pytest.raises(ValueError, match=message):
        registry_args(**{"namespace": "m", "kms_key_arn": KEY, **args})


def test_bad_budget_args():
    with pytest.raises(ValueError, match="alert_emails"):
        budget_args(stack="dev", monthly_usd=10, alert_emails=())
    with pytest.raises(ValueError, match="monthly_usd"):
        budget_args(stack="dev", monthly_usd=0, alert_emails=("a@b.io",))
