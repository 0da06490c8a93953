"""The platform's command line: ``python -m infra.cli <command>`` (installed as ``mlops``).

Commands read a stack's inventory, produced offline from its stack file (the real program
under Pulumi mocks: seconds, no credentials) or read from a file written by ``preview --json``
or by a real ``pulumi preview --json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from infra.inventory import Inventory, InventoryError
from infra.settings import CONFIG_NAMESPACE, PlatformSettings, SettingsError, load_settings
from infra.stackfile import StackConfig, StackFileError, load_stack_config, load_stack_file

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

# What `add_subparsers` returns: each command adds its own parser to it.
Subcommands = argparse._SubParsersAction


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def settings_for(config: StackConfig) -> PlatformSettings:
    return load_settings(config.namespace(CONFIG_NAMESPACE), stack=config.stack, region=config.values.get("aws:region"))


def offline_inventory(config: StackConfig) -> Inventory:
    """Validate the stack's settings, then run the stack program under mocks and return its inventory."""
    from infra.offline import run_offline
    from infra.program import main as program

    settings_for(config)  # fail fast, before the Pulumi runtime starts
    return run_offline(
        program,
        project=config.project,
        stack=config.stack,
        config=config.runtime_config(),
        secret_keys=sorted(config.secret_keys),
    )


def inventory_from_args(args: argparse.Namespace) -> Inventory:
    if getattr(args, "inventory", None):
        return Inventory.read(Path(args.inventory))
    if getattr(args, "stack_file", None):
        return offline_inventory(load_stack_file(Path(args.stack_file)))
    return offline_inventory(load_stack_config(args.stack))


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--stack", default="dev", help="stack whose file stacks/Pulumi.<stack>.yaml is previewed offline (default: dev)"
    )
    source.add_argument(
        "--stack-file", metavar="FILE", help="preview any stack file (named Pulumi.<stack>.yaml), e.g. a proposed one"
    )
    source.add_argument(
        "--inventory",
        metavar="FILE",
        help="read an inventory written by `preview --json`, or the output of a real `pulumi preview --json`",
    )


def cmd_preview(args: argparse.Namespace) -> int:
    from infra.tree import render_counts, render_tree

    started = time.perf_counter()
    inventory = inventory_from_args(args)
    elapsed = time.perf_counter() - started
    source = (
        "offline preview (Pulumi mocks, no cloud calls)" if inventory.source == "offline" else "real `pulumi preview`"
    )
    print(f"stack {inventory.stack} of {inventory.project}: {source}, {elapsed:.1f}s\n")
    if not args.counts_only:
        print(render_tree(inventory))
        print()
    print("resources by type:")
    print(render_counts(inventory))
    if inventory.outputs and not args.counts_only:
        print("\nstack outputs:")
        for key, value in inventory.outputs.items():
            print(f"  {key}: {value}")
    if args.json:
        inventory.write(Path(args.json))
        print(f"\ninventory written to {args.json}")
    return EXIT_OK


def _load_inventory_file(path: str) -> Inventory:
    return Inventory.read(Path(path))


def _stack_budget_and_region(inventory: Inventory) -> tuple[float | None, str | None]:
    """The stack's monthly budget and region from its stack file, when the repository has one."""
    try:
        settings = settings_for(load_stack_config(inventory.stack))
    except StackFileError:
        return None, None
    return settings.budget.monthly_usd, settings.region


def cmd_cost(args: argparse.Namespace) -> int:
    from infra.cost import report
    from infra.cost.estimate import estimate
    from infra.cost.prices import PriceTable
    from infra.cost.usage import UsageError, load_usage

    if args.action == "refresh-prices":
        return _refresh_prices(args)
    table = PriceTable.load()
    head = inventory_from_args(args)
    budget, stack_region = _stack_budget_and_region(head)
    budget = args.budget if args.budget is not None else budget
    region = args.region or head.region or stack_region
    if region is None:
        raise CliError("the inventory names no region; pass --region")
    try:
        usage = load_usage(head.stack, Path(args.usage) if args.usage else None)
    except UsageError as exc:
        raise CliError(str(exc)) from None

    def price(inventory: Inventory):
        try:
            return estimate(inventory, table=table, region=region, usage=usage)
        except ValueError as exc:
            raise CliError(str(exc)) from None

    head_estimate = price(head)
    comparison = None
    if args.compare:
        comparison = report.compare(price(_load_inventory_file(args.compare)), head_estimate)

    if args.format == "json":
        print(json.dumps(comparison.to_json() if comparison else head_estimate.to_json(), indent=2))
    elif args.format == "markdown":
        from infra.cost.estimate import Estimate

        print(
            report.render_markdown(
                [comparison or report.compare(Estimate(head.stack, region, table.date), head_estimate)]
            ),
            end="",
        )
    else:
        print(report.render_table(head_estimate))
        if comparison:
            print(
                f"\ncompared with {args.compare}: {report.signed(comparison.delta)}/month "
                f"({len(comparison.changes)} changed line(s)); worst case "
                f"{report.signed(comparison.worst_case_delta)}/month"
            )
            for change in comparison.changes:
                print(
                    f"  {change.status:8} {change.resource}: {change.item}  {report.money(change.before)} -> "
                    f"{report.money(change.after)}"
                )

    return _budget_gate(args, head_estimate, comparison, budget)


def _budget_gate(args: argparse.Namespace, head, comparison, budget: float | None) -> int:
    from infra.cost import report

    failed = False
    if args.fail_over_budget:
        if budget is None:
            raise CliError(f"no budget known for stack {head.stack}: pass --budget USD or add its stack file")
        if head.baseline_monthly > budget:
            print(
                f"error: stack {head.stack} is estimated at {report.money(head.baseline_monthly)}/month, over its "
                "budget of "
                f"{report.money(budget)} by {report.money(head.baseline_monthly - budget)}",
                file=sys.stderr,
            )
            failed = True
        else:
            print(
                f"budget: {report.money(head.baseline_monthly)} of {report.money(budget)}/month for stack {head.stack}",
                file=sys.stderr,
            )
    if args.max_increase is not None:
        if comparison is None:
            raise CliError("--max-increase needs --compare BASE")
        if comparison.delta > args.max_increase:
            print(
                f"error: this change adds {report.money(comparison.delta)}/month to stack {head.stack}, more than "
                "the allowed "
                f"{report.money(args.max_increase)}",
                file=sys.stderr,
            )
            failed = True
    return EXIT_FINDINGS if failed else EXIT_OK


def cmd_cost_comment(args: argparse.Namespace) -> int:
    """One pull-request comment for every stack that has an inventory in HEAD_DIR."""
    from infra.cost import report
    from infra.cost.estimate import Estimate, estimate
    from infra.cost.prices import PriceTable
    from infra.cost.usage import load_usage

    table = PriceTable.load()
    base_dir, head_dir = Path(args.base_dir), Path(args.head_dir)
    heads = sorted(head_dir.glob("*.json"))
    if not heads:
        raise CliError(f"no inventories (*.json) in {head_dir}")
    comparisons = []
    for head_path in heads:
        head = Inventory.read(head_path)
        _, stack_region = _stack_budget_and_region(head)
        region = head.region or stack_region or "us-east-1"
        usage = load_usage(head.stack)
        head_estimate = estimate(head, table=table, region=region, usage=usage)
        base_path = base_dir / head_path.name
        base_estimate = (
            estimate(Inventory.read(base_path), table=table, region=region, usage=usage)
            if base_path.is_file()
            else Estimate(stack=head.stack, region=region, price_date=table.date)  # a new stack: everything is added
        )
        comparisons.append(report.compare(base_estimate, head_estimate))
    markdown = report.render_markdown(comparisons)
    if args.output:
        Path(args.output).write_text(markdown, encoding="utf-8")
    else:
        print(markdown, end="")
    return EXIT_OK


def _refresh_prices(args: argparse.Namespace) -> int:
    import boto3
    import botocore.exceptions

    from infra.cost.prices import PRICES_PATH, PriceTable, refresh

    table = PriceTable.load()
    regions = args.refresh_region or table.regions
    client = boto3.client("pricing", region_name="us-east-1")  # the Price List API lives in us-east-1 and ap-south-1
    print(f"refreshing {len(regions)} region(s) from the AWS Price List API...")
    try:
        document, unchanged = refresh(client, table=table, regions=regions)
    except (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.ClientError,
        botocore.exceptions.EndpointConnectionError,
    ) as exc:
        raise CliError(f"cannot reach the AWS Price List API ({exc}); the price table was left unchanged") from None
    output = Path(args.output) if args.output else PRICES_PATH
    output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(
        f"wrote {output} ({document['date']}); kept {len(unchanged)} entr{'y' if len(unchanged) == 1 else 'ies'} "
        "unchanged" + (": " + ", ".join(unchanged[:10]) + (" ..." if len(unchanged) > 10 else "") if unchanged else "")
    )
    return EXIT_OK


def _stack_config_for(args: argparse.Namespace, inventory: Inventory) -> StackConfig | None:
    """The stack file behind an inventory (for waivers, settings), when the repository has it."""
    if getattr(args, "stack_file", None):
        return load_stack_file(Path(args.stack_file))
    try:
        return load_stack_config(inventory.stack)
    except StackFileError:
        return None


def cmd_check(args: argparse.Namespace) -> int:
    from infra.checks import Waiver, run_checks
    from infra.checks.rules import RULES

    if args.list_rules:
        for rule in sorted(RULES, key=lambda r: r.id):
            print(f"{rule.id}  {rule.severity:6}  {rule.title}\n{'':20}fix: {rule.fix}")
        return EXIT_OK
    inventory = inventory_from_args(args)
    config = _stack_config_for(args, inventory)
    waivers: list[Waiver] = []
    if config is not None:
        settings = settings_for(config)
        waivers = [Waiver(w.rule, w.resource, w.reason) for w in settings.waivers]
    report = run_checks(inventory, waivers, stack_file=config)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "stack": report.stack,
                    "findings": [vars(f) for f in report.findings],
                    "waived": [{**vars(f), "reason": reason} for f, reason in report.waived],
                    "unusedWaivers": [vars(w) for w in report.unused_waivers],
                },
                indent=2,
            )
        )
    else:
        print(
            f"stack {inventory.stack}: {len(RULES)} rules over {len(inventory.resources)} resources"
            + ("" if config else " (no stack file: its rules did not run)")
        )
        for f in report.findings:
            print(f"  FAIL {f.rule} [{f.severity}] {f.resource}: {f.message}\n       fix: {f.fix}")
        for f, reason in report.waived:
            print(f"  WAIVED {f.rule} [{f.severity}] {f.resource}: {f.message}\n       reason: {reason}")
        for w in report.unused_waivers:
            print(f"  note: waiver {w.rule} for {w.resource} matches no finding; remove it")
        print(f"{len(report.findings)} finding(s), {len(report.waived)} waived")
    return EXIT_FINDINGS if report.failed else EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from infra.manifests import manifests, validate

    inventory = inventory_from_args(args)
    config = _stack_config_for(args, inventory)
    version = args.kubernetes_version or (settings_for(config).cluster.kubernetes_version if config else None)
    if version is None:
        raise CliError("pass --kubernetes-version: the stack file is not available to read cluster.kubernetesVersion")
    objects = manifests(inventory)
    out = Path(args.out) if args.out else None
    problems = 0
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for manifest in objects:
        name = manifest.get("metadata", {}).get("name", "unnamed")
        namespace = manifest.get("metadata", {}).get("namespace", "")
        errors = validate(manifest, version)
        problems += len(errors)
        label = f"{manifest['apiVersion']}/{manifest['kind']} {namespace + '/' if namespace else ''}{name}"
        print(f"  {'ok  ' if not errors else 'FAIL'} {label}" + "".join(f"\n       {e}" for e in errors))
        if out:
            filename = f"{manifest['kind'].lower()}-{namespace + '-' if namespace else ''}{name}.yaml"
            (out / filename).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    print(
        f"{len(objects)} Kubernetes object(s) validated against Kubernetes {version}"
        + (f", written to {out}" if out else "")
        + f": {problems} problem(s)"
    )
    print("Helm releases are listed by `preview`; their charts are rendered by Helm at deploy time, not here.")
    return EXIT_FINDINGS if problems else EXIT_OK


def _duration(text: str) -> str:
    """argparse type: a Prometheus duration (`5s`, `30m`)."""
    from infra.local import prometheus_duration

    try:
        return prometheus_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a number of seconds above 0 (e.g. 1, 0.5, 15)")
    return value


def cmd_local(args: argparse.Namespace) -> int:
    from infra.local import LocalTimings, run

    timings = LocalTimings(
        scrape_interval=args.scrape_interval, drift_interval_seconds=args.drift_interval, drift_for=args.drift_for
    )
    try:
        run(Path(args.workdir), once=args.once, timings=timings, retrain_demo=args.retrain_demo)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from infra.plan import DeployPlan, PlanError, render_waves

    inventory = inventory_from_args(args)
    try:
        print(f"stack {inventory.stack}: " + render_waves(DeployPlan(inventory), destroy=args.destroy))
    except PlanError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def _add_preview_command(commands: Subcommands) -> None:
    """`mlops preview`: the resource tree and inventory of an offline preview."""
    preview = commands.add_parser(
        "preview",
        help="print the resource tree a stack would create, and optionally write its inventory",
        description=(
            "Run the real stack program in-process under Pulumi mocks, with config from stacks/Pulumi.<stack>.yaml, "
            "and print every resource it declares (component -> children, type, name, key settings) with counts. "
            "No credentials or Pulumi CLI are needed. With --inventory, show a saved inventory or a real "
            "`pulumi preview --json` instead."
        ),
    )
    _add_source_arguments(preview)
    preview.add_argument(
        "--json", metavar="FILE", help="write the inventory (every resource with type, name, parent, inputs) to FILE"
    )
    preview.add_argument("--counts-only", action="store_true", help="print only the counts by type")
    preview.set_defaults(handler=cmd_preview)


def _add_cost_command(commands: Subcommands) -> None:
    """`mlops cost`: monthly estimate, comparison and budget gate; `cost refresh-prices`."""
    cost = commands.add_parser(
        "cost",
        help="estimate a stack's monthly cost, compare two inventories, gate on the budget",
        description=(
            "Price a stack's inventory with the shipped price table (infra/cost/prices.json) and the usage file "
            "stacks/usage/<stack>.yaml. Prints each resource's monthly cost, hourly rate, quantity and assumption, "
            "the idle "
            "baseline, and each Karpenter pool's worst case at its ceiling. `cost refresh-prices` rebuilds the "
            "price table "
            "from the AWS Price List API (needs AWS credentials)."
        ),
    )
    cost.add_argument("action", nargs="?", choices=["estimate", "refresh-prices"], default="estimate")
    _add_source_arguments(cost)
    cost.add_argument(
        "--compare", metavar="BASE", help="inventory (or `pulumi preview --json`) of the base to diff against"
    )
    cost.add_argument(
        "--format", choices=["table", "markdown", "json"], default="table", help="markdown is the pull-request comment"
    )
    cost.add_argument(
        "--usage", metavar="FILE", help="usage assumptions (default: stacks/usage/<stack>.yaml, then built-in defaults)"
    )
    cost.add_argument("--region", help="price in this region (default: the stack's aws:region)")
    cost.add_argument(
        "--budget", type=float, metavar="USD", help="monthly budget (default: the stack's budget.monthlyUsd)"
    )
    cost.add_argument(
        "--fail-over-budget", action="store_true", help="exit 1 when the idle baseline exceeds the budget"
    )
    cost.add_argument(
        "--max-increase", type=float, metavar="USD", help="with --compare: exit 1 when the monthly increase exceeds USD"
    )
    cost.add_argument(
        "--refresh-region", action="append", metavar="REGION", help="refresh-prices: only this region (repeatable)"
    )
    cost.add_argument(
        "--output", metavar="FILE", help="refresh-prices: write the table here instead of infra/cost/prices.json"
    )
    cost.set_defaults(handler=cmd_cost)


def _add_cost_comment_command(commands: Subcommands) -> None:
    """`mlops cost-comment`: the pull-request cost comment over two directories of inventories."""
    comment = commands.add_parser(
        "cost-comment",
        help="the pull-request cost comment for every stack inventory in HEAD_DIR, diffed against BASE_DIR",
        description="Reads <stack>.json inventories (or `pulumi preview --json` files) from both directories and "
        "prints "
        "the markdown comment: the total monthly change first, then one collapsible table per stack.",
    )
    comment.add_argument("base_dir")
    comment.add_argument("head_dir")
    comment.add_argument("--output", metavar="FILE", help="write the markdown here instead of printing it")
    comment.set_defaults(handler=cmd_cost_comment)


def _add_check_command(commands: Subcommands) -> None:
    """`mlops check`: the rule pack over a stack."""
    check = commands.add_parser(
        "check",
        help="run the security and reliability rules over a stack; exit 1 on any unwaived finding",
        description="Every rule has a stable ID, a severity and a fix; a stack waives a rule for one named "
        "resource with a "
        "reason under `mlops-platform:waivers`. The same rules run in `pulumi preview --policy-pack policy`.",
    )
    _add_source_arguments(check)
    check.add_argument("--format", choices=["table", "json"], default="table")
    check.add_argument("--list-rules", action="store_true", help="print every rule with its ID, severity and fix")
    check.set_defaults(handler=cmd_check)


def _add_render_command(commands: Subcommands) -> None:
    """`mlops render`: every Kubernetes object as validated YAML."""
    render = commands.add_parser(
        "render",
        help="write every Kubernetes object the stack declares as YAML, "
        "validated against the cluster version's schemas",
    )
    _add_source_arguments(render)
    render.add_argument("--out", metavar="DIR", help="write one YAML file per object here")
    render.add_argument(
        "--kubernetes-version", help="validate against this version (default: the stack's cluster.kubernetesVersion)"
    )
    render.set_defaults(handler=cmd_render)


def _add_plan_command(commands: Subcommands) -> None:
    """`mlops plan`: the create (or destroy) order in waves."""
    plan = commands.add_parser(
        "plan",
        help="the order `pulumi up` creates a stack's resources in (or `pulumi destroy` deletes them in, with "
        "--destroy)",
        description="Waves of the inventory's dependency graph (dependencies, parents, providers), as the engine "
        "orders "
        "them: each wave needs only earlier ones. Works on a real `pulumi preview --json` too.",
    )
    _add_source_arguments(plan)
    plan.add_argument("--destroy", action="store_true", help="the order of `pulumi destroy` instead")
    plan.set_defaults(handler=cmd_plan)


def _add_local_command(commands: Subcommands) -> None:
    """`mlops local`: the service plane on loopback."""
    local = commands.add_parser(
        "local",
        help="run the service plane on this machine (loopback only): S3, tracking server, example model",
        description="Starts a moto S3 endpoint and the tracking server (basic auth, generated admin password) on free "
        "127.0.0.1 ports, trains the example model, registers it and points `champion` at it, prints the URLs, and "
        "keeps running until Ctrl-C (or stops at once with --once).",
    )
    local.add_argument(
        "--workdir", default="build/local", help="databases, logs and the admin password (default: build/local)"
    )
    local.add_argument(
        "--once", action="store_true", help="stop everything after the demo instead of waiting for Ctrl-C"
    )
    local.add_argument(
        "--retrain-demo",
        action="store_true",
        help="then run the retraining loop: newer data, shifted traffic, drift alert, retrain, gate, model swap "
        "(README: Training)",
    )
    local.add_argument(
        "--scrape-interval",
        type=_duration,
        default="5s",
        metavar="DURATION",
        help="Prometheus scrape and rule evaluation interval (default: 5s)",
    )
    local.add_argument(
        "--drift-interval",
        type=_positive_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how often the model server scores drift (default: 15)",
    )
    local.add_argument(
        "--drift-for",
        type=_duration,
        default="30m",
        metavar="DURATION",
        help="how long PSI stays above the threshold before DataDriftHigh fires (default: 30m, the platform's)",
    )
    local.set_defaults(handler=cmd_local)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops",
        description="The MLOps platform's command line: preview a stack offline and review it before `pulumi up`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_preview_command(commands)
    _add_cost_command(commands)
    _add_cost_comment_command(commands)
    _add_check_command(commands)
    _add_render_command(commands)
    _add_plan_command(commands)
    _add_local_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was declared; fix the stack file and run again", file=sys.stderr)
        return EXIT_USAGE
    except (StackFileError, InventoryError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
