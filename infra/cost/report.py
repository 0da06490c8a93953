"""Cost reports: a terminal table, JSON, and the markdown pull-request comment with diffs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infra.cost.estimate import NOT_PRICED, WORST_CASE, Estimate, Line

COMMENT_MARKER = "<!-- mlops-platform cost comment -->"


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def signed(value: float) -> str:
    return f"+${value:,.2f}" if value >= 0 else f"-${-value:,.2f}"


def render_table(estimate: Estimate) -> str:
    rows = [("component / resource", "item", "qty", "per", "$/hour", "$/month", "assumption")]
    for component, lines in estimate.by_component().items():
        rows.append((component, "", "", "", "", "", ""))
        for line in lines:
            monthly = (
                "not priced"
                if line.kind == NOT_PRICED
                else money(line.monthly) + (" (ceiling)" if line.kind == WORST_CASE else "")
            )
            hourly = "" if line.hourly is None else f"{line.hourly:.4f}"
            rows.append(
                (f"  {line.resource}", line.item, f"{line.quantity:g}", line.unit, hourly, monthly, line.assumption)
            )
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(6)]
    out = []
    for row in rows:
        cells = [row[i][: widths[i]].ljust(widths[i]) for i in range(6)]
        out.append("  ".join(cells) + ("  " + row[6] if row[6] else ""))
    out.append("")
    out.append(_totals(estimate))
    return "\n".join(out)


def _totals(estimate: Estimate) -> str:
    lines = [
        f"stack {estimate.stack} ({estimate.region}, prices of {estimate.price_date})",
        f"  idle baseline:          {money(estimate.baseline_monthly)}/month",
        f"  worst case (pools full): {money(estimate.worst_case_monthly)}/month",
    ]
    if estimate.not_priced:
        lines.append(f"  not priced: {len(estimate.not_priced)} item(s), listed above with the reason")
    return "\n".join(lines)


def render_json(estimate: Estimate) -> str:
    return json.dumps(estimate.to_json(), indent=2)


# -- compare -------------------------------------------------------------------------------


@dataclass
class Change:
    status: str  # added | removed | changed
    resource: str
    item: str
    kind: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float:
        return (self.after or 0.0) - (self.before or 0.0)


@dataclass
class Comparison:
    stack: str
    base: Estimate
    head: Estimate
    changes: list[Change] = field(default_factory=list)

    @property
    def delta(self) -> float:
        return round(self.head.baseline_monthly - self.base.baseline_monthly, 2)

    @property
    def worst_case_delta(self) -> float:
        return round(self.head.worst_case_monthly - self.base.worst_case_monthly, 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "baseMonthly": self.base.baseline_monthly,
            "headMonthly": self.head.baseline_monthly,
            "deltaMonthly": self.delta,
            "worstCaseDeltaMonthly": self.worst_case_delta,
            "changes": [{**vars(c), "delta": round(c.delta, 2)} for c in self.changes],
        }


def compare(base: Estimate, head: Estimate) -> Comparison:
    """Lines matched by the resource's logical address (its place among the components, not its
    URN, which holds the stack's name) and item: added, removed, or changed in monthly cost."""

    def index(estimate: Estimate) -> dict[tuple[str, str], Line]:
        return {(line.key or line.urn, _item_key(line)): line for line in estimate.lines}

    before, after = index(base), index(head)
    changes = []
    for key in before.keys() - after.keys():
        line = before[key]
        changes.append(Change("removed", line.resource, line.item, line.kind, line.monthly, None))
    for key in after.keys() - before.keys():
        line = after[key]
        changes.append(Change("added", line.resource, line.item, line.kind, None, line.monthly))
    for key in before.keys() & after.keys():
        old, new = before[key], after[key]
        if (old.monthly or 0) != (new.monthly or 0) or old.item != new.item or old.kind != new.kind:
            changes.append(
                Change(
                    "changed",
                    new.resource,
                    new.item if old.item == new.item else f"{old.item} → {new.item}",
                    new.kind,
                    old.monthly,
                    new.monthly,
                )
            )
    changes.sort(key=lambda c: (c.kind == WORST_CASE, -abs(c.delta), c.resource))
    return Comparison(stack=head.stack, base=base, head=head, changes=changes)


def _item_key(line: Line) -> str:
    """What a line prices, without the quantity that may change (`2 × t3.large` → `t3.large`)."""
    if line.kind == WORST_CASE:
        return "worst-case " + line.item
    return (
        line.item.split(" × ", 1)[-1].split(" (")[0]
        if line.type == "aws:eks/nodeGroup:NodeGroup"
        else line.item.split(" (")[0]
    )


def render_markdown(comparisons: list[Comparison]) -> str:
    """The pull-request comment: the delta first, then one collapsible table per stack."""
    total_before = sum(c.base.baseline_monthly for c in comparisons)
    total_delta = round(sum(c.delta for c in comparisons), 2)
    percent = f" ({total_delta / total_before * 100:+.1f}%)" if total_before else ""
    if total_delta:
        direction = "increase" if total_delta > 0 else "decrease"
        verb = f"will {direction} by **{money(abs(total_delta))}/month**{percent}"
    else:
        verb = "will **not change**"
    out = [COMMENT_MARKER, f"💰 Monthly cost {verb} across {len(comparisons)} stack(s)."]
    out.append("")
    out.append("| stack | before | after | change | worst case after (pools full) |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for c in comparisons:
        out.append(
            f"| {c.stack} | {money(c.base.baseline_monthly)} | {money(c.head.baseline_monthly)} | {signed(c.delta)} "
            f"| {money(c.head.worst_case_monthly)} |"
        )
    for c in comparisons:
        out.append("")
        out.append(
            f"<details><summary><b>{c.stack}</b>: {signed(c.delta)}/month, {len(c.changes)} changed line(s)</summary>"
        )
        out.append("")
        if c.changes:
            out.append("| | resource | item | before | after | change |")
            out.append("| --- | --- | --- | ---: | ---: | ---: |")
            for ch in c.changes:
                mark = {"added": "➕", "removed": "➖", "changed": "✏️"}[ch.status]
                note = " (not priced)" if ch.kind == NOT_PRICED else ""
                out.append(
                    f"| {mark} | `{ch.resource}` | {ch.item}{note} | {money(ch.before)} | {money(ch.after)} | "
                    f"{signed(ch.delta)} |"
                )
        else:
            out.append("No cost changes.")
        unpriced = c.head.not_priced
        if unpriced:
            out.append("")
            out.append("Not priced: " + "; ".join(f"`{line.resource}` ({line.assumption})" for line in unpriced))
        out.append("")
        out.append(
            f"Prices: {c.head.region}, table of {c.head.price_date}. Ceiling lines are not in the totals; "
            "worst case = total + Σ per pool (ceiling − floor)."
        )
        out.append("</details>")
    return "\n".join(out) + "\n"
