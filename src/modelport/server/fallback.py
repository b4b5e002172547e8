"""A model's fallback and its circuit breaker (a manifest's ``serving.fallback``).

    guard = Guards().guard(served)  # None when the model's manifest names no fallback
    outputs = await guard.predict(engine.answer, registry, inputs, record, ...)
    record.guard  # {"x-modelport-circuit": "closed"}, and "x-modelport-fallback" if it answered

The engine runs every prediction through its model's guard, so that each door gets the same
fallback; the doors show ``record.guard`` as they can (REST headers, gRPC trailing metadata,
GraphQL fields). When the model raises or misses the fallback's deadline, the fallback answers
instead: another served model (its latest version) or a constant answer. A circuit breaker
counts the failures: after ``failures`` of them within ``window_s`` it opens, and for
``open_s`` every request gets the fallback at once, without waiting on the model; then one
request probes the model (half-open) and its outcome closes the breaker or opens it again. Bad
input is the caller's fault, not the model's: it is refused as ever, and never counted.

Both show in ``/metrics`` (``modelport_fallback_total``, ``modelport_circuit_state``) and in
the answer's headers: ``x-modelport-circuit`` (closed, open, half-open) for every model with a
fallback, and ``x-modelport-fallback`` (error, deadline, open) when the fallback answered.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from modelport.config import FallbackConfig
from modelport.errors import DeadlineExceededError, ManifestError, PredictionError
from modelport.server.registry import Registry, Served
from modelport.server.requests import RequestRecord
from modelport.server.runner import Gone, Outputs
from modelport.signature import validate_inputs

log = logging.getLogger("modelport.server")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# Engine.answer: validate, then the cache or the model (served, inputs, record, gone, use_cache,
# timeout_s, arrived); passed in, as the engine imports this module.
Answer = Callable[
    [Served, Any, RequestRecord, Gone | None, bool, float | None, float | None],
    Awaitable[Outputs],
]
_STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}

FALLBACKS = Counter(
    "modelport_fallback_total",
    "Requests a model's fallback answered, by reason: error (the model raised), deadline (it "
    "was too slow), open (its circuit breaker was open).",
    ["model", "version", "reason"],
)
CIRCUIT = Gauge(
    "modelport_circuit_state",
    "A model's circuit breaker: 0 closed, 1 open, 2 half-open.",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)


class CircuitBreaker:
    """Closed, open after ``failures`` within ``window_s``, half-open after ``open_s``."""

    def __init__(
        self, failures: int, window_s: float, open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.failures, self.window_s, self.open_s = failures, window_s, open_s
        self.state = CLOSED
        self._clock = clock
        self._failed_at: deque[float] = deque()
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether this request may go to the model (when half-open, only the one probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self._opened_at >= self.open_s:
            self.state, self._probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        if self.state == HALF_OPEN:
            self.state, self._probing = CLOSED, False
            self._failed_at.clear()

    def failed(self) -> None:
        now = self._clock()
        if self.state == HALF_OPEN:
            self._open(now)
            return
        self._failed_at.append(now)
        while self._failed_at and now - self._failed_at[0] > self.window_s:
            self._failed_at.popleft()
        if len(self._failed_at) >= self.failures:
            self._open(now)

    def abandoned(self) -> None:
        """The probe ended with neither outcome (its client left): another may probe."""
        self._probing = False

    def _open(self, now: float) -> None:
        self.state, self._opened_at, self._probing = OPEN, now, False
        self._failed_at.clear()


class Guard:
    """One model version's fallback and breaker."""

    def __init__(self, served: Served, config: FallbackConfig) -> None:
        self.served = served
        self.config = config
        self.breaker = CircuitBreaker(config.failures, config.window_s, config.open_s)
        self._fallen = {r: FALLBACKS.labels(served.name, served.label, r) for r in _REASONS}
        self._state = CIRCUIT.labels(served.name, served.label)
        self._state.set(0)
        self._constant = None if config.outputs is None else _constant(served, config.outputs)

    async def predict(
        self, answer: Answer, registry: Registry, inputs: Any, record: RequestRecord,
        gone: Gone | None, use_cache: bool, timeout_s: float | None, arrived: float | None,
    ) -> Outputs:  # fmt: skip
        """The model's outputs, or its fallback's; ``record.guard`` says which."""
        reason = "open"
        if self.breaker.allow():
            settled = False
            deadline_s = self.config.deadline_s
            if timeout_s is not None:  # the caller's own deadline (gRPC) may be sooner
                deadline_s = timeout_s if deadline_s is None else min(deadline_s, timeout_s)
            try:
                outputs = await answer(
                    self.served, inputs, record, gone, use_cache, deadline_s, arrived
                )
                settled = True
                self.breaker.succeeded()
                record.guard = self._headers(None)
                return outputs
            except (PredictionError, DeadlineExceededError) as exc:
                settled = True
                reason = "deadline" if isinstance(exc, DeadlineExceededError) else "error"
                self.breaker.failed()
                log.warning(
                    "%s:%s: %s; its fallback answers", self.served.name, self.served.label, exc
                )
            finally:
                if not settled:
                    self.breaker.abandoned()
        self._fallen[reason].inc()
        outputs = await self._fallback(answer, registry, inputs, record, gone, use_cache, arrived)
        record.guard = self._headers(reason)
        return outputs

    def _headers(self, reason: str | None) -> dict[str, str]:
        self._state.set(_STATE_VALUES[self.breaker.state])
        headers = {"x-modelport-circuit": self.breaker.state}
        if reason is not None:
            headers["x-modelport-fallback"] = reason
        return headers

    async def _fallback(
        self, answer: Answer, registry: Registry, inputs: Any, record: RequestRecord,
        gone: Gone | None, use_cache: bool, arrived: float | None,
    ) -> Outputs:  # fmt: skip
        if self._constant is not None:
            batch = validate_inputs(self.served.model.signature, inputs, self.served.model.limits)
            first = next(iter(batch.values()))
            rows = first.shape[0] if first.ndim else 1
            return {n: np.repeat(v[None], rows, axis=0) for n, v in self._constant.items()}
        other = registry.get(str(self.config.model))
        if other.model.signature.inputs != self.served.model.signature.inputs or not set(
            self.served.model.signature.output_names
        ) <= set(other.model.signature.output_names):
            raise ManifestError(
                f"{self.served.name}:{self.served.label}'s fallback {other.name!r} does not take "
                "the same inputs and give the same outputs"
            )
        outputs = await answer(other, inputs, record, gone, use_cache, None, arrived)
        return {n: outputs[n] for n in self.served.model.signature.output_names}


_REASONS = ("error", "deadline", "open")


def _constant(served: Served, outputs: Any) -> dict[str, np.ndarray]:
    """The constant answer as one row per output, checked against the signature."""
    specs = {s.name: s for s in served.model.signature.outputs}
    if set(outputs) != set(specs):
        raise ManifestError(
            f"{served.name}:{served.label}: fallback outputs must give every output "
            f"({', '.join(specs)}), got {', '.join(map(str, outputs))}"
        )
    rows = {}
    for name, spec in specs.items():
        value = np.asarray(outputs[name], dtype=object if spec.dtype == "string" else spec.dtype)
        if value.shape != tuple(spec.shape[1:]) and -1 not in spec.shape[1:]:
            raise ManifestError(
                f"{served.name}:{served.label}: fallback output {name!r} must be one row of "
                f"shape {list(spec.shape[1:])}, got {list(value.shape)}"
            )
        rows[name] = value
    return rows


class Guards:
    """The guards of every served model that has a fallback, made on its first request."""

    def __init__(self) -> None:
        self._guards: dict[tuple[str, int], Guard | None] = {}

    def guard(self, served: Served) -> Guard | None:
        key = (served.name, served.version)
        if key not in self._guards:
            settings = (served.model.metadata.get("serving") or {}).get("fallback")
            self._guards[key] = (
                None if settings is None else Guard(served, FallbackConfig.from_manifest(settings))
            )
        return self._guards[key]
