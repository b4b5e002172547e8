"""Prometheus metrics, correct across worker processes.

With several workers each process writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by ``modelport serve`` before any worker starts) and
``/metrics`` sums them; in a single process the default registry is used directly.
"""

from __future__ import annotations

import functools
import os
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
    "Inference request latency by phase: queue (waiting), inference (the model), total.",
    ["model", "version", "phase"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
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


class ModelMetrics:
    """One model version's metric children, looked up once: labels() is costly per call."""

    def __init__(self, model: str, version: str) -> None:
        self.queue = LATENCY.labels(model, version, "queue")
        self.inference = LATENCY.labels(model, version, "inference")
        self.total = LATENCY.labels(model, version, "total")
        self.body = REQUEST_BYTES.labels(model)
        self.batch_size = BATCH_SIZE.labels(model, version)
        self.cache_hit = CACHE.labels(model, version, "hit")
        self.cache_miss = CACHE.labels(model, version, "miss")
        self.cache_eviction = CACHE.labels(model, version, "eviction")
        self.queue_depth = QUEUE_DEPTH.labels(model, version)
        self.queue_full = REJECTED.labels(model, version, "queue_full")
        self.deadline = REJECTED.labels(model, version, "deadline")
        self._model, self._version = model, version
        self._requests: dict[int, Any] = {}

    def finished(self, status: int, total_s: float) -> None:
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = REQUESTS.labels(
                self._model, self._version, str(status)
            )
        counter.inc()
        self.total.observe(total_s)


@functools.cache
def for_model(model: str, version: str) -> ModelMetrics:
    return ModelMetrics(model, version)


def forget_process() -> None:
    """At a clean exit: this process's live gauges (in-flight) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def render() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
