"""The evaluation gate's decision: better by the margin, or nothing moves."""

from __future__ import annotations

import pytest

from services.training.gate import PROMOTED, PROMOTED_TO_CANARY, REJECTED, Score, decide, improvement


def gate(challenger: Score, champion: Score | None, **kwargs):
    return decide(
        challenger,
        champion,
        metric="rmse",
        greater_is_better=kwargs.pop("greater_is_better", False),
        min_improvement=kwargs.pop("min_improvement", 0.01),
        **kwargs,
    )


def test_better_by_the_margin_is_promoted():
    decision = gate(Score(None, 50.0), Score("3", 55.0))
    assert decision.promote and decision.outcome == PROMOTED
    assert decision.improvement == pytest.approx(5 / 55)
    assert "version 3" in decision.reason


def test_better_but_not_by_the_margin_is_rejected():
    decision = gate(Score(None, 54.9), Score("3", 55.0))
    assert not decision.promote and decision.outcome == REJECTED
    assert "not the required 1.00% better" in decision.reason


def test_worse_is_rejected():
    assert not gate(Score(None, 70.0), Score("1", 55.0)).promote


def test_greater_is_better_metrics_compare_the_other_way():
    assert gate(Score(None, 0.9), Score("1", 0.8), greater_is_better=True).promote
    assert not gate(Score(None, 0.8), Score("1", 0.9), greater_is_better=True).promote


def test_a_first_version_is_promoted_and_a_canary_gets_it_first():
    assert gate(Score(None, 55.0), None).outcome == PROMOTED
    assert gate(Score(None, 55.0), None, canary_alias="canary").outcome == PROMOTED_TO_CANARY


def test_an_evaluation_error_or_failed_checks_block_promotion():
    assert not gate(Score(None, error="ValueError: shape"), Score("1", 55.0)).promote
    assert not gate(Score(None, float("nan")), None).promote
    assert not gate(Score(None, 10.0), Score("1", 55.0), checks_passed=False).promote


def test_a_champion_that_cannot_be_scored_blocks_promotion():
    decision = gate(Score(None, 10.0), Score("4", error="KeyError: 'bmi'"))
    assert not decision.promote and "champion version 4 could not be scored" in decision.reason


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="min_improvement: got -0.1"):
        gate(Score(None, 1.0), None, min_improvement=-0.1)


def test_improvement_against_a_zero_score_is_absolute():
    assert improvement(0.5, 0.0, greater_is_better=True) == 0.5
