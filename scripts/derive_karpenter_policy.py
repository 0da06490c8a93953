"""Derive Karpenter's controller policy subset from its getting-started CloudFormation template.

    python scripts/derive_karpenter_policy.py <karpenter-vX.Y.Z>/getting-started-cloudformation.yaml \
        components/upstream/karpenter-vX.Y.Z/controller-policy.json

The template (aws/karpenter-provider-aws, `website/content/en/<docs version>/getting-started/
getting-started-with-karpenter/cloudformation.yaml`, the one the getting-started guide of the pinned
version downloads) declares the controller's
permissions as five managed policies whose documents are `!Sub` JSON strings. This writes their
statements, grouped by policy and in template order, with the `${...}` placeholders left as they are;
`components/node_pools.py` substitutes them at deploy time, so the upstream file stays the single
source of the controller's permissions. Rerun it when bumping Karpenter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (`!Sub`, `!Ref`, `!GetAtt`) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    return loader.construct_sequence(node)


for _tag in ("!Sub", "!Ref", "!GetAtt"):
    _CloudFormationLoader.add_constructor(_tag, _intrinsic)


def controller_policies(template_text: str) -> dict[str, list[dict]]:
    """{managed policy's logical id: its statements} for every `AWS::IAM::ManagedPolicy` in the template."""
    template = yaml.load(template_text, Loader=_CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    return {
        name: json.loads(resource["Properties"]["PolicyDocument"])["Statement"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::ManagedPolicy"
    }


def main(source: str, target: str) -> None:
    policies = controller_policies(Path(source).read_text())
    Path(target).write_text(json.dumps(policies, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
