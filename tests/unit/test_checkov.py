"""checkov's Kubernetes checks, run for real on every stack's rendered manifests (issue 13 item 9).

checkov lives in `.venv-checkov` (scripts/setup.sh installs it from requirements-checkov.lock):
its dependency tree conflicts with the project lock. It runs offline: `--skip-download` and
`BC_SKIP_MAPPING` keep it from fetching the Prisma Cloud guidelines, and
`CKV_SKIP_PACKAGE_UPDATE_CHECK` from asking PyPI for a newer version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stackfile import REPO_ROOT

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
VERSION = "3.3.30"
OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


def render(stack_args: list[str], out: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "render", *stack_args, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "0 problem(s)" in result.stdout, result.stdout + result.stderr


def checkov(directory: Path) -> dict:
    """checkov's JSON report of the Kubernetes framework over `directory`."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run scripts/setup.sh (it installs requirements-checkov.lock there)"
    result = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--compact", "-o", "json", "--skip-download"],
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: some check failed
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", report
    return report


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_checkov_finds_nothing_in_the_rendered_manifests(tmp_path, stack):
    render(["--stack", stack], tmp_path)
    report = checkov(tmp_path)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0, failed
    assert summary["checkov_version"] == VERSION and summary["parsing_errors"] == 0
    assert summary["resource_count"] > 20 and summary["passed"] > 300  # it did look at the stack's objects
    assert summary["skipped"] == 0  # nothing in the shipped stacks needs a suppression


def write_manifests(settings: dict, out: Path) -> None:
    """What `mlops render --out` writes, for a stack built from explicit settings (no stack file): each object
    validated against the cluster's Kubernetes version, one YAML file each."""
    import yaml

    from infra.manifests import manifests, validate
    from infra.settings import load_settings
    from tests.unit.builders import REGION, program_inventory

    version = load_settings(settings, stack="retrain", region=REGION).cluster.kubernetes_version
    out.mkdir(parents=True)
    problems: dict[str, list[str]] = {}
    for manifest in manifests(program_inventory("retrain", settings)):
        meta = manifest["metadata"]
        name = "-".join(filter(None, (manifest["kind"].lower(), meta.get("namespace"), meta["name"])))
        if errors := validate(manifest, version):
            problems[name] = errors
        (out / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    assert problems == {}
    assert any(path.name == "cronjob-training-diabetes.yaml" for path in out.iterdir())


@pytest.fixture(scope="module")
def pipeline_stack_report(tmp_path_factory) -> dict:
    """checkov's report on a dev-profile stack with a training pipeline that retrains on its endpoint's drift: the
    training namespace's CronJob, Secret and the drift receiver are rendered only when a pipeline is declared."""
    from tests.unit.builders import RETRAINING_SETTINGS, profile_settings

    out = tmp_path_factory.mktemp("pipeline-stack") / "manifests"
    write_manifests(profile_settings("dev", **RETRAINING_SETTINGS), out)
    return checkov(out)


def test_checkov_finds_nothing_in_a_stack_with_a_training_pipeline(pipeline_stack_report):
    """The pipeline's tracking password is a read-only Secret volume, not an environment variable (CKV_K8S_35)."""
    results, summary = pipeline_stack_report["results"], pipeline_stack_report["summary"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert failed == [] and summary["failed"] == 0, failed
    checked = {(c["check_id"], c["resource"]) for c in results["passed_checks"]}
    assert ("CKV_K8S_35", "CronJob.training.diabetes") in checked  # secrets as files, not env vars
    assert ("CKV_K8S_22", "CronJob.training.diabetes") in checked  # read-only root file system
    assert summary["parsing_errors"] == 0


def test_a_workload_that_calls_the_kubernetes_api_is_skipped_with_its_reason(pipeline_stack_report):
    """The drift receiver keeps its token (it creates Jobs): checkov reads kubernetes_api_client's
    annotation as a suppression of CKV_K8S_38 with the reason, on that Deployment only."""
    results = pipeline_stack_report["results"]
    skipped = [(c["check_id"], c["resource"], c["check_result"]["suppress_comment"]) for c in results["skipped_checks"]]
    assert skipped == [
        (
            "CKV_K8S_38",
            "Deployment.training.retrain-receiver",
            "creates the pipeline Jobs on drift; its Role allows creating Jobs in training and nothing else",
        )
    ]
    assert not [c for c in results["failed_checks"] if c["check_id"] == "CKV_K8S_38"]


def test_the_lock_pins_the_version_the_tests_expect():
    lock = (REPO_ROOT / "requirements-checkov.lock").read_text().splitlines()
    assert f"checkov=={VERSION}" in lock
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
