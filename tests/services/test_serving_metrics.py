"""`metrics.BufferedHistogram`, once flushed, must record exactly what one `observe` per value records.

It writes into prometheus-client's histogram internals, so the comparison runs both with the
default registry (one worker) and in multiprocess mode (several workers, memory-mapped files),
each in a fresh interpreter: prometheus-client picks its value class when it is imported.
"""

from __future__ import annotations

import json
import math
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
non_finite = [[2.0, float("inf")], [float("nan"), 0.5]]  # +Inf has a bucket, NaN none; both sums become NaN
# predictions (negative bounds: prometheus-client exports no _sum for them) and latency (with a _sum)
for histogram, scale, prefix, series in (
    (metrics.PREDICTIONS, 1.0, "", batches),
    (metrics.LATENCY, 1e-4, "", batches),
    (metrics.PREDICTIONS, 1.0, "non-finite ", non_finite),
):
    sequential = histogram.labels(prefix + "sequential")
    buffered = metrics.BufferedHistogram(histogram.labels(prefix + "bulk"))
    for batch in series:
        batch = [abs(v) * scale if scale != 1.0 else v for v in batch]
        for value in batch:
            sequential.observe(value)
        buffered.observe_many(batch)
        if batch and batch[0] == 0.0:
            buffered.flush()  # a flush in the middle, then more observations
    buffered.flush()
    buffered.flush()  # nothing pending: writes nothing more

if "PROMETHEUS_MULTIPROC_DIR" in __import__("os").environ:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
else:
    registry = REGISTRY
samples = {}
for family in text_string_to_metric_families(generate_latest(registry).decode()):
    if family.name not in ("serving_prediction_value", "serving_request_duration_seconds"):
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
def test_a_flushed_buffered_histogram_records_what_one_observe_per_value_records(mode: str, tmp_path: Path) -> None:
    samples = observed(tmp_path if mode == "multiprocess" else None)
    sequential, bulk = samples["sequential"], samples["bulk"]
    assert set(bulk) == set(sequential)
    buckets = {key: value for key, value in sequential.items() if key.startswith("serving_prediction_value_bucket")}
    assert len(buckets) == 18 and max(buckets.values()) == 29  # 10 + 6 + 3 + 0 + 10 values, all under +Inf
    assert "serving_request_duration_seconds_sum|" in sequential
    for key, value in sequential.items():
        if key.endswith("_sum|"):
            assert bulk[key] == pytest.approx(value, rel=1e-12), key  # one addition per flush, not per value
        else:
            assert bulk[key] == value, key
    non_finite, non_finite_bulk = samples["non-finite sequential"], samples["non-finite bulk"]
    assert non_finite["serving_prediction_value_bucket|+Inf"] == 3  # 2.0, +Inf and 0.5; NaN falls in no bucket
    assert {k: v for k, v in non_finite_bulk.items() if not k.endswith("_sum|")} == {
        k: v for k, v in non_finite.items() if not k.endswith("_sum|")
    }
    for sums in (non_finite, non_finite_bulk):  # exported in multiprocess mode only, NaN in both
        assert all(math.isnan(v) for k, v in sums.items() if k.endswith("_sum|"))


def test_request_metrics_write_nothing_until_flushed_then_everything_once() -> None:
    from prometheus_client import REGISTRY

    from services.serving import metrics

    endpoint = "buffered-test"
    tally = metrics.RequestMetrics(endpoint)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"endpoint": endpoint, **labels})

    tally.inflight += 2
    tally.ok.inc()
    tally.latency.observe(0.003)
    tally.rows.observe(32)
    tally.predictions.observe_many([1.5, 180.0])
    assert value("serving_requests_total", status="200") in (None, 0.0)
    assert value("serving_request_duration_seconds_count") in (None, 0.0)
    tally.flush()
    tally.flush()
    assert value("serving_requests_total", status="200") == 1.0
    assert value("serving_request_duration_seconds_bucket", le="0.005") == 1.0
    assert value("serving_request_duration_seconds_bucket", le="0.0025") == 0.0
    assert value("serving_request_rows_bucket", le="32.0") == 1.0
    assert value("serving_request_rows_bucket", le="16.0") == 0.0
    assert value("serving_prediction_value_count") == 2.0 and value("serving_request_rows_sum") == 32.0
    assert value("serving_prediction_value_bucket", le="150.0") == 1.0
    assert value("serving_prediction_value_bucket", le="200.0") == 2.0
    assert value("serving_inflight_requests") == 2.0
    with pytest.raises(ValueError):
        tally.ok.inc(-1)  # as prometheus-client's Counter.inc
    tally.inflight -= 2
    tally.flush()
    assert value("serving_inflight_requests") == 0.0
