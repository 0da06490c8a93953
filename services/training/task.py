"""What a pipeline's training code gives the runner: a `Task`.

A pipeline's entry point (`module:attribute`, e.g. `examples.diabetes:task`) names a `Task` or
a function returning one. The task says which column is the label, how to fit a model, which
metric the evaluation gate compares (and in which direction), which features it expects and
the plausible range of each value. Everything else (data versions, checks, logging,
registration, the gate, promotion) is the runner's, so every pipeline gets the same loop.

Models are scikit-learn estimators (anything with `fit`/`predict` that `mlflow.sklearn` can
log): that is what the platform's model server loads and the example uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, dtype=float) - np.asarray(truth, dtype=float)) ** 2)))


def mae(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, dtype=float) - np.asarray(truth, dtype=float))))


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(truth) == np.asarray(predicted)))


def r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - float(np.sum((truth - predicted) ** 2)) / total if total else 0.0


METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "rmse": (rmse, False),
    "mae": (mae, False),
    "r2": (r2, True),
    "accuracy": (accuracy, True),
}
"""Metric name -> (function, greater is better)."""


@dataclass(frozen=True)
class Task:
    target: str
    """The label column of the data set."""
    fit: Callable[[Any, Any, Mapping[str, Any]], Any]
    """`fit(features, labels, params) -> estimator`; `params` are the run's hyperparameters (TRAINING_PARAMS)."""
    metric: str = "rmse"
    """The gate's metric, one of METRICS."""
    features: Sequence[str] = ()
    """Expected input columns. Empty: those of the current champion's signature, or, for a first
    version, every column but the target."""
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Plausible (min, max) per column, either end open with None; values outside fail the data checks."""
    pip_requirements: Sequence[str] = ()
    """Logged with the model so the model server's environment is known (dependency inference is slow and guesses)."""
    default_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric: got {self.metric!r}; allowed: {', '.join(METRICS)}")
        for column, (low, high) in self.ranges.items():
            if low is not None and high is not None and low > high:
                raise ValueError(f"ranges[{column!r}]: min {low} is above max {high}")

    @property
    def greater_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def score(self, truth: Any, predicted: Any) -> float:
        return METRICS[self.metric][0](truth, predicted)


def load_task(entry_point: str) -> Task:
    """The `Task` named by `module:attribute` (an attribute that is a Task, or a function returning one)."""
    module_name, _, attribute = entry_point.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"entry point: got {entry_point!r}; expected module:attribute, e.g. examples.diabetes:task")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"entry point {entry_point!r}: {exc}") from None
    task = target() if callable(target) and not isinstance(target, Task) else target
    if not isinstance(task, Task):
        raise ValueError(
            f"entry point {entry_point!r}: gave {type(task).__name__}, expected a services.training.task.Task"
        )
    return task
