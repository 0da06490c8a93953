"""`python -m services.training run`: one training run of a pipeline, configured by `TRAINING_*`
variables (services/training/settings.py) and MLflow's own `MLFLOW_TRACKING_*`.

Exit codes: 0 the run finished (promoted or not: the gate's decision is on the version),
2 the data checks failed (nothing registered), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training", description="training runs and the drift retraining receiver")
    parser.add_argument("command", choices=["run"])
    args = parser.parse_args(argv)
    if args.command == "run":
        from services.training.checks import DataCheckError
        from services.training.runner import run
        from services.training.settings import TrainingSettings

        try:
            outcome = run(TrainingSettings())
        except DataCheckError:
            return 2
        print(f"[training] done: {outcome.model} version {outcome.version or '(not registered)'}: {outcome.decision.outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
