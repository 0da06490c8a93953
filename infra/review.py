"""The one pull-request comment: what changes, what the rules find, what it costs (README: Delivery).

`scripts/pr-review.sh` builds the inventories of the base and the head of a pull request for
every stack it touches (via `scripts/cost-review.sh`), runs `check` and `render` on each head
inventory, and calls this module to put it all in one markdown comment. The workflow finds its
earlier comment by `COMMENT_MARKER` and edits it, so a pull request has one comment, current.

    python -m infra.review OUT_DIR     # reads OUT_DIR/cost, OUT_DIR/checks, OUT_DIR/render

Exit status: 0 when no stack has an unwaived finding or an invalid Kubernetes object, 1 otherwise
(the comment is written either way, so the reviewer sees why).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from infra.cost.estimate import logical_addresses
from infra.cost.report import COMMENT_MARKER as COST_MARKER
from infra.inventory import Inventory

COMMENT_MARKER = "<!-- mlops-platform review -->"
MAX_ROWS = 60
"""Changed resources listed per stack; the count is always complete."""
OPS = {"create": "➕", "update": "✏️", "replace": "♻️", "delete": "➖", "create-replacement": "♻️", "delete-replaced": "♻️"}


@dataclass
class StackReview:
    stack: str
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    """(operation, logical address, type) for every resource that changes."""
    source: str = "offline"
    findings: list[dict] = field(default_factory=list)
    waived: int = 0
    render_ok: bool = True
    render_lines: list[str] = field(default_factory=list)
    """`render`'s FAIL lines and its closing summary."""

    @property
    def failed(self) -> bool:
        return bool(self.findings) or not self.render_ok


def resource_changes(base: Inventory | None, head: Inventory) -> list[tuple[str, str, str]]:
    """What `pulumi up` would do: the preview's own operations when it is a real preview, else the
    difference between the base's and the head's inventories, matched by logical address."""
    head_addresses = logical_addresses(head)
    if any(r.op for r in head.resources):
        return sorted(
            (r.op, head_addresses[r.urn], r.type) for r in head.resources if r.op and r.op not in ("same", "read")
        )
    before = {}
    if base is not None:
        base_addresses = logical_addresses(base)
        before = {base_addresses[r.urn]: r for r in base.resources}
    after = {head_addresses[r.urn]: r for r in head.resources}
    changes = [("create", a, r.type) for a, r in after.items() if a not in before]
    changes += [("delete", a, r.type) for a, r in before.items() if a not in after]
    changes += [
        ("update", a, r.type)
        for a, r in after.items()
        if a in before
        and (r.inputs, r.protect, r.retain_on_delete)
        != (before[a].inputs, before[a].protect, before[a].retain_on_delete)
    ]
    return sorted(changes, key=lambda c: (c[1], c[0]))


def read_stack(out: Path, head_file: Path) -> StackReview:
    """One stack's review from the files `scripts/pr-review.sh` wrote for it."""
    head = Inventory.read(head_file)
    base_file = out / "cost" / "base" / head_file.name
    base = Inventory.read(base_file) if base_file.is_file() else None
    review = StackReview(stack=head.stack, changes=resource_changes(base, head), source=head.source)
    checks = json.loads((out / "checks" / f"{head_file.stem}.json").read_text())
    review.findings, review.waived = checks["findings"], len(checks["waived"])
    render = (out / "render" / f"{head_file.stem}.txt").read_text().splitlines()
    review.render_ok = (out / "render" / f"{head_file.stem}.rc").read_text().strip() == "0"
    review.render_lines = [
        line.strip() for line in render if line.strip().startswith("FAIL") or "validated against" in line
    ]
    return review


def _counts(changes: list[tuple[str, str, str]]) -> str:
    ops = sorted({c[0] for c in changes}, key=lambda op: (list(OPS).index(op) if op in OPS else len(OPS), op))
    counts = {op: sum(1 for c in changes if c[0] == op) for op in ops}
    return ", ".join(f"{OPS.get(op, op)} {n} {op}" for op, n in counts.items()) or "no change"


def _stack_details(r: StackReview) -> list[str]:
    out = ["", f"<details><summary><b>{r.stack}</b>: {_counts(r.changes)}; {len(r.findings)} finding(s)</summary>", ""]
    if r.changes:
        out += ["| | resource | type |", "| --- | --- | --- |"]
        out += [f"| {OPS.get(op, op)} | `{address}` | `{typ}` |" for op, address, typ in r.changes[:MAX_ROWS]]
        if len(r.changes) > MAX_ROWS:
            out.append(f"| | … and {len(r.changes) - MAX_ROWS} more | |")
    for f in r.findings:
        out.append(f"- ❌ **{f['rule']}** [{f['severity']}] `{f['resource']}`: {f['message']} — fix: {f['fix']}")
    out += [f"- `{line}`" for line in r.render_lines]
    out += ["", "</details>"]
    return out


def render_comment(reviews: list[StackReview], cost_markdown: str) -> str:
    """The whole comment: a summary table per stack, the details, then the cost review."""
    if not reviews:
        return f"{COMMENT_MARKER}\n{cost_markdown.replace(COST_MARKER, '').strip()}\n"
    verdict = (
        "❌ rule findings or invalid Kubernetes objects"
        if any(r.failed for r in reviews)
        else "✅ rules pass, Kubernetes objects valid"
    )
    source = (
        "real `pulumi preview`"
        if any(r.source != "offline" for r in reviews)
        else "offline preview (the program under mocks)"
    )
    out = [
        COMMENT_MARKER,
        f"## Review of this change: {verdict}",
        "",
        f"What changes comes from the {source}.",
        "",
        "| stack | what changes | rule findings | Kubernetes objects |",
        "| --- | --- | --- | --- |",
    ]
    for r in reviews:
        findings = f"{'❌ ' if r.findings else ''}{len(r.findings)}" + (f" ({r.waived} waived)" if r.waived else "")
        out.append(f"| {r.stack} | {_counts(r.changes)} | {findings} | {'valid' if r.render_ok else '❌ invalid'} |")
    for r in reviews:
        out += _stack_details(r)
    out += ["", "### Cost", "", cost_markdown.replace(COST_MARKER, "").strip(), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m infra.review OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    reviews = [read_stack(out, head) for head in sorted((out / "cost" / "head").glob("*.json"))]
    comment = render_comment(reviews, (out / "cost" / "comment.md").read_text(encoding="utf-8"))
    (out / "comment.md").write_text(comment, encoding="utf-8")
    return 1 if any(r.failed for r in reviews) else 0


if __name__ == "__main__":
    sys.exit(main())
