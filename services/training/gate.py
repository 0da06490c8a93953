"""The evaluation gate: promote a new version only when it is measurably better.

Both the new version (challenger) and the current `champion` are scored on the same held-out
rows of the same data version. The challenger is promoted only when the data checks passed,
it scored without an error, and it beats the champion by at least `min_improvement` (a
fraction of the champion's score: 0.01 = 1 % better). A first version (no champion yet) is
promoted when it scores. A champion that cannot be scored on the new data (its columns are
gone, say) blocks promotion: the gate cannot compare, so a person decides (README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROMOTED = "promoted"
PROMOTED_TO_CANARY = "promoted-to-canary"
REJECTED = "rejected"


@dataclass(frozen=True)
class Score:
    version: str | None
    """Registered version scored (None for a challenger not registered yet)."""
    value: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str
    """PROMOTED, PROMOTED_TO_CANARY or REJECTED."""
    reason: str
    improvement: float | None = None
    """Relative improvement of the challenger over the champion (positive = better)."""


def improvement(challenger: float, champion: float, *, greater_is_better: bool) -> float:
    """How much better the challenger is, as a fraction of the champion's score (absolute when it is 0)."""
    gain = challenger - champion if greater_is_better else champion - challenger
    return gain / abs(champion) if champion else gain


def decide(
    challenger: Score,
    champion: Score | None,
    *,
    metric: str,
    greater_is_better: bool,
    min_improvement: float,
    checks_passed: bool = True,
    canary_alias: str | None = None,
) -> Decision:
    """The gate's decision (pure: the runner records and applies it)."""
    if min_improvement < 0:
        raise ValueError(f"min_improvement: got {min_improvement}; allowed: 0 or more (a fraction, 0.01 = 1 %)")
    outcome = PROMOTED_TO_CANARY if canary_alias else PROMOTED
    if not checks_passed:
        return Decision(False, REJECTED, "the data checks failed")
    if not challenger.ok:
        return Decision(
            False,
            REJECTED,
            f"the new version could not be scored on the held-out data: {challenger.error or 'no finite score'}",
        )
    if champion is None:
        return Decision(True, outcome, f"first version: no champion to compare with ({metric} {challenger.value:.4g})")
    if not champion.ok:
        return Decision(
            False,
            REJECTED,
            f"champion version {champion.version} could not be scored on this data ({champion.error}); "
            "compare by hand and set the alias if the new version should serve",
        )
    assert challenger.value is not None and champion.value is not None  # both `ok`
    gain = improvement(challenger.value, champion.value, greater_is_better=greater_is_better)
    versus = (
        f"{metric} {challenger.value:.4g} vs champion {champion.value:.4g} (version {champion.version}), {gain:+.2%}"
    )
    if gain >= min_improvement:
        return Decision(True, outcome, f"{versus}: at least the required {min_improvement:.2%} better", gain)
    return Decision(False, REJECTED, f"{versus}: not the required {min_improvement:.2%} better", gain)
