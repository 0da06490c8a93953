"""`metrics.observe_many` must record exactly what one `observe` per value records.

It writes into prometheus-client's histogram internals, so the comparison runs both with the
default registry (one worker) and in multiprocess mode (several workers, memory-mapped files),
each in a fresh interpreter: prometheus-client picks its value class when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

COMPARE = r"""
import json, math, random, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from services.serving import metrics

random.seed(7)
batches = [
    [random.uniform(-150, 12000) for _ in range(10)],
    [0.0, 1.0, 10.0, 25.0, -100.0, 10000.0],  # exactly on bucket bounds: `le` is inclusive
    [1e9, -1e9, 5e-324],  # far outside the bounds, and the smallest positive float
    [],
    [3.0] * 10,
]
sequential, bulk = metrics.PREDICTIONS.labels("sequential"), metrics.PREDICTIONS.labels("bulk")
for batch in batches:
    for value in batch:
        sequential.observe(value)
    metrics.observe_many(bulk, batch)

if "PROMETHEUS_MULTIPROC_DIR" in __import__("os").environ:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
else:
    registry = REGISTRY
samples = {}
for family in text_string_to_metric_families(generate_latest(registry).decode()):
    if family.name != "serving_prediction_value":
        continue
    for s in family.samples:
        key = s.name + "|" + s.labels.get("le", "")
        samples.setdefault(s.labels["endpoint"], {})[key] = s.value
json.dump(samples, sys.stdout)
"""


def observed(multiprocess_dir: Path | None) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
    done = subprocess.run(
        [sys.executable, "-c", COMPARE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("mode", ["one worker", "multiprocess"])
def test_observe_many_records_what_one_observe_per_value_records(mode: str, tmp_path: Path) -> None:
    samples = observed(tmp_path if mode == "multiprocess" else None)
    sequential, bulk = samples["sequential"], samples["bulk"]
    assert set(bulk) == set(sequential)
    buckets = {key: value for key, value in sequential.items() if key.startswith("serving_prediction_value_bucket")}
    assert len(buckets) == 18 and max(buckets.values()) == 29  # 10 + 6 + 3 + 0 + 10 values, all under +Inf
    for key, value in sequential.items():
        if key.startswith("serving_prediction_value_sum"):
            assert bulk[key] == pytest.approx(value, rel=1e-12), key  # one addition per batch, not per value
        else:
            assert bulk[key] == value, key
