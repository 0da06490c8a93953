"""Run the rule pack over an inventory, apply the stack's waivers, and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from infra.checks.rules import RULES, Finding, rule_by_id
from infra.inventory import Inventory
from infra.stackfile import StackConfig

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


@dataclass(frozen=True)
class Waiver:
    rule: str
    resource: str
    reason: str


@dataclass
class Report:
    stack: str
    findings: list[Finding] = field(default_factory=list)
    waived: list[tuple[Finding, str]] = field(default_factory=list)
    unused_waivers: list[Waiver] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.findings)


def config_findings(stack_values: Mapping[str, Any], secret_keys: Iterable[str]) -> list[Finding]:
    """The findings of the stack-file rule MLOPS-SEC-002 for these stack values."""
    stack_file = StackConfig(
        project="", stack="", path=Path(), values=dict(stack_values), secret_keys=frozenset(secret_keys)
    )
    secrets_rule = rule_by_id("MLOPS-SEC-002")
    assert secrets_rule is not None, "MLOPS-SEC-002 is registered by infra/checks/rules.py"
    return secrets_rule.findings(Inventory("", "", "offline", []), stack_file)


def run_checks(inventory: Inventory, waivers: Iterable[Waiver] = (), stack_file: StackConfig | None = None) -> Report:
    """Every rule over the inventory (and the stack file, when there is one), waivers applied."""
    waivers = list(waivers)
    used: set[int] = set()
    report = Report(stack=inventory.stack)
    findings = [f for rule in RULES for f in rule.findings(inventory, stack_file)]
    for finding in sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.rule, f.resource)):
        match = next(
            (i for i, w in enumerate(waivers) if w.rule == finding.rule and w.resource == finding.resource), None
        )
        if match is None:
            report.findings.append(finding)
        else:
            used.add(match)
            report.waived.append((finding, waivers[match].reason))
    report.unused_waivers = [w for i, w in enumerate(waivers) if i not in used]
    return report
