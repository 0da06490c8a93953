"""CrossGuard policy pack: `pulumi preview --stack prod --policy-pack policy`.

Every rule of infra/checks/rules.py becomes a mandatory stack policy; waivers come from the
stack file, as for `python -m infra.cli check`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulumi_policy import EnforcementLevel, PolicyPack, StackValidationPolicy  # noqa: E402

from infra.checks.crossguard import stack_policies  # noqa: E402

PolicyPack(
    name="mlops-platform",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[StackValidationPolicy(**kwargs) for kwargs in stack_policies()],
)
