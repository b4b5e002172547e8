"""Prometheus metrics, correct across worker processes, cheap on the request path.

Per-request metrics are counted in plain Python (an addition; a histogram's values appended
to an array) and handed to prometheus_client in bulk when ``/metrics`` is rendered: a request's
ten updates through prometheus_client's ``observe()`` and ``inc()`` would cost about 10 us of
CPU more (A/B under load, digits model), some 4% of a small request. They need no lock: every
update, and the rendering, run on the process's event loop thread (REST, gRPC and GraphQL
handlers all do; gRPC's asyncio server runs its handlers on the loop that started it, checked).

With several workers each process writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by ``modelport serve`` before any worker starts) and
``/metrics`` sums them: there every update is handed over at once, so that a worker that dies
loses nothing it counted.
"""

from __future__ import annotations

import functools
import os
import time
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
_SIZE_BUCKETS = tuple(float(4**i) for i in range(3, 14))  # 64 B .. 64 MiB

REQUESTS = Counter(
    "modelport_requests_total",
    "Inference requests by model, version and HTTP status.",
    ["model", "version", "status"],
)
LATENCY = Histogram(
    "modelport_request_duration_seconds",
    "Inference request latency by phase: input (reading and checking the request), queue "
    "(waiting), inference (the model), output (encoding and sending the answer), total.",
    ["model", "version", "phase"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_SECONDS = Counter(
    "modelport_request_seconds_total",
    "Seconds spent answering inference requests, by outcome: success (2xx) or fail.",
    ["model", "version", "outcome"],
)
_IN_FLIGHT = Gauge(
    "modelport_requests_in_flight",
    "Inference requests being served now.",
    multiprocess_mode="livesum",
)
BATCH_SIZE = Histogram(
    "modelport_batch_size",
    "Rows per inference call (several requests' rows when batching).",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCHES = Counter(
    "modelport_batches_total",
    "Model executions by batch size in rows (the first MAX_BATCH_SIZES sizes seen).",
    ["model", "version", "size"],
)
BATCH_SECONDS = Counter(
    "modelport_batch_seconds_total",
    "Seconds the model ran, by batch size in rows (the first MAX_BATCH_SIZES sizes seen).",
    ["model", "version", "size"],
)
LAST_INFERENCE = Gauge(
    "modelport_last_inference_timestamp_seconds",
    "When the model last ran (seconds since the epoch).",
    ["model", "version"],
    multiprocess_mode="max",
)
QUEUE_DEPTH = Gauge(
    "modelport_queue_depth",
    "Requests waiting or running per model version.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "modelport_rejected_total",
    "Requests refused before inference, by reason (queue_full, deadline).",
    ["model", "version", "reason"],
)
CACHE = Counter(
    "modelport_cache_total",
    "Prediction cache lookups (hit, miss) and evictions.",
    ["model", "version", "event"],
)
REQUEST_BYTES = Histogram(
    "modelport_request_size_bytes",
    "Size of inference request bodies.",
    ["model"],
    buckets=_SIZE_BUCKETS,
)
LOOKUPS = Counter(
    "modelport_prediction_lookups_total",
    "Stored-prediction lookups by result: hit, stale, miss, live (computed on the spot).",
    ["model", "result"],
)
PREDICTION_AGE = Gauge(
    "modelport_predictions_age_seconds",
    "Seconds since the model's last successful batch run ended.",
    ["model"],
    multiprocess_mode="mostrecent",
)

# Batch sizes broken out per model version: without batching a client picks the rows, and
# random sizes must not grow the series (and the multiprocess files) without bound. Past it,
# executions are still counted, in the batch-size histogram.
MAX_BATCH_SIZES = 64

_PENDING: list[BulkCounter | BulkHistogram | Level | ModelMetrics] = []  # what flush() hands over
FLUSH_EVERY = 4096  # admitted requests between flushes without a render: kept values stay few


def _write_through() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class BulkCounter:
    """A counter (or a gauge: ``dec``) child whose increments are summed before handing over."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._delta = 0.0
        self._through = _write_through()
        _PENDING.append(self)

    def inc(self, amount: float = 1.0) -> None:
        self._delta += amount
        if self._through:
            self.flush()

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def flush(self) -> None:
        if self._delta:
            self._child.inc(self._delta)
            self._delta = 0.0


class BulkHistogram:
    """A histogram child's observations, kept as they come and sorted into its buckets at
    flush: ``observe`` is then the array's own append, a C call, rather than a Python method
    with a bisect (about 0.4 us each, seven a request). ``flush`` runs before every render and
    every FLUSH_EVERY admitted requests (Engine.admit), which bounds what is kept."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = np.array(child._upper_bounds[:-1])  # the last, +Inf, takes the rest
        self._values = array("d")
        self.observe: Callable[[float], None] = self._values.append
        if _write_through():
            self.observe = self._observe_through
        _PENDING.append(self)

    def _observe_through(self, amount: float) -> None:
        self._values.append(amount)
        self.flush()

    def flush(self) -> None:
        if not self._values:
            return
        values = np.frombuffer(self._values, np.float64)
        # side="left": the first bound >= the value, Prometheus's "le"
        buckets = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(buckets, minlength=len(self._bounds) + 1)
        total = float(np.cumsum(values)[-1])  # added in order, as one by one would be
        del values, buckets  # the array's buffer is free to shrink
        for bucket, count in zip(self._child._buckets, counts.tolist(), strict=True):
            if count:
                bucket.inc(count)
        self._child._sum.inc(total)
        del self._values[:]


class Level:
    """A gauge of how many are inside now: the request path moves ``now`` by plain additions,
    and ``flush`` sets the gauge when it changed."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self.now = 0
        self._shown: int | None = None
        _PENDING.append(self)

    def flush(self) -> None:
        if self.now != self._shown:
            self._child.set(self.now)
            self._shown = self.now


IN_FLIGHT = Level(_IN_FLIGHT)  # inference requests inside a model, in this process


def flush() -> None:
    """Hand every count kept in this process to prometheus_client (before rendering)."""
    for metric in _PENDING:
        metric.flush()


class ModelMetrics:
    """One model version's metrics. What every request moves (its status, seconds, the
    requests inside the model, batch sizes) is counted in plain attributes, with no call, and
    handed over at ``flush``; prometheus_client's children are looked up once (labels() is
    costly per call)."""

    def __init__(self, model: str, version: str) -> None:
        self.input = BulkHistogram(LATENCY.labels(model, version, "input"))
        self.queue = BulkHistogram(LATENCY.labels(model, version, "queue"))
        self.inference = BulkHistogram(LATENCY.labels(model, version, "inference"))
        self.output = BulkHistogram(LATENCY.labels(model, version, "output"))
        self.total = BulkHistogram(LATENCY.labels(model, version, "total"))
        self.body = BulkHistogram(REQUEST_BYTES.labels(model))
        self.batch_size = BulkHistogram(BATCH_SIZE.labels(model, version))
        self.cache_hit = BulkCounter(CACHE.labels(model, version, "hit"))
        self.cache_miss = BulkCounter(CACHE.labels(model, version, "miss"))
        self.cache_eviction = BulkCounter(CACHE.labels(model, version, "eviction"))
        self.queue_full = BulkCounter(REJECTED.labels(model, version, "queue_full"))
        self.deadline = BulkCounter(REJECTED.labels(model, version, "deadline"))
        self._model, self._version = model, version
        self.inside = Level(QUEUE_DEPTH.labels(model, version))  # waiting for or on the model
        self._through = _write_through()
        self._statuses: dict[int, int] = {}  # requests answered since the last flush
        self._seconds = [0.0, 0.0]  # ... and their seconds: success (2xx), fail
        self._sizes: dict[int, list[float]] = {}  # rows -> [executions, seconds] since then
        self._sized: set[int] = set()  # the batch sizes broken out (MAX_BATCH_SIZES at most)
        self._ran_at: float | None = None  # time.time() of the last execution since then
        self._children: dict[tuple[Any, object], Any] = {}  # (metric, key) -> labelled child
        _PENDING.append(self)

    def entered(self) -> None:
        """A request goes to the model (its runner): in queue depth and in flight till left()."""
        self.inside.now += 1
        IN_FLIGHT.now += 1
        if self._through:
            self.flush()

    def left(self) -> None:
        self.inside.now -= 1
        IN_FLIGHT.now -= 1
        if self._through:
            self.flush()

    def finished(self, status: int, total_s: float, output_s: float | None = None) -> None:
        """A request answered: ``output_s`` is the time since the model's outputs were ready."""
        self.total.observe(total_s)
        if output_s is not None:
            self.output.observe(output_s)
        self._statuses[status] = self._statuses.get(status, 0) + 1
        self._seconds[0 if 200 <= status < 300 else 1] += total_s
        if self._through:
            self.flush()

    def executed(self, rows: int, seconds: float) -> None:
        """The model ran once on ``rows`` rows (one request's, or a batch of several)."""
        self.batch_size.observe(rows)
        self._ran_at = time.time()
        size = self._sizes.get(rows)
        if size is None:
            if rows not in self._sized:
                if len(self._sized) >= MAX_BATCH_SIZES:
                    return
                self._sized.add(rows)
            size = self._sizes[rows] = [0, 0.0]
        size[0] += 1
        size[1] += seconds
        if self._through:
            self.flush()

    def flush(self) -> None:
        model, version = self._model, self._version
        for status, count in self._statuses.items():
            self._child(REQUESTS, status, model, version, str(status)).inc(count)
        self._statuses.clear()
        for outcome, seconds in zip(("success", "fail"), self._seconds, strict=True):
            if seconds:
                self._child(REQUEST_SECONDS, outcome, model, version, outcome).inc(seconds)
        self._seconds[:] = (0.0, 0.0)
        for rows, (runs, ran_s) in self._sizes.items():
            self._child(BATCHES, rows, model, version, str(rows)).inc(runs)
            self._child(BATCH_SECONDS, rows, model, version, str(rows)).inc(ran_s)
        self._sizes.clear()
        if self._ran_at is not None:
            self._child(LAST_INFERENCE, None, model, version).set(self._ran_at)
            self._ran_at = None
        if self._through:  # the levels too, which flush() otherwise reaches on its own
            self.inside.flush()
            IN_FLIGHT.flush()

    def _child(self, metric: Any, key: object, *labels: str) -> Any:
        child = self._children.get((metric, key))
        if child is None:
            child = self._children[(metric, key)] = metric.labels(*labels)
        return child


@functools.cache
def for_model(model: str, version: str) -> ModelMetrics:
    return ModelMetrics(model, version)


def forget_process() -> None:
    """At a clean exit: this process's live gauges (in-flight) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def counted() -> CollectorRegistry:
    """Everything counted so far, by every worker: what ``/metrics`` and statistics read."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    return generate_latest(counted()), CONTENT_TYPE_LATEST
