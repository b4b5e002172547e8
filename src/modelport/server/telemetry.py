"""Edge telemetry: what pages that run a model on the device report, into ``/metrics``.

    {"model": "digits", "records": [{"version": 2, "backend": "wasm", "event": "local",
                                     "latency_ms": 1.8}, ...]}

Counts and latencies only, never inputs or outputs. A post is checked whole before anything
is counted: the model must have a web bundle here and the version be one of its own (so that
no client can grow the metrics' series), the backend and the event come from short lists, a
latency is a finite number of milliseconds. At most MAX_RECORDS records a post, and
``admit()`` allows POSTS_PER_S posts a second per process (bursts of POSTS_BURST): the door
refuses the rest (429), so a flood costs neither memory nor much CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

from modelport.errors import InvalidInputError

BACKENDS = ("wasm", "webgpu", "service")
EVENTS = ("local", "failure", "fallback")
MAX_RECORDS = 256
MAX_BYTES = 64 * 1024
MAX_LATENCY_MS = 600_000.0
POSTS_PER_S = 50.0
POSTS_BURST = 100.0

EDGE_PREDICTIONS = Counter(
    "modelport_edge_predictions_total",
    "Predictions reported by pages that run the model on the device, by event: local (the "
    "device answered), failure (the local model could not load or failed), fallback (the "
    "service answered for it).",
    ["model", "version", "backend", "event"],
)
EDGE_LATENCY = Histogram(
    "modelport_edge_latency_seconds",
    "Prediction latency as pages measured it: on the device (backend wasm or webgpu) or the "
    "round trip to the service (backend service).",
    ["model", "version", "backend"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)


class EdgeTelemetry:
    """Checks and counts telemetry posts; ``versions(name)`` lists a model's versions and
    raises ModelNotFoundError for a model without a bundle."""

    def __init__(
        self, versions: Callable[[str], list[int]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.versions = versions
        self._clock = clock
        self._tokens = POSTS_BURST
        self._at = clock()

    def admit(self) -> bool:
        """Whether one more post may be taken now (a token bucket)."""
        now = self._clock()
        self._tokens = min(POSTS_BURST, self._tokens + (now - self._at) * POSTS_PER_S)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def accept(self, message: Any) -> int:
        """Count a post's records (all or none); InvalidInputError says what is wrong."""
        if not isinstance(message, dict) or set(message) != {"model", "records"}:
            raise InvalidInputError('telemetry must be {"model": NAME, "records": [...]}')
        name, records = message["model"], message["records"]
        if not isinstance(name, str) or not isinstance(records, list):
            raise InvalidInputError("telemetry: model must be a name and records a list")
        if len(records) > MAX_RECORDS:
            raise InvalidInputError(
                f"telemetry: {len(records)} records, over the limit of {MAX_RECORDS} a post"
            )
        known = set(self.versions(name))
        checked = [_record(r, i, known) for i, r in enumerate(records)]
        for version, backend, event, latency_ms in checked:
            EDGE_PREDICTIONS.labels(name, version, backend, event).inc()
            if latency_ms is not None:
                EDGE_LATENCY.labels(name, version, backend).observe(latency_ms / 1000)
        return len(checked)


def _record(record: Any, index: int, known: set[int]) -> tuple[str, str, str, float | None]:
    where = f"telemetry record {index}"
    if not isinstance(record, dict) or not {"version", "backend", "event"} <= set(record):
        raise InvalidInputError(f"{where}: needs version, backend and event")
    extra = set(record) - {"version", "backend", "event", "latency_ms"}
    if extra:
        raise InvalidInputError(f"{where}: unknown field {sorted(extra)[0]!r:.40}")
    version, backend, event = record["version"], record["backend"], record["event"]
    if type(version) is not int or version not in known:
        raise InvalidInputError(f"{where}: version {version!r:.20} is not one of this model's")
    if backend not in BACKENDS or event not in EVENTS:
        raise InvalidInputError(
            f"{where}: backend must be one of {', '.join(BACKENDS)} and event one of "
            f"{', '.join(EVENTS)}"
        )
    latency = record.get("latency_ms")
    if latency is not None and (
        type(latency) not in (int, float) or not math.isfinite(latency)
        or not 0 <= latency <= MAX_LATENCY_MS
    ):  # fmt: skip
        raise InvalidInputError(
            f"{where}: latency_ms must be a number from 0 to {MAX_LATENCY_MS:.0f}"
        )
    return str(version), backend, event, None if latency is None else float(latency)
