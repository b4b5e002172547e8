"""Prometheus metrics, correct across worker processes, cheap on the request path.

Per-request metrics are counted in plain Python (an addition, a bisect for a histogram's
bucket) and handed to prometheus_client in bulk when ``/metrics`` is rendered: a request's ten
updates through its ``observe()`` and ``inc()`` cost about 10 us of CPU more (A/B under load,
digits model), some 4% of a small request. They need no lock: every update, and the rendering,
run on the process's event loop thread (REST, gRPC and GraphQL handlers all do; gRPC's asyncio
server runs its handlers on the loop that started it, checked).

With several workers each process writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by ``modelport serve`` before any worker starts) and
``/metrics`` sums them: there every update is handed over at once, so that a worker that dies
loses nothing it counted.
"""

from __future__ import annotations

import functools
import os
import time
from bisect import bisect_left
from typing import Any

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

_PENDING: list[BulkCounter | BulkHistogram | BulkLatest] = []  # what flush() hands over


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
    """A histogram child's observations as bucket counts and a sum, handed over together."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = tuple(child._upper_bounds)  # ends with +Inf: every value has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._through = _write_through()
        _PENDING.append(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount
        self._sum += amount
        if self._through:
            self.flush()

    def flush(self) -> None:
        if any(self._counts):
            for bucket, count in zip(self._child._buckets, self._counts, strict=True):
                if count:
                    bucket.inc(count)
            self._child._sum.inc(self._sum)
            self._counts = [0] * len(self._bounds)
            self._sum = 0.0


class BulkLatest:
    """A gauge child set to the latest value, handed over at flush."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._value: float | None = None
        self._through = _write_through()
        _PENDING.append(self)

    def set(self, value: float) -> None:
        self._value = value
        if self._through:
            self.flush()

    def flush(self) -> None:
        if self._value is not None:
            self._child.set(self._value)
            self._value = None


def flush() -> None:
    """Hand every count kept in this process to prometheus_client (before rendering)."""
    for metric in _PENDING:
        metric.flush()


IN_FLIGHT = BulkCounter(_IN_FLIGHT)


class ModelMetrics:
    """One model version's metric children, looked up once: labels() is costly per call."""

    def __init__(self, model: str, version: str) -> None:
        self.input = BulkHistogram(LATENCY.labels(model, version, "input"))
        self.queue = BulkHistogram(LATENCY.labels(model, version, "queue"))
        self.inference = BulkHistogram(LATENCY.labels(model, version, "inference"))
        self.output = BulkHistogram(LATENCY.labels(model, version, "output"))
        self.total = BulkHistogram(LATENCY.labels(model, version, "total"))
        self.success_s = BulkCounter(REQUEST_SECONDS.labels(model, version, "success"))
        self.fail_s = BulkCounter(REQUEST_SECONDS.labels(model, version, "fail"))
        self.last_inference = BulkLatest(LAST_INFERENCE.labels(model, version))
        self.body = BulkHistogram(REQUEST_BYTES.labels(model))
        self.batch_size = BulkHistogram(BATCH_SIZE.labels(model, version))
        self.cache_hit = BulkCounter(CACHE.labels(model, version, "hit"))
        self.cache_miss = BulkCounter(CACHE.labels(model, version, "miss"))
        self.cache_eviction = BulkCounter(CACHE.labels(model, version, "eviction"))
        self.queue_depth = BulkCounter(QUEUE_DEPTH.labels(model, version))
        self.queue_full = BulkCounter(REJECTED.labels(model, version, "queue_full"))
        self.deadline = BulkCounter(REJECTED.labels(model, version, "deadline"))
        self._model, self._version = model, version
        self._requests: dict[int, BulkCounter] = {}
        self._sizes: dict[int, tuple[BulkCounter, BulkCounter]] = {}

    def finished(self, status: int, total_s: float, output_s: float | None = None) -> None:
        """A request answered: ``output_s`` is the time since the model's outputs were ready."""
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = BulkCounter(
                REQUESTS.labels(self._model, self._version, str(status))
            )
        counter.inc()
        self.total.observe(total_s)
        (self.success_s if 200 <= status < 300 else self.fail_s).inc(total_s)
        if output_s is not None:
            self.output.observe(output_s)

    def executed(self, rows: int, seconds: float) -> None:
        """The model ran once on ``rows`` rows (one request's, or a batch of several)."""
        self.batch_size.observe(rows)
        self.last_inference.set(time.time())
        size = self._sizes.get(rows)
        if size is None:
            if len(self._sizes) >= MAX_BATCH_SIZES:
                return
            labels = (self._model, self._version, str(rows))
            size = self._sizes[rows] = (
                BulkCounter(BATCHES.labels(*labels)),
                BulkCounter(BATCH_SECONDS.labels(*labels)),
            )
        size[0].inc()
        size[1].inc(seconds)


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
