"""Run the rule pack over an inventory, apply the stack's waivers, and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from infra.checks.rules import HIGH, RULES, Finding, _SECRET_NAME
from infra.inventory import Inventory

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
    """MLOPS-SEC-002: stack settings whose key names a secret but whose value is not `secure:`."""
    secret_keys = set(secret_keys)
    found = []
    for key, value in stack_values.items():
        for path, leaf in _leaves_of(key, value):
            if key not in secret_keys and _SECRET_NAME.search(path.rsplit(".", 1)[-1].rsplit(":", 1)[-1]) and isinstance(leaf, str) and leaf:
                found.append(
                    Finding("MLOPS-SEC-002", HIGH, f"config:{path}", "", "a secret-looking setting is stored in plain text in the stack file",
                            "set it with `pulumi config set --secret`, or keep it in Secrets Manager")
                )
    return found


def _leaves_of(prefix: str, value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves_of(f"{prefix}.{k}", v)
    else:
        yield prefix, value


def run_checks(inventory: Inventory, waivers: Iterable[Waiver] = (), extra: Iterable[Finding] = ()) -> Report:
    waivers = list(waivers)
    used: set[int] = set()
    report = Report(stack=inventory.stack)
    findings = [f for rule in RULES for f in rule.findings(inventory)] + list(extra)
    for finding in sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.rule, f.resource)):
        match = next((i for i, w in enumerate(waivers) if w.rule == finding.rule and w.resource == finding.resource), None)
        if match is None:
            report.findings.append(finding)
        else:
            used.add(match)
            report.waived.append((finding, waivers[match].reason))
    report.unused_waivers = [w for i, w in enumerate(waivers) if i not in used]
    return report
