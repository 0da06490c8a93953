"""Loading a registered model version and predicting with it.

Any MLflow pyfunc model is served through its own `predict` (schema enforced by MLflow).
When the model is a scikit-learn estimator with an all-numeric column signature, the fast
path calls the estimator directly on a float64 matrix: no DataFrame per request, no MLflow
schema conversion, and concurrent requests can be stacked into one call.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import mlflow
import numpy as np

from services.serving.inputs import Schema

log = logging.getLogger("serving")
# Fitted on a DataFrame, called on a matrix in the signature's column order: same result.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@dataclass
class LoadedModel:
    name: str
    version: str
    run_id: str
    pyfunc: Any
    schema: Schema | None
    matrix_predict: Callable[[np.ndarray], np.ndarray] | None
    """Set for the fast path: predicts a (rows, columns) float64 matrix."""
    drift_reference: dict | None = None
    """Training-data statistics stored with the version (MLmodel metadata `drift_reference`)."""
    loaded_at: float = field(default_factory=time.time)

    @property
    def batchable(self) -> bool:
        return self.matrix_predict is not None


def resolve_alias(name: str, alias: str) -> tuple[str, str]:
    """(version, run_id) the alias points at now."""
    version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    return str(version.version), version.run_id or ""


def load_version(name: str, version: str, run_id: str = "") -> LoadedModel:
    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    schema = _column_schema(pyfunc)
    matrix_predict = None
    if schema is not None and schema.numeric and "sklearn" in pyfunc.metadata.flavors:
        estimator = pyfunc.get_raw_model()
        if hasattr(estimator, "predict"):
            matrix_predict = estimator.predict
    log.info("loaded %s version %s in %.2fs (%s path)", name, version, time.perf_counter() - started, "fast" if matrix_predict else "pyfunc")
    reference = (pyfunc.metadata.metadata or {}).get("drift_reference")
    return LoadedModel(name=name, version=version, run_id=run_id, pyfunc=pyfunc, schema=schema, matrix_predict=matrix_predict,
                       drift_reference=reference if isinstance(reference, dict) else None)


def _column_schema(pyfunc: Any) -> Schema | None:
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names() or getattr(schema, "is_tensor_spec", lambda: False)():
        return None
    try:
        names = tuple(schema.input_names())
        types = tuple(str(getattr(t, "name", t)) for t in schema.input_types())
    except Exception:  # noqa: BLE001 - unusual schemas fall back to MLflow's own enforcement
        return None
    return Schema(names=names, types=types)
