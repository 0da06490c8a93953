"""Models for the model-server tests, importable by the server process (they are pickled by reference).

- `SlowModel`: a pyfunc model that takes its time (the general path, draining).
- `ScriptedRegressor`: a scikit-learn estimator (the matrix path) that sleeps `seconds` per call,
  or spins the CPU for them, and predicts NaN for negative inputs.
- `DictModel`: a pyfunc model answering a dict of columns (MLflow's path).
- `RowModel`: a pyfunc model that declares `row_independent` (the frame path, batched), answers a
  DataFrame (a Series with the `series` param) and takes a `scale` param.
"""

from __future__ import annotations

import time

import mlflow.pyfunc
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin


class SlowModel(mlflow.pyfunc.PythonModel):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, context, model_input, params=None):
        time.sleep(self.seconds)
        return [float(x) * 2 for x in model_input["x"]]


class ScriptedRegressor(RegressorMixin, BaseEstimator):
    def __init__(self, seconds: float = 0.0, spin: bool = False) -> None:
        self.seconds, self.spin = seconds, spin

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        if self.spin:  # hold the GIL, as a pure-Python model would
            deadline = time.perf_counter() + self.seconds
            while time.perf_counter() < deadline:
                pass
        elif self.seconds:
            time.sleep(self.seconds)
        first = np.asarray(X, dtype=np.float64)[:, 0]
        return np.where(first >= 0, first * 2, np.nan)


class DictModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return {
            "doubled": (model_input["x"] * 2).tolist(),
            "label": ["big" if v > 1 else "small" for v in model_input["x"]],
        }


class RowModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        params = params or {}
        frame = pd.DataFrame(
            {"score": model_input["x"] * params.get("scale", 1.0), "tag": model_input["name"].str.upper()}
        )
        return frame["score"] if params.get("series") else frame
