"""The example pipeline: a ridge regression on scikit-learn's bundled diabetes data (no download).

`task` is the pipeline's entry point (`examples.diabetes:task`) for the training runner
(services/training). `write_dataset` writes the data set as a CSV file, the file DVC tracks
(`examples/data/diabetes.csv.dvc`); with `bmi_shift` it writes a newer version in which
every bmi reads that many standard deviations higher (a recalibrated scale at the clinic), the
shift the local loop's drifted traffic carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from services.training.task import Task

SKLEARN_REQUIREMENT = "scikit-learn==1.9.1"
TARGET = "target"
FEATURE_RANGE = (-0.5, 0.5)
"""The features are mean-centred and scaled (sum of squares 1 per column): far outside this is a broken extract."""


def fit(features: Any, labels: Any, params: Mapping[str, Any]) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=float(params.get("alpha", 1.0))).fit(features, labels)


def task() -> Task:
    from sklearn.datasets import load_diabetes

    features = list(load_diabetes(as_frame=True).data.columns)
    return Task(
        target=TARGET,
        fit=fit,
        metric="rmse",
        features=features,
        ranges={**{name: FEATURE_RANGE for name in features}, TARGET: (0.0, 1000.0)},
        pip_requirements=[SKLEARN_REQUIREMENT],
        default_params={"alpha": 1.0},
    )


def dataset(bmi_shift: float = 0.0):
    """The data set as one DataFrame (features and `target`); bmi shifted by `bmi_shift` standard deviations."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    frame = data.data.copy()
    frame["bmi"] = frame["bmi"] + bmi_shift * frame["bmi"].std()
    frame[TARGET] = data.target
    return frame


def write_dataset(path: Path, bmi_shift: float = 0.0) -> Path:
    """Write the data set as CSV (fixed float format, so the same data always has the same DVC hash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset(bmi_shift).to_csv(path, index=False, float_format="%.10g")
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the example data set as CSV")
    parser.add_argument("path", type=Path)
    parser.add_argument("--bmi-shift", type=float, default=0.0)
    args = parser.parse_args()
    print(write_dataset(args.path, args.bmi_shift))
