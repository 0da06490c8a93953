"""The platform's command line: ``python -m infra.cli <command>`` (installed as ``mlops``).

Commands read a stack's inventory, produced offline from its stack file (the real program
under Pulumi mocks: seconds, no credentials) or read from a file written by ``preview --json``
or by a real ``pulumi preview --json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from infra.inventory import Inventory, InventoryError
from infra.settings import CONFIG_NAMESPACE, PlatformSettings, SettingsError, load_settings
from infra.stackfile import StackConfig, StackFileError, load_stack_config, load_stack_file

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


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
    source.add_argument("--stack", default="dev", help="stack whose file stacks/Pulumi.<stack>.yaml is previewed offline (default: dev)")
    source.add_argument("--stack-file", metavar="FILE", help="preview any stack file (named Pulumi.<stack>.yaml), e.g. a proposed one")
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
    source = "offline preview (Pulumi mocks, no cloud calls)" if inventory.source == "offline" else "real `pulumi preview`"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops",
        description="The MLOps platform's command line: preview a stack offline and review it before `pulumi up`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    preview.add_argument("--json", metavar="FILE", help="write the inventory (every resource with type, name, parent, inputs) to FILE")
    preview.add_argument("--counts-only", action="store_true", help="print only the counts by type")
    preview.set_defaults(handler=cmd_preview)
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
