"""The rule pack as Pulumi CrossGuard stack policies: the same rule functions, fed by the engine.

`policy/__main__.py` builds the `PolicyPack` from `stack_policies()`; each policy turns the
engine's resources into an `Inventory` and reports the rule's unwaived findings. Waivers are
read from the stack file named in the resources' URNs, exactly as `check` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from infra.checks import Waiver, run_checks
from infra.checks.rules import RULES, Rule
from infra.inventory import STACK_TYPE, Inventory, Resource, mask_secrets
from infra.stackfile import StackConfig


def inventory_from_policy_args(args: Any) -> Inventory:
    """An inventory from `StackValidationArgs.resources` (pulumi_policy.PolicyResource objects)."""
    resources = []
    stack = project = "unknown"
    for r in args.resources:
        if r.resource_type == STACK_TYPE:
            continue
        stack, project = r.urn.split("::")[0].removeprefix("urn:pulumi:"), r.urn.split("::")[1]
        parent = r.parent.urn if r.parent is not None and r.parent.resource_type != STACK_TYPE else None
        resources.append(
            Resource(
                urn=r.urn,
                type=r.resource_type,
                name=r.name,
                parent=parent,
                custom=not r.resource_type.startswith("mlops:"),
                inputs=mask_secrets(dict(r.props)),
                protect=bool(getattr(r.opts, "protect", False)),
                depends_on=[d.urn for d in (r.dependencies or [])],
                provider=getattr(r.provider, "urn", "") or "",
            )
        )
    return Inventory(project=project, stack=stack, source="pulumi-preview", resources=resources)


def stack_file_for(stack: str, root: Path | None = None) -> StackConfig | None:
    """The stack file named by the resources' URNs, when the repository has it."""
    from infra.stackfile import REPO_ROOT, StackFileError, load_stack_config

    try:
        return load_stack_config(stack, root or REPO_ROOT)
    except StackFileError:
        return None


def waivers_for(stack: str, root: Path | None = None) -> list[Waiver]:
    from infra.settings import CONFIG_NAMESPACE, load_settings

    config = stack_file_for(stack, root)
    if config is None:
        return []
    settings = load_settings(config.namespace(CONFIG_NAMESPACE), stack=stack, region=config.values.get("aws:region"))
    return [Waiver(w.rule, w.resource, w.reason) for w in settings.waivers]


def validator(
    rule: Rule,
    waivers: Callable[[str], list[Waiver]] = waivers_for,
    stack_files: Callable[[str], StackConfig | None] = stack_file_for,
) -> Callable[[Any, Callable[..., None]], None]:
    def validate(args: Any, report_violation: Callable[..., None]) -> None:
        inventory = inventory_from_policy_args(args)
        report = run_checks(inventory, waivers(inventory.stack), stack_file=stack_files(inventory.stack))
        for finding in report.findings:
            if finding.rule == rule.id:
                report_violation(f"{finding.resource}: {finding.message}. Fix: {finding.fix}", finding.urn or None)

    return validate


def stack_policies() -> list[dict[str, Any]]:
    """Keyword arguments for one `StackValidationPolicy` per rule."""
    return [
        {
            "name": rule.id.lower(),
            "description": f"{rule.title} ({rule.severity}). Fix: {rule.fix}",
            "validate": validator(rule),
        }
        for rule in RULES
    ]
