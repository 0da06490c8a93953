"""Budget: an AWS Budget for one environment's monthly cost, with alerts by email.

The budget counts only costs tagged ``stack=<stack>`` (the platform tags every resource), so
stacks sharing an account each get their own alert. AWS only applies the tag filter
after ``stack`` is activated as a cost allocation tag (Billing console, once per account).
Two alerts go out: when the month's forecast crosses the threshold (early warning) and when
actual spend does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws

TOKEN = "mlops:budget:Budget"


@dataclass(frozen=True, kw_only=True)
class BudgetArgs:
    """Values from the stack's `budget` settings (defaults in infra/profiles.py only)."""

    stack: str
    """Value of the `stack` cost allocation tag this budget counts."""
    monthly_usd: float
    """Monthly limit in US dollars."""
    alert_threshold_percent: int
    """Alert when actual or forecast spend crosses this share of the limit."""
    alert_emails: Sequence[str]
    """Who receives the alerts (at least one: AWS requires a subscriber)."""

    def __post_init__(self) -> None:
        problems = []
        if self.monthly_usd <= 0:
            problems.append(f"monthly_usd: got {self.monthly_usd}, expected > 0")
        if not self.alert_emails:
            problems.append("alert_emails: at least one address is required")
        if problems:
            raise ValueError("invalid BudgetArgs: " + "; ".join(problems))


class Budget(pulumi.ComponentResource):
    budget_name: pulumi.Output[str]

    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                comparison_operator="GREATER_THAN",
                notification_type=kind,
                threshold=args.alert_threshold_percent,
                threshold_type="PERCENTAGE",
                subscriber_email_addresses=list(args.alert_emails),
            )
            for kind in ("FORECASTED", "ACTUAL")
        ]
        budget = aws.budgets.Budget(
            f"{name}-monthly",
            name=f"{name}-monthly",
            budget_type="COST",
            limit_amount=f"{args.monthly_usd:.2f}",
            limit_unit="USD",
            time_unit="MONTHLY",
            cost_filters=[aws.budgets.BudgetCostFilterArgs(name="TagKeyValue", values=[f"user:stack${args.stack}"])],
            notifications=notifications,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.budget_name = budget.name
        self.register_outputs({"budget_name": self.budget_name})
