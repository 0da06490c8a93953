"""Prometheus metrics of the model server.

With several worker processes (one per CPU), `PROMETHEUS_MULTIPROC_DIR` is set before any
worker starts and `/metrics` aggregates every worker's values; with one worker the default
registry is used.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PREDICTION_BUCKETS = (-100, -10, -1, 0, 1, 10, 25, 50, 100, 150, 200, 250, 300, 400, 500, 1000, 10000)

REQUESTS = Counter("serving_requests_total", "Scoring requests by HTTP status", ["endpoint", "status"])
LATENCY = Histogram(
    "serving_request_duration_seconds", "Time to answer a scoring request", ["endpoint"], buckets=LATENCY_BUCKETS
)
REQUEST_ROWS = Histogram("serving_request_rows", "Rows per scoring request", ["endpoint"], buckets=BATCH_BUCKETS)
BATCH_ROWS = Histogram(
    "serving_batch_rows", "Rows per model call (requests batched together)", ["endpoint"], buckets=BATCH_BUCKETS
)
PREDICTIONS = Histogram(
    "serving_prediction_value",
    "Distribution of numeric predictions (up to 10 rows per request)",
    ["endpoint"],
    buckets=PREDICTION_BUCKETS,
)
MODEL_VERSION = Gauge(
    "serving_model_version_info",
    "1 for the model version being served",
    ["endpoint", "model", "version"],
    multiprocess_mode="livemax",
)
MODEL_READY = Gauge(
    "serving_model_ready", "1 when a model is loaded and requests are served", ["endpoint"], multiprocess_mode="livemin"
)
LOAD_FAILURES = Counter(
    "serving_model_load_failures_total", "Versions that failed to load (the last good one kept serving)", ["endpoint"]
)
SWAPS = Counter("serving_model_swaps_total", "Times a new version replaced the served one", ["endpoint"])
CAPTURED = Counter(
    "serving_captured_records_total", "Request/prediction records written for drift analysis", ["endpoint"]
)
CAPTURE_FAILURES = Counter("serving_capture_failures_total", "Capture batches that could not be written", ["endpoint"])
DRIFT = Gauge(
    "serving_feature_drift_psi",
    "Population stability index of each feature over the live window vs. the training data",
    ["endpoint", "feature"],
    multiprocess_mode="livemax",
)
CONNECTIONS_CLOSED = Counter(
    "serving_connections_closed_total",
    "Connections the server closed to stay within its bounds, by reason",
    ["endpoint", "reason"],
)
INFLIGHT = Gauge("serving_inflight_requests", "Requests being answered", ["endpoint"], multiprocess_mode="livesum")


FLUSH_SECONDS = 0.1
"""How long a worker keeps per-request metric updates before writing them (`RequestMetrics`)."""


class BufferedHistogram:
    """A histogram child's observations, counted in this process and written to it by `flush`.

    Why: with several workers every metric write is a locked write into a shared memory-mapped
    file (about 1 us each). A request made 9 to 27 of them: latency and rows (two each), the 200
    counter, in-flight up and down, and two for each sampled prediction (up to ten): a tenth of
    the CPU a 32-row request costs. Here an observation is a list increment, and `flush` writes
    the sum and each touched bucket once.
    It reads prometheus-client's histogram internals (`_upper_bounds`, `_buckets`, `_sum`) of
    the pinned version; a test compares the result with one `observe` per value, so an upgrade
    that changes them fails there.
    """

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf: every value but NaN has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, value: float) -> None:
        self._sum += value
        if value == value:  # `observe` counts NaN in the sum only: no `value <= bound` holds
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._pending = True

    def observe_many(self, values: Iterable[float]) -> None:
        for value in values:
            self.observe(value)

    def flush(self) -> None:
        if not self._pending:
            return
        self._child._sum.inc(self._sum)
        for index, count in enumerate(self._counts):
            if count:
                self._child._buckets[index].inc(count)
        self._counts = [0] * len(self._bounds)
        self._sum, self._pending = 0.0, False


class BufferedCounter:
    """A counter child's increments, counted in this process and written to it by `flush`."""

    def __init__(self, child: Counter) -> None:
        self._child, self._pending = child, 0

    def inc(self, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")  # as Counter.inc
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            self._child.inc(self._pending)
            self._pending = 0


class RequestMetrics:
    """What every scoring request records, buffered in the worker and written every `FLUSH_SECONDS`,
    before each `/metrics` answer and at shutdown: a scrape sees at most that much less from the
    other workers, never a wrong value. Only the event loop's thread touches it (no lock)."""

    def __init__(self, endpoint: str) -> None:
        self.latency = BufferedHistogram(LATENCY.labels(endpoint))
        self.rows = BufferedHistogram(REQUEST_ROWS.labels(endpoint))
        self.predictions = BufferedHistogram(PREDICTIONS.labels(endpoint))
        self.ok = BufferedCounter(REQUESTS.labels(endpoint, "200"))
        self.inflight = 0
        self._inflight_gauge = INFLIGHT.labels(endpoint)
        self._inflight_written: int | None = None

    def flush(self) -> None:
        for buffered in (self.latency, self.rows, self.predictions, self.ok):
            buffered.flush()
        if self.inflight != self._inflight_written:
            self._inflight_gauge.set(self.inflight)
            self._inflight_written = self.inflight


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
