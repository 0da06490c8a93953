"""Train a small model, log it to the tracking server, register it, and point `champion` at it.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... python -m examples.train --model diabetes

Uses scikit-learn's bundled diabetes data (no download). The model is logged with its
signature, an input example and explicit pip requirements (dependency inference takes
seconds and guesses wrong), so the model server can validate requests against it, and with
the training data's per-feature reference statistics for drift (services/serving/drift.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.models import infer_signature
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split

from services.serving.drift import reference_statistics

SKLEARN_REQUIREMENT = "scikit-learn==1.9.1"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    rmse: float


def training_data(seed: int = 7):
    """(X_train, X_test, y_train, y_test) of the diabetes data set as DataFrames."""
    data = load_diabetes(as_frame=True)
    return train_test_split(data.data, data.target, test_size=0.25, random_state=seed)


def train_and_register(
    model_name: str, *, alias: str = "champion", alpha: float = 1.0, experiment: str = "examples"
) -> Registered:
    x_train, x_test, y_train, y_test = training_data()
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"ridge-alpha-{alpha}") as run:
        model = Ridge(alpha=alpha).fit(x_train, y_train)
        rmse = float(np.sqrt(np.mean((model.predict(x_test) - y_test) ** 2)))
        mlflow.log_params({"alpha": alpha, "features": x_train.shape[1]})
        mlflow.log_metric("rmse", rmse)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train, model.predict(x_train)),
            input_example=x_train.head(3),
            pip_requirements=[SKLEARN_REQUIREMENT],
            registered_model_name=model_name,
            # reference statistics travel with the version: the model server measures drift against them
            metadata={"drift_reference": reference_statistics(x_train)},
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)
    return Registered(name=model_name, version=version, run_id=run.info.run_id, rmse=rmse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="diabetes", help="registered model name")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()
    result = train_and_register(args.model, alias=args.alias, alpha=args.alpha)
    print(f"registered {result.name} version {result.version} (rmse {result.rmse:.2f}) as @{args.alias}")


if __name__ == "__main__":
    main()
