"""Loading a registered model version and choosing how it is served (see `plan`)."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import mlflow

from services.serving.paths import ExactPath, TablePath
from services.serving.plan import choose

log = logging.getLogger("serving")
# The matrix path calls an estimator fitted on a DataFrame with a matrix in the signature's
# column order (verified equal on load): scikit-learn's reminder about feature names is noise.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@dataclass
class LoadedModel:
    name: str
    version: str
    run_id: str
    pyfunc: Any
    path: ExactPath | TablePath
    drift_reference: dict | None = None
    """Training-data statistics stored with the version (MLmodel metadata `drift_reference`)."""
    loaded_at: float = field(default_factory=time.time)

    @property
    def batchable(self) -> bool:
        return self.path.batchable


def resolve_alias(name: str, alias: str) -> tuple[str, str]:
    """(version, run_id) the alias points at now."""
    version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    return str(version.version), version.run_id or ""


def load_version(name: str, version: str, run_id: str = "", *, batching: bool = True) -> LoadedModel:
    started = time.perf_counter()
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=tempfile.mkdtemp(prefix="model-")
    )
    pyfunc = mlflow.pyfunc.load_model(local)
    reference = (pyfunc.metadata.metadata or {}).get("drift_reference")
    reference = reference if isinstance(reference, dict) else None
    path = choose(pyfunc, batching=batching, drift_features=tuple((reference or {}).get("features", {})))
    log.info("loaded %s version %s in %.2fs: %s", name, version, time.perf_counter() - started, path.reason)
    return LoadedModel(name=name, version=version, run_id=run_id, pyfunc=pyfunc, path=path, drift_reference=reference)
