"""The model report of a pull request: the PR's training code and data against the base branch's.

`python -m infra.model_report --base origin/main --out build/model-report` starts a throw-away
tracking server (moto S3, MLflow with auth, as `make local` does), trains the base revision's
pipeline on a sample of its data version in a Git worktree and makes it the champion, then runs
the PR's pipeline on a sample of its data version with promotion off: the runner scores both on
the same held-out rows and the gate decides, as it would on the cluster. `comment.md` holds the
comment the workflow posts (.github/workflows/model-report.yml): both scores, the improvement,
the gate's decision and the data version (DVC hash and path) each side trained on.

Data comes as it does for a run: by the `.dvc` file's hash from the workspace file (the
`--data-command` writes it, e.g. the example's generator) or the DVC remote (`--dvc-remote`,
with credentials that may read it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from infra.stackfile import REPO_ROOT

COMMENT_MARKER = "<!-- mlops-platform model report -->"


def run_pipeline(tree: Path, env: dict[str, str], data_command: str | None) -> tuple[int, str]:
    """Prepare the data and run the runner in `tree` (a checkout); returns (exit code, output)."""
    output = ""
    if data_command:
        argv = shlex.split(data_command)
        argv[0] = sys.executable if argv[0] in ("python", "python3") else argv[0]  # the environment this runs in
        prepared = subprocess.run(
            argv, cwd=tree, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tree)}
        )
        output += prepared.stdout + prepared.stderr
        if prepared.returncode != 0:
            return prepared.returncode, output
    result = subprocess.run(
        [sys.executable, "-m", "services.training", "run"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, **env, "PYTHONPATH": str(tree)},
    )
    return result.returncode, output + result.stdout + result.stderr


def render(head: dict | None, base: dict | None, *, base_ref: str, failure: str | None = None) -> str:
    """The comment: challenger (this PR) vs champion (the base branch), the gate's decision, the data versions."""
    lines = [COMMENT_MARKER, "## Model report", ""]
    if failure or head is None:
        lines += [
            "The pull request's pipeline did not finish:",
            "",
            "```",
            (failure or "no outcome").strip()[-3000:],
            "```",
        ]
        return "\n".join(lines) + "\n"
    metric = head["metric"]
    challenger, champion = head["challenger"], head.get("champion")

    def show(score: dict | None) -> str:
        return (
            f"{score['value']:.4g}"
            if score and score.get("value") is not None
            else (f"error: {score['error']}" if score else "none")
        )

    lines += [
        f"| | this pull request (challenger) | `{base_ref}` (champion) |",
        "| --- | --- | --- |",
        f"| held-out {metric} | {show(challenger)} | {show(champion)} |",
        f"| data version (DVC md5) | `{head['data']['md5']}` | `{base['data']['md5']}` |"
        if base
        else f"| data version (DVC md5) | `{head['data']['md5']}` | (no champion on the base branch) |",
        f"| data path | `{head['data']['path']}` | {'`' + base['data']['path'] + '`' if base else ''} |",
        "",
    ]
    decision = head["decision"]
    lines += [
        f"**Gate:** {'would promote' if decision['promote'] else 'would not promote'} ({decision['outcome']}): "
        f"{decision['reason']}.",
        "",
        "Both trained on the same sample fraction of their data version and scored on the held-out rows of this "
        "pull request's data version. Nothing was registered on any stack's tracking server.",
    ]
    return "\n".join(lines) + "\n"


def pipeline_env(args: argparse.Namespace, tracking_url: str, admin_password: str, moto_url: str) -> dict[str, str]:
    env = {
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "local"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "MLFLOW_S3_ENDPOINT_URL": moto_url,
        "MLFLOW_TRACKING_URI": tracking_url,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": admin_password,
        "TRAINING_PIPELINE": args.pipeline,
        "TRAINING_MODEL_NAME": args.model,
        "TRAINING_ENTRY_POINT": args.entry_point,
        "TRAINING_DATA": args.data,
        "TRAINING_SAMPLE_FRACTION": str(args.sample_fraction),
        "TRAINING_TRIGGER": "pull-request",
    }
    if args.dvc_remote:
        env["TRAINING_DVC_REMOTE"] = args.dvc_remote
    return env


def report(args: argparse.Namespace) -> int:
    """Base as champion, then the PR as challenger; writes `comment.md` (and both outcomes as JSON)."""
    from infra import local
    from infra.processes import start_moto

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="model-report-") as scratch:
        plane = local.LocalPlane(workdir=Path(scratch))
        moto = start_moto(plane.workdir)
        stack.callback(moto.stop)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=moto.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        ).create_bucket(Bucket=local.BUCKET)
        tracking = local.start_tracking(plane, moto)
        stack.callback(tracking.stop)
        env = pipeline_env(args, tracking.url, plane.admin_password, moto.url)
        base = _base_outcome(args, env, Path(scratch), out)
        code, output = run_pipeline(
            REPO_ROOT,
            {
                **env,
                "TRAINING_PROMOTE": "false",
                "TRAINING_REPORT_PATH": str(out / "head.json"),
                "TRAINING_CACHE_DIR": str(Path(scratch) / "head-cache"),
            },
            args.data_command,
        )
        (out / "head.log").write_text(output)
        head = json.loads((out / "head.json").read_text()) if code == 0 else None
        (out / "comment.md").write_text(render(head, base, base_ref=args.base, failure=None if code == 0 else output))
    print(f"model report: {out / 'comment.md'}")
    return 0 if code == 0 else 1


def _base_outcome(args: argparse.Namespace, env: dict[str, str], scratch: Path, out: Path) -> dict | None:
    """The base revision's pipeline trained and promoted as the champion; None when the base cannot run it."""
    tree = scratch / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), args.base], cwd=REPO_ROOT, check=True, capture_output=True
    )
    try:
        if not (tree / "services" / "training" / "runner.py").is_file():
            return None
        code, output = run_pipeline(
            tree,
            {
                **env,
                "TRAINING_REPORT_PATH": str(out / "base.json"),
                "TRAINING_TRIGGER": "manual",
                "TRAINING_CACHE_DIR": str(scratch / "base-cache"),
            },
            args.data_command,
        )
        (out / "base.log").write_text(output)
        return json.loads((out / "base.json").read_text()) if code == 0 else None
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the base revision, e.g. origin/main")
    parser.add_argument("--out", default="build/model-report")
    parser.add_argument("--pipeline", default="diabetes")
    parser.add_argument("--model", default="diabetes")
    parser.add_argument("--entry-point", default="examples.diabetes:task")
    parser.add_argument(
        "--data", default="examples/data/diabetes.csv.dvc", help="the .dvc file, relative to each checkout"
    )
    parser.add_argument(
        "--data-command", default=None, help="run in each checkout first (writes the data the .dvc file names)"
    )
    parser.add_argument("--dvc-remote", default=None, help="s3://<bucket>/dvc to fetch data versions from")
    parser.add_argument("--sample-fraction", type=float, default=0.5)
    return report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
