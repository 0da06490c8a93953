"""`python -m services.training run`: one training run of a pipeline, configured by `TRAINING_*`
variables (services/training/settings.py) and MLflow's own `MLFLOW_TRACKING_*`.
`python -m services.training data-push <file or directory> --remote s3://<bucket>/dvc`: what
`dvc add` and `dvc push` do, in DVC's formats, for machines without DVC (services/training/dvc.py).
`python -m services.training receiver`: the drift webhook receiver (services/training/receiver.py).

Exit codes of `run`: 0 the run finished (promoted or not: the gate's decision is on the version),
2 the data checks failed (nothing registered), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys


def data_push(path: str, remote_url: str, cache: str, endpoint_url: str | None) -> int:
    from pathlib import Path

    from services.training import dvc

    dvc_file, out = dvc.add(Path(path), Path(cache))
    remote = dvc.Remote.parse(remote_url)
    uploaded = dvc.push(out, Path(cache), remote, dvc.s3_client(endpoint_url))
    print(f"[training] {dvc_file}: md5 {out.md5}; {uploaded} object(s) pushed to {remote.url}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training", description="training runs and the drift retraining receiver")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="one training run (settings from TRAINING_* variables)")
    commands.add_parser(
        "receiver", help="the drift webhook receiver for Alertmanager (settings from RECEIVER_* variables)"
    )
    push = commands.add_parser(
        "data-push", help="hash data into DVC's cache, write its .dvc file, push it to an S3 remote"
    )
    push.add_argument("path")
    push.add_argument(
        "--remote", required=True, help="s3://<bucket>/<prefix>, e.g. the stack's datasets bucket and dvc"
    )
    push.add_argument("--cache", default=".dvc/cache", help="DVC cache directory (default: .dvc/cache)")
    push.add_argument("--endpoint-url", default=None, help="S3 endpoint (moto, locally)")
    args = parser.parse_args(argv)
    if args.command == "data-push":
        return data_push(args.path, args.remote, args.cache, args.endpoint_url)
    if args.command == "receiver":
        from services.training.receiver import ReceiverSettings, serve

        serve(ReceiverSettings())
        return 0
    from services.training.checks import DataCheckError
    from services.training.runner import run
    from services.training.settings import TrainingSettings

    try:
        outcome = run(TrainingSettings())
    except DataCheckError:
        return 2
    print(
        f"[training] done: {outcome.model} version {outcome.version or '(not registered)'}: {outcome.decision.outcome}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
