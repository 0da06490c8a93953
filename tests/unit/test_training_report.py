"""The model report's comment for the cases a pull request meets."""

from __future__ import annotations

from infra.model_report import COMMENT_MARKER, render

HEAD = {
    "metric": "rmse",
    "version": None,
    "challenger": {"version": None, "value": 53.21, "error": None},
    "champion": None,
    "data": {"md5": "a" * 32, "path": "examples/data/diabetes.csv"},
    "decision": {
        "promote": True,
        "outcome": "promoted",
        "reason": "first version: no champion to compare with (rmse 53.21)",
    },
}


def test_a_base_without_the_pipeline_has_no_champion():
    comment = render(HEAD, None, base_ref="origin/main")
    assert comment.startswith(COMMENT_MARKER)
    assert "| held-out rmse | 53.21 | none |" in comment
    assert f"| data version (DVC md5) | `{'a' * 32}` | (no champion on the base branch) |" in comment
    assert "**Gate:** would promote (promoted): first version" in comment


def test_a_failed_run_shows_its_output():
    comment = render(
        None, None, base_ref="origin/main", failure="data checks failed on 442 rows: 1 problem(s) in column(s) bmi"
    )
    assert "did not finish" in comment and "data checks failed on 442 rows" in comment
