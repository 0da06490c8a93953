"""The pull-request model report end to end: the base revision (a Git worktree of HEAD) trained as the
champion, this checkout as the challenger, both on a sample, scored on the same held-out rows; the comment."""

from __future__ import annotations

import json
import subprocess
import sys

from infra.stackfile import REPO_ROOT


def test_the_report_compares_this_checkout_with_the_base_revision(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.model_report",
            "--base",
            "HEAD",
            "--out",
            str(tmp_path),
            "--sample-fraction",
            "0.6",
            "--data-command",
            "python -m examples.diabetes examples/data/diabetes.csv",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (tmp_path / "head.log").read_text() if (tmp_path / "head.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    comment = (tmp_path / "comment.md").read_text()
    head, base = json.loads((tmp_path / "head.json").read_text()), json.loads((tmp_path / "base.json").read_text())
    assert comment.startswith("<!-- mlops-platform model report -->\n## Model report")
    assert head["version"] is None and base["version"] == "1"  # the challenger is never registered
    assert head["champion"]["version"] == "1" and head["champion"]["value"] > 0
    assert f"| held-out rmse | {head['challenger']['value']:.4g} | {head['champion']['value']:.4g} |" in comment
    assert (
        "| data version (DVC md5) | `22ffb1078d60c79ef301faa4e94e88e7` | `22ffb1078d60c79ef301faa4e94e88e7` |"
        in comment
    )
    assert "**Gate:** would not promote (rejected)" in comment  # the same code on the same data is not 1 % better
    assert not subprocess.run(["git", "worktree", "list"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.count(
        "model-report-"
    )
