"""The delivery helpers the workflows run (issue 16 items 1-3): images and versions, which stacks a push
deploys, pushing a scanned image byte for byte to a real registry on loopback and recording its digest
where the program reads it, and the one review comment built by scripts/pr-review.sh."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from infra import delivery
from infra.delivery import (
    DeliveryError,
    Skopeo,
    images,
    layout_digest,
    push,
    record_digest,
    settings_of,
    stacks_to_deploy,
)
from infra.processes import LOOPBACK, free_port, start, wait_http
from infra.review import COMMENT_MARKER
from infra.settings import SettingsError
from infra.stackfile import REPO_ROOT

DIGEST_A = "sha256:" + "a" * 64


def pr_review(repo: Path, out: Path, *, timeout: int, **env: str) -> subprocess.CompletedProcess[str]:
    """`scripts/pr-review.sh HEAD <out>` in a scratch repository, as the workflow runs it."""
    return subprocess.run(
        ["bash", "scripts/pr-review.sh", "HEAD", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def scratch_repo(tmp_path: Path) -> Path:
    """A copy of the repository's tracked and untracked files (not ignored ones), as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# -- images and versions ------------------------------------------------------------------------------
def test_every_service_with_a_dockerfile_is_built_at_its_version():
    built = {i["service"]: i for i in images()}
    assert set(built) == {p.parent.name for p in (REPO_ROOT / "services").glob("*/Dockerfile")}
    assert (built["tracking"]["version"], built["tracking"]["setting"]) == ("3.17.2-1", "tracking.imageTag")
    assert (built["serving"]["version"], built["serving"]["setting"]) == ("0.1.0", "endpoints[].imageTag")
    from infra.profiles import profile_defaults

    for service in delivery.SERVICE_VERSIONS:  # what a stack runs: the documented build line says the same version
        assert delivery.dockerfile_version(REPO_ROOT, service) == built[service]["version"], service
        for profile in ("dev", "staging", "prod"):
            assert service in profile_defaults(profile)["registry"]["repositories"], (
                "each image a stack runs needs its repository"
            )


def test_an_image_no_setting_selects_takes_its_dockerfiles_version_and_one_without_stops_the_build(tmp_path):
    for service, line in (
        ("tracking", ""),
        ("serving", ""),
        ("scoring", "# docker build -f services/scoring/Dockerfile -t scoring:2.0.1 .\n"),
    ):
        (tmp_path / "services" / service).mkdir(parents=True)
        (tmp_path / "services" / service / "Dockerfile").write_text(line + "FROM scratch\n")
    assert {i["service"]: (i["version"], i["setting"]) for i in images(tmp_path)}["scoring"] == (
        "2.0.1",
        "services/scoring/Dockerfile",
    )
    (tmp_path / "services" / "scoring" / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(
        DeliveryError,
        match=r"services/scoring/Dockerfile has no version: name it in its build line \(`-t scoring:<version>`\)",
    ):
        images(tmp_path)


def test_images_command_prints_json_for_the_matrix():
    result = subprocess.run(
        [sys.executable, "-m", "infra.delivery", "images"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == images()


# -- which stacks a push to main deploys --------------------------------------------------------------
def test_stacks_a_push_deploys(tmp_path):
    repo = scratch_repo(tmp_path)
    first = git(repo, "rev-parse", "HEAD").strip()
    assert stacks_to_deploy(repo, "0" * 40, first) == ["dev", "staging", "prod"]  # a new branch: everything
    assert stacks_to_deploy(repo, "", first) == ["dev", "staging", "prod"]

    def commit(path: str, text: str) -> str:
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", path)
        return git(repo, "rev-parse", "HEAD").strip()

    readme = commit("README.md", "docs only\n")
    assert stacks_to_deploy(repo, first, readme) == []
    prod_file = repo / "stacks/Pulumi.prod.yaml"
    prod = commit("stacks/Pulumi.prod.yaml", prod_file.read_text() + "  mlops-platform:deletionProtection: true\n")
    assert stacks_to_deploy(repo, readme, prod) == ["prod"]
    record_digest(repo / "stacks/Pulumi.staging.yaml", "tracking", "3.17.2-1", DIGEST_A, repo)
    git(repo, "commit", "-qam", "digests")
    digests_only = git(repo, "rev-parse", "HEAD").strip()
    assert stacks_to_deploy(repo, prod, digests_only) == []  # read from the registry: up would change nothing
    code = commit("components/network.py", (repo / "components/network.py").read_text() + "\n")
    assert stacks_to_deploy(repo, digests_only, code) == ["dev", "staging", "prod"]


# -- recording a digest where the program reads it ----------------------------------------------------
@pytest.fixture()
def stack_copy(tmp_path) -> Path:
    (tmp_path / "stacks").mkdir()
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path)
    for stack in ("dev", "prod"):
        shutil.copy(REPO_ROOT / f"stacks/Pulumi.{stack}.yaml", tmp_path / "stacks")
    return tmp_path


def test_a_recorded_digest_is_what_the_settings_read_and_nothing_else_moves(stack_copy):
    path = stack_copy / "stacks/Pulumi.prod.yaml"
    before = path.read_text()
    assert record_digest(path, "tracking", "3.17.2-1", DIGEST_A, stack_copy) is True
    after = path.read_text()
    assert after.startswith(before)  # every line kept, comments and quoting included; the digests appended
    assert after[len(before) :] == f"  mlops-platform:imageDigests:\n    tracking:\n      3.17.2-1: {DIGEST_A}\n"
    assert settings_of(path, stack_copy).image_digests == {"tracking": {"3.17.2-1": DIGEST_A}}
    assert record_digest(path, "tracking", "3.17.2-1", DIGEST_A, stack_copy) is False
    assert (
        record_digest(path, "serving", "1.0", DIGEST_A, stack_copy) is True
    )  # a tag YAML would read as a number stays a string
    assert settings_of(path, stack_copy).image_digests["serving"] == {"1.0": DIGEST_A}


@pytest.mark.parametrize(
    "repository, digest, expected",
    [
        (
            "tracking",
            "sha256:abc",
            'mlops-platform:imageDigests.tracking.3.17.2-1: got "sha256:abc"; not an image digest',
        ),
        (
            "mlflow",
            DIGEST_A,
            'mlops-platform:imageDigests.mlflow: not a repository of this stack; allowed: "serving", "tracking", '
            '"drift"',
        ),
    ],
)
def test_a_bad_digest_is_refused_and_the_stack_file_is_unchanged(stack_copy, repository, digest, expected):
    path = stack_copy / "stacks/Pulumi.dev.yaml"
    before = path.read_text()
    with pytest.raises(SettingsError) as caught:
        record_digest(path, repository, "3.17.2-1", digest, stack_copy)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    assert path.read_text() == before


# -- pushing to a real registry -------------------------------------------------------------------------
def oci_layout(path: Path, content: bytes, tag: str) -> str:
    """A one-layer OCI image layout, as buildx's `type=oci,tar=false` writes one; returns its manifest digest."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("app/version.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = blob(gzip.compress(raw.getvalue(), mtime=0))
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]},
            }
        ).encode()
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
            }
        ).encode()
    )
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **manifest,
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )
    return manifest["digest"]


def built_image(images_dir: Path, service: str, version: str, content: bytes) -> str:
    (images_dir / service).mkdir(parents=True, exist_ok=True)
    (images_dir / service / "image.json").write_text(json.dumps({"service": service, "version": version}))
    return oci_layout(images_dir / service / "oci", content, version)


@pytest.fixture()
def registry(tmp_path):
    if not (shutil.which("skopeo") and shutil.which("docker-registry")):
        pytest.fail(
            "skopeo and docker-registry are needed (scripts/system-packages.txt; `make setup` installs them as root)"
        )
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        f"http:\n  addr: {LOOPBACK}:{port}\nlog:\n  level: warn\n"
    )
    server = start(
        "registry", ["docker-registry", "serve", str(config)], url=f"http://{LOOPBACK}:{port}", log_dir=tmp_path
    )
    try:
        wait_http(server, "/v2/", timeout=30)
        yield f"{LOOPBACK}:{port}"
    finally:
        server.stop()


def test_push_copies_the_scanned_bytes_reads_the_digest_back_and_records_it(tmp_path, stack_copy, registry):
    images_dir = tmp_path / "images"
    tracking = built_image(images_dir, "tracking", "3.17.2-1", b"tracking build 1")
    serving = built_image(images_dir, "serving", "0.1.0", b"serving build 1")
    skopeo = Skopeo(tls_verify=False)
    results = push("dev", images_dir, registry, skopeo, root=stack_copy)
    assert [(r["service"], r["pushed"], r["note"]) for r in results] == [
        ("serving", True, "pushed"),
        ("tracking", True, "pushed"),
    ]
    assert (
        skopeo.digest(f"{registry}/mlops-dev/tracking:3.17.2-1") == tracking
    )  # the registry names it by the scanned digest
    assert skopeo.digest(f"{registry}/mlops-dev/serving:0.1.0") == serving
    assert skopeo.digest(f"{registry}/mlops-dev/serving:9.9.9") is None
    recorded = settings_of(stack_copy / "stacks/Pulumi.dev.yaml", stack_copy).image_digests
    assert recorded == {"tracking": {"3.17.2-1": tracking}, "serving": {"0.1.0": serving}}
    assert results[1]["reference"] == f"{registry}/mlops-dev/tracking:3.17.2-1@{tracking}"

    # a rebuild under the same tag: the registry keeps its image (immutable tags), and that is what stays recorded
    shutil.rmtree(images_dir / "tracking")
    rebuilt = built_image(images_dir, "tracking", "3.17.2-1", b"tracking build 2")
    again = {r["service"]: r for r in push("dev", images_dir, registry, skopeo, root=stack_copy)}
    assert (
        again["tracking"]["pushed"] is False
        and f"this build ({rebuilt}) was not pushed: bump the version" in again["tracking"]["note"]
    )
    assert again["serving"] == {
        **again["serving"],
        "pushed": False,
        "note": "already in the registry",
        "recorded": False,
    }
    assert skopeo.digest(f"{registry}/mlops-dev/tracking:3.17.2-1") == tracking
    assert settings_of(stack_copy / "stacks/Pulumi.dev.yaml", stack_copy).image_digests["tracking"] == {
        "3.17.2-1": tracking
    }


def test_push_skips_an_image_the_stack_has_no_repository_for(tmp_path, stack_copy, registry):
    images_dir = tmp_path / "images"
    built_image(images_dir, "training", "0.1.0", b"training")
    (result,) = push("dev", images_dir, registry, Skopeo(tls_verify=False), root=stack_copy)
    assert result == {
        "service": "training",
        "tag": "0.1.0",
        "pushed": False,
        "note": "stack dev has no training repository",
    }
    assert Skopeo(tls_verify=False).digest(f"{registry}/mlops-dev/training:0.1.0") is None


def test_a_layout_with_several_manifests_or_none_is_refused(tmp_path):
    oci_layout(tmp_path / "one", b"x", "1")
    index = json.loads((tmp_path / "one" / "index.json").read_text())
    index["manifests"] *= 2
    (tmp_path / "one" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DeliveryError, match="holds 2 manifests"):
        layout_digest(tmp_path / "one")
    with pytest.raises(DeliveryError, match="not an OCI image layout"):
        layout_digest(tmp_path / "missing")


def test_push_command_reports_an_unreachable_registry_in_one_line(tmp_path, stack_copy, monkeypatch):
    images_dir = tmp_path / "images"
    built_image(images_dir, "tracking", "3.17.2-1", b"x")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setattr(delivery, "REPO_ROOT", stack_copy)
    code = delivery.main(
        [
            "push",
            "--stack",
            "dev",
            "--images",
            str(images_dir),
            "--registry",
            f"{LOOPBACK}:{free_port()}",
            "--no-tls-verify",
        ]
    )
    assert code == delivery.EXIT_FAILED and not summary.exists()


# -- the one review comment -----------------------------------------------------------------------------
def test_pr_review_script_builds_one_comment_with_changes_findings_objects_and_cost(tmp_path):
    """The script the review job runs, end to end in a scratch repository: the dev stack moves to one NAT per AZ
    and puts a webhook in plain text (MLOPS-SEC-002)."""
    repo = scratch_repo(tmp_path)
    stack_file = repo / "stacks/Pulumi.dev.yaml"
    stack_file.write_text(
        stack_file.read_text() + "  mlops-platform:network:\n    natGateways: perAz\n"
        "  mlops-platform:alertSlackWebhook: https://hooks.slack.com/services/T0/B0/plain\n"
    )
    out = tmp_path / "review"
    result = pr_review(repo, out, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    comment = (out / "comment.md").read_text()
    assert comment.startswith(COMMENT_MARKER + "\n## Review of this change: ❌")
    # the second NAT gateway, its address and route; the webhook's secrets and the Alertmanager values that read them
    assert "| dev | ➕ 5 create, ✏️ 2 update | ❌ 1 | valid |" in comment
    assert (
        "| ➕ | `/mlops:network:Network:net/aws:ec2/natGateway:NatGateway:-nat-1` | `aws:ec2/natGateway:NatGateway` |"
        in comment
    )
    assert "| ✏️ | `/mlops:network:Network:net/aws:ec2/routeTable:RouteTable:-private-rt-1` |" in comment
    assert "**MLOPS-SEC-002** [high] `config:mlops-platform:alertSlackWebhook`" in comment
    assert "| prod |" not in comment and "### Cost" in comment and "will increase by" in comment
    assert "<!-- mlops-platform cost comment -->" not in comment  # one marker: the workflow finds this comment by it
    assert (out / "exit-code").read_text().strip() == "1"


def test_pr_review_of_a_change_that_touches_no_stack(tmp_path):
    repo = scratch_repo(tmp_path)
    (repo / "README.md").write_text("docs\n")
    out = tmp_path / "review"
    result = pr_review(repo, out, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "comment.md").read_text() == f"{COMMENT_MARKER}\nNo stack is affected by this change.\n"
    assert (out / "exit-code").read_text().strip() == "0"


def test_a_real_preview_shows_the_engines_own_operations():
    """With USE_PULUMI_PREVIEW the inventories are `pulumi preview --json`: the comment shows its steps, not a diff."""
    from infra.inventory import Inventory
    from infra.review import StackReview, render_comment, resource_changes

    head = Inventory.read(REPO_ROOT / "tests/fixtures/pulumi-preview-dev.json")
    changes = resource_changes(None, head)
    assert changes == [
        ("create", "/mlops:storage:Storage:storage", "mlops:storage:Storage"),
        ("create", "/mlops:storage:Storage:storage/aws:s3/bucket:Bucket:-artifacts", "aws:s3/bucket:Bucket"),
        ("update", "/mlops:storage:Storage:storage/aws:kms/key:Key:-key", "aws:kms/key:Key"),
    ]
    comment = render_comment(
        [StackReview("dev", changes, source=head.source)], "<!-- mlops-platform cost comment -->\ncost\n"
    )
    assert "from the real `pulumi preview`" in comment and "| dev | ➕ 2 create, ✏️ 1 update | 0 | valid |" in comment
    assert comment.count("<!--") == 1 and comment.endswith("### Cost\n\ncost\n")


def test_pr_review_with_real_previews_runs_pulumi_in_both_trees_with_the_programs_interpreter(tmp_path):
    """PREVIEW=pulumi (USE_PULUMI_PREVIEW): `pulumi preview --json` runs in the head and in the base worktree, each
    needing the .venv Pulumi.yaml names; a stand-in `pulumi` refuses to run without it, then prints a real preview."""
    repo = scratch_repo(tmp_path)
    (repo / ".venv").symlink_to(Path(sys.executable).resolve().parents[1])
    stack_file = repo / "stacks/Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  mlops-platform:network:\n    natGateways: perAz\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(
        f'#!/bin/sh\n[ -x .venv/bin/python ] || {{ echo "no .venv in $PWD" >&2; exit 1; }}\n'
        f'echo "$PWD $*" >> {tmp_path / "calls"}\ncat {REPO_ROOT / "tests/fixtures/pulumi-preview-dev.json"}\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "review"
    result = pr_review(repo, out, timeout=300, PREVIEW="pulumi", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr + result.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert (
        len(calls) == 2
        and all(c.endswith("preview --stack dev --json") for c in calls)
        and any(c.startswith(str(repo) + " ") for c in calls)
    )
    comment = (out / "comment.md").read_text()
    assert "What changes comes from the real `pulumi preview`." in comment
    assert (
        "| ➕ | `/mlops:storage:Storage:storage/aws:s3/bucket:Bucket:-artifacts` | `aws:s3/bucket:Bucket` |" in comment
    )
