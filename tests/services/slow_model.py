"""A pyfunc model that takes its time: exercises the general (non-sklearn) path and draining."""

from __future__ import annotations

import time

import mlflow.pyfunc


class SlowModel(mlflow.pyfunc.PythonModel):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, context, model_input, params=None):
        time.sleep(self.seconds)
        return [float(x) * 2 for x in model_input["x"]]
