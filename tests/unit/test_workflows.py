"""The GitHub workflows (issue 16 items 1-3, Done when): valid against GitHub's workflow schema, every
action pinned to a full commit SHA of a known release and given only inputs that release declares, the
README's test command with apt and pip caches, one review comment, images for the node pools'
architectures, and `pulumi up` per environment, one at a time per stack."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from infra.cost.report import COMMENT_MARKER as COST_MARKER
from infra.review import COMMENT_MARKER
from infra.stackfile import REPO_ROOT, stack_names

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
ACTIONS = REPO_ROOT / "components" / "upstream" / "github-actions"
PINS: dict[str, dict[str, str]] = json.loads((ACTIONS / "pins.json").read_text())
FILES = sorted(WORKFLOWS.glob("*.yml"))
SHA_PIN = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+)(?P<path>/[\w./-]+)?@(?P<sha>[0-9a-f]{40})$")


def load(name: str) -> dict[str, Any]:
    # PyYAML reads the key `on:` as True (YAML 1.1); put it back
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def uses_lines(text: str) -> list[tuple[str, str]]:
    """(`uses:` value, trailing comment) of every line that uses an action or a reusable workflow."""
    found = []
    for line in text.splitlines():
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)\s*(?:#\s*(.*))?$", line)
        if match:
            found.append((match.group(1), (match.group(2) or "").strip()))
    return found


def pin_problems(text: str) -> list[str]:
    """Every `uses:` must be a local reusable workflow, or `owner/repo@<full SHA> # <tag>` with the SHA that
    tag points to upstream (components/upstream/github-actions/pins.json)."""
    problems = []
    for value, comment in uses_lines(text):
        if value.startswith("./"):
            continue
        match = SHA_PIN.match(value)
        if not match:
            problems.append(f"{value}: not pinned to a full commit SHA")
            continue
        pin = PINS.get(match["action"])
        if pin is None:
            problems.append(f"{value}: {match['action']} has no upstream copy in components/upstream/github-actions")
        elif (match["sha"], comment) != (pin["commit"], pin["tag"]):
            problems.append(f"{value} # {comment}: pins.json has {pin['tag']} at {pin['commit']}")
    return problems


def action_inputs(action: str) -> tuple[set[str], set[str]]:
    """(all inputs, required inputs without a default) of the pinned action, from its upstream action.yml."""
    declared = yaml.safe_load((ACTIONS / PINS[action]["file"]).read_text()).get("inputs") or {}
    required = {
        name for name, spec in declared.items() if (spec or {}).get("required") and "default" not in (spec or {})
    }
    return set(declared), required


# -- Done when: schema, pins ------------------------------------------------------------------------------
def test_the_workflows_are_the_ones_the_readme_describes():
    assert [f.name for f in FILES] == ["ci.yml", "deploy-stack.yml", "deploy.yml", "images.yml", "model-report.yml"]
    assert not (WORKFLOWS / "cost.yml").exists()  # merged into ci.yml's review job


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_workflow_is_valid_against_githubs_workflow_schema():
    """SchemaStore's github-workflow schema as check-jsonschema 0.39.0 (requirements.lock) vendors it."""
    from importlib.metadata import version

    assert version("check-jsonschema") == "0.39.0"
    result = check_jsonschema(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text((WORKFLOWS / "ci.yml").read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1 and "runs_on" in result.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_the_commit_of_a_release(path):
    assert pin_problems(path.read_text()) == []


def test_the_pin_check_rejects_tags_branches_and_unknown_commits():
    text = "\n".join(
        [
            "      - uses: actions/checkout@v4",
            "      - uses: actions/cache@main",
            "      - uses: actions/checkout@0123456789abcdef0123456789abcdef01234567 # v7.0.1",
            "      - uses: someone/else@0123456789abcdef0123456789abcdef01234567 # v1",
            "    uses: ./.github/workflows/images.yml",
        ]
    )
    assert pin_problems(text) == [
        "actions/checkout@v4: not pinned to a full commit SHA",
        "actions/cache@main: not pinned to a full commit SHA",
        "actions/checkout@0123456789abcdef0123456789abcdef01234567 # v7.0.1: pins.json has v7.0.1 at "
        f"{PINS['actions/checkout']['commit']}",
        "someone/else@0123456789abcdef0123456789abcdef01234567: someone/else has no upstream copy in "
        "components/upstream/github-actions",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_step_gives_an_action_only_inputs_it_declares(path):
    for job_id, step in steps(load(path.name)):
        if "uses" not in step:
            continue
        action = SHA_PIN.match(step["uses"])["action"]
        declared, required = action_inputs(action)
        given = set(step.get("with") or {})
        assert given <= declared, f"{path.name} {job_id}: {action} has no input {sorted(given - declared)}"
        assert required <= given, f"{path.name} {job_id}: {action} needs {sorted(required - given)}"


def test_the_pinned_commits_are_the_copies_upstream():
    for action, pin in PINS.items():
        assert re.fullmatch(r"[0-9a-f]{40}", pin["commit"]) and (ACTIONS / pin["file"]).is_file(), action
        assert pin["file"].startswith(action.replace("/", "__") + "@" + pin["tag"] + ".")


def test_the_pulumi_cli_matches_the_sdk_in_the_lock():
    lock = (REPO_ROOT / "requirements.lock").read_text()
    sdk = re.search(r"^pulumi==(\S+)$", lock, re.MULTILINE)[1]
    versions = {
        step["with"]["pulumi-version"]
        for f in FILES
        for _, step in steps(load(f.name))
        if step.get("uses", "").startswith("pulumi/actions@")
    }
    assert versions == {sdk}


# -- item 1: tests and the review comment -------------------------------------------------------------------
def test_ci_runs_the_readmes_test_command_on_pull_requests_and_main():
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"^make test\s+# .*what CI runs", readme, re.MULTILINE)
    ci = load("ci.yml")
    assert "pull_request" in ci["on"] and ci["on"]["push"]["branches"] == ["main"]
    test = ci["jobs"]["test"]
    assert [s["run"] for s in test["steps"] if s.get("run", "").strip() == "make test"] == ["make test"]
    assert (
        test["container"].startswith("python:3.11") and "bookworm" in test["container"]
    )  # Debian, root: setup installs apt packages


def test_apt_and_pip_caches_are_keyed_on_what_they_hold():
    for job in ("test", "review"):
        caches = {
            s["with"]["path"]: s["with"]["key"]
            for s in load("ci.yml")["jobs"][job]["steps"]
            if s.get("uses", "").startswith("actions/cache@")
        }
        assert caches == {
            "/var/cache/apt/archives/*.deb": "apt-bookworm-${{ hashFiles('scripts/system-packages.txt') }}",
            "~/.cache/pip": "pip-py3.11-${{ hashFiles('requirements.lock', 'requirements-checkov.lock', "
            "'pyproject.toml') }}",
        }
        runs = " ".join(s.get("run", "") for s in load("ci.yml")["jobs"][job]["steps"])
        assert "rm -f /etc/apt/apt.conf.d/docker-clean" in runs  # else Debian's image deletes every .deb it installs


def test_one_review_comment_found_by_its_marker_and_the_budget_gate_kept():
    ci = load("ci.yml")
    review = ci["jobs"]["review"]
    assert review["if"] == "github.event_name == 'pull_request'"
    run = " ".join(s.get("run", "") for s in review["steps"])
    assert 'scripts/pr-review.sh "origin/$BASE_REF" build/review' in run
    assert "--fail-over-budget" in run and "build/review/exit-code" in run
    (script,) = [s["with"]["script"] for s in review["steps"] if s.get("uses", "").startswith("actions/github-script@")]
    assert f"'{COMMENT_MARKER}'" in script and f"'{COST_MARKER}'" in script  # edits the former cost comment too
    assert "updateComment" in script and script.count("createComment") == 1
    assert review["permissions"] == {"contents": "read", "pull-requests": "write", "id-token": "write"}
    assert ci["permissions"] == {"contents": "read"}


def test_real_previews_assume_the_preview_role_outside_any_environment():
    review = load("ci.yml")["jobs"]["review"]
    assert (
        "environment" not in review
    )  # a pull request's token says `pull_request`, which is what the preview role trusts
    (credentials,) = [
        s for s in review["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    ]
    assert credentials["if"] == "vars.USE_PULUMI_PREVIEW == 'true'"
    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"


# -- item 2: images -----------------------------------------------------------------------------------------
def test_images_are_built_for_the_architectures_the_node_pools_run(stack_inventories):
    architectures = set()
    for inventory in stack_inventories.values():
        for pool in inventory.of_type("kubernetes:karpenter.sh/v1:NodePool"):
            for requirement in pool.inputs["spec"]["template"]["spec"]["requirements"]:
                if requirement["key"] == "kubernetes.io/arch":
                    assert requirement["operator"] == "In"
                    architectures |= set(requirement["values"])
    from infra.settings import CPU_FAMILIES

    assert not any(
        family.endswith("g") for family in CPU_FAMILIES
    )  # no Graviton family for the system node group either
    (build,) = [s for _, s in steps(load("images.yml")) if s.get("uses", "").startswith("docker/build-push-action@")]
    assert set(build["with"]["platforms"].split(",")) == {f"linux/{a}" for a in architectures} == {"linux/amd64"}


def test_images_are_tagged_with_the_service_version_scanned_and_kept_as_scanned():
    images = load("images.yml")
    assert set(images["on"]) == {"pull_request", "workflow_call"}
    assert (
        images["jobs"]["versions"]["steps"][-1]["run"].strip()
        == 'echo "images=$(python -m infra.delivery images)" >> "$GITHUB_OUTPUT"'
    )
    build_job = images["jobs"]["build"]
    assert build_job["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.versions.outputs.images) }}"
    by_action = {s["uses"].split("@")[0]: s for s in build_job["steps"] if "uses" in s}
    build = by_action["docker/build-push-action"]["with"]
    assert build["tags"] == "${{ matrix.service }}:${{ matrix.version }}"
    assert build["file"] == "services/${{ matrix.service }}/Dockerfile" and build["context"] == "."
    assert build["outputs"] == "type=oci,dest=build/images/${{ matrix.service }}/oci,tar=false" and "push" not in build
    assert (build["provenance"], build["sbom"]) == (
        False,
        False,
    )  # one manifest per layout (infra.delivery.layout_digest)
    scan = by_action["aquasecurity/trivy-action"]["with"]
    assert scan["input"] == build["outputs"].split("dest=")[1].split(",")[0]  # scans the very layout that is pushed
    assert (scan["severity"], scan["exit-code"], scan["trivyignores"], scan["ignore-unfixed"]) == (
        "CRITICAL",
        "1",
        ".trivyignore",
        False,
    )
    assert re.fullmatch(r"v\d+\.\d+\.\d+", scan["version"])
    names = [s.get("uses", "").split("@")[0] or s.get("name") for s in build_job["steps"]]
    assert names.index("aquasecurity/trivy-action") < names.index(
        "actions/upload-artifact"
    )  # nothing unscanned leaves the job


def trivyignore_problems(text: str, today: datetime.date) -> list[str]:
    problems, previous = [], ""
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            match = re.fullmatch(r"(\S+) exp:(\d{4}-\d{2}-\d{2})", entry)
            if not previous.startswith("#") or len(previous.lstrip("# ").strip()) < 15:
                problems.append(f"{entry}: no reason on the line above")
            if not match:
                problems.append(f"{entry}: no exp:YYYY-MM-DD")
            elif not today < datetime.date.fromisoformat(match[2]) <= today + datetime.timedelta(days=90):
                problems.append(f"{entry}: expiry not within the next 90 days")
        previous = entry
    return problems


def test_the_trivy_ignore_file_states_its_policy_and_every_entry_has_a_reason_and_an_expiry():
    text = (REPO_ROOT / ".trivyignore").read_text()
    assert "# Policy:" in text
    assert trivyignore_problems(text, datetime.date.today()) == []
    today = datetime.date(2026, 11, 29)
    ignore_file = (
        "CVE-2026-1 exp:2026-12-31\n# a\nCVE-2026-2\n# no fix upstream yet; not reachable (a, "
        "2026-11-29)\nCVE-2026-3 exp:2028-01-01\n"
    )
    assert trivyignore_problems(ignore_file, today) == [
        "CVE-2026-1 exp:2026-12-31: no reason on the line above",
        "CVE-2026-2: no reason on the line above",
        "CVE-2026-2: no exp:YYYY-MM-DD",
        "CVE-2026-3 exp:2028-01-01: expiry not within the next 90 days",
    ]


# -- item 3: deploy ------------------------------------------------------------------------------------------
def test_each_stack_deploys_in_its_environment_one_run_at_a_time():
    job = load("deploy-stack.yml")["jobs"]["up"]
    assert job["environment"] == "${{ inputs.stack }}"
    assert job["concurrency"] == {"group": "pulumi-${{ inputs.stack }}", "cancel-in-progress": False}
    by_action = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
    assert by_action["pulumi/actions"]["with"]["command"] == "up"
    credentials = by_action["aws-actions/configure-aws-credentials"]["with"]
    assert credentials["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert (
        credentials["role-duration-seconds"] == "${{ vars.AWS_SESSION_SECONDS || 3600 }}"
    )  # 3600: the roles' default maxSessionHours
    assert by_action["aws-actions/amazon-ecr-login"]["id"] == "ecr"
    assert any(s.get("env", {}).get("REGISTRY") == "${{ steps.ecr.outputs.registry }}" for s in job["steps"])
    names = [s.get("uses", "").split("@")[0] or s.get("name") for s in job["steps"]]
    push = next(n for n in names if n.startswith("Push the scanned images"))
    assert names.index("aws-actions/amazon-ecr-login") < names.index(push) < names.index("pulumi/actions")
    push_run = next(s["run"] for s in job["steps"] if s.get("name") == push)
    assert '-m infra.delivery push --stack "$STACK" --images build/images --registry "$REGISTRY"' in push_run
    assert load("deploy-stack.yml")["permissions"] == {"contents": "read", "id-token": "write"}


def test_dev_deploys_on_merge_then_staging_then_prod_behind_their_environments():
    deploy = load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"] and "pull_request" not in deploy["on"]
    jobs = deploy["jobs"]
    assert jobs["images"]["uses"] == "./.github/workflows/images.yml"
    order = [
        ("dev", ["plan", "images"]),
        ("staging", ["plan", "images", "dev"]),
        ("prod", ["plan", "images", "staging"]),
    ]
    for stack, needs in order:
        job = jobs[stack]
        assert (
            job["uses"] == "./.github/workflows/deploy-stack.yml"
            and job["with"]["stack"] == stack
            and job["needs"] == needs
        )
        assert f"contains(fromJSON(needs.plan.outputs.stacks), '{stack}')" in job["if"]
        assert job["secrets"] == "inherit"
    assert [stack for stack, _ in order] == stack_names(REPO_ROOT)
    assert deploy["on"]["workflow_dispatch"]["inputs"]["stack"]["options"] == stack_names(REPO_ROOT)
    assert "python -m infra.delivery stacks" in jobs["plan"]["steps"][-1]["run"]
    record = jobs["record"]
    assert record["permissions"] == {"contents": "write", "pull-requests": "write"} and deploy["permissions"] == {
        "contents": "read"
    }
    (pr,) = [s for s in record["steps"] if s.get("uses", "").startswith("peter-evans/create-pull-request@")]
    assert pr["with"]["add-paths"] == "stacks/Pulumi.*.yaml"


def test_readme_delivery_section_names_what_a_fork_sets():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Delivery", 1)[1].split("\n## ", 1)[0]
    used = set()
    for path in FILES:
        used |= set(re.findall(r"\b(?:vars|secrets)\.([A-Z][A-Z0-9_]+)", path.read_text()))
    assert used and {name for name in used if f"`{name}`" not in section} == set()
    for heading in ("workflows", "first run", "prod is approved"):
        assert heading in section.lower(), heading
