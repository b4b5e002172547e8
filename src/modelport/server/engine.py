"""What every front door shares: the served models, admission, validation, cache and runners.

REST, gRPC and GraphQL each parse their own messages into named arrays and map errors to their
own status codes; everything between (who may enter, input checks, the prediction cache with
single-flight, the bounded queue, batching, deadlines and the metrics of inference) is here,
once, so that a request costs and behaves the same whichever door it came through.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.caching import Cache, cache_key, open_cache
from modelport.config import ServerConfig
from modelport.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotReadyError,
    OverloadedError,
)
from modelport.server import metrics, tracing
from modelport.server.fallback import Guards
from modelport.server.registry import Registry, Served
from modelport.server.requests import RequestRecord
from modelport.server.routing import Router
from modelport.server.runner import Gone
from modelport.server.shadow import Shadows
from modelport.server.tensors import check_finite
from modelport.signature import validate_inputs

if TYPE_CHECKING:  # the log needs SQLAlchemy, which a server without one need not have
    from modelport.server.prediction_log import PredictionLog

log = logging.getLogger("modelport.server")

Outputs = dict[str, np.ndarray]


class Engine:
    """The transport-neutral half of the service; one per process, shared by every door."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.router: Router | None = None  # traffic splits (--route); set by the Versions
        self.shadows: Shadows | None = None  # shadow versions (--shadow)
        self.draining = False
        self.drain_started: float | None = None
        self.in_flight = 0
        self.cache: Cache | None = open_cache(config.cache, config.cache_ttl_s)
        self.predictions: PredictionLog | None = None  # set by the service when it logs them
        self.guards = Guards()  # the fallbacks and circuit breakers of manifests that ask
        self._computing: dict[bytes, asyncio.Future[Outputs]] = {}
        # Request ids: random per process, then counted (a uuid4 costs a system call).
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        self._admitted = 0  # requests since the metrics were last flushed

    def new_request_id(self) -> str:
        """An id unique across processes and restarts, for logs and error messages."""
        return f"{self._id_prefix}{next(self._ids):016x}"  # 32 hex digits, as a uuid

    @property
    def ready(self) -> bool:
        return self.registry is not None and not self.draining

    def begin_drain(self) -> None:
        """Readiness turns false and new inference is refused; work in flight goes on."""
        if not self.draining:
            log.info("draining: readiness is now false; %d requests in flight", self.in_flight)
            self.drain_started = time.monotonic()
        self.draining = True

    def grace_left_s(self) -> float:
        """What is left of the shutdown grace period, counted from the start of draining."""
        if self.drain_started is None:
            return self.config.grace_s
        return max(0.0, self.config.grace_s - (time.monotonic() - self.drain_started))

    def models(self) -> Registry:
        if self.registry is None:
            raise NotReadyError("the models are still loading", retry_after_s=1.0)
        return self.registry

    def admit(
        self, name: str, version: int | None, record: RequestRecord, key: str | None = None
    ) -> Served:
        """The model version a request is for, refusing it at once when there is no room.

        With no version, a traffic split (if the model has one) draws it, by ``key`` when the
        caller sent a routing key. The request holds the version until ``record`` finishes: a
        version taken out of service drains its holders before it unloads.
        """
        if self.draining:
            raise NotReadyError("the server is shutting down", retry_after_s=1.0)
        self._admitted += 1
        if self._admitted >= metrics.FLUSH_EVERY:  # what the metrics keep stays bounded
            self._admitted = 0
            metrics.flush()
        registry = self.models()
        served = None
        if version is None and self.router is not None:
            served = self.router.pick(registry, name, key)
        if served is None:
            served = registry.get(name, version)
        record.model, record.version, record.measured = name, served.label, served.measured
        served.runner.check_capacity()
        served.users += 1
        if record.leases is None:
            record.leases = [served]
        else:
            record.leases.append(served)
        return served

    @staticmethod
    def check_request(
        served: Served, datatypes: Mapping[str, str], outputs: Iterable[str] | None
    ) -> None:
        """Declared datatypes must be the model's; requested outputs must exist."""
        signature = served.model.signature
        for spec in signature.inputs:
            declared = datatypes.get(spec.name)
            if declared is not None and declared != spec.datatype:
                raise InvalidInputError(
                    f"input {spec.name!r}: datatype {declared} does not match the model's "
                    f"{spec.datatype}",
                    spec.name,
                )
        for name in outputs or ():
            if name not in signature.output_names:
                raise InvalidInputError(
                    f"unknown output {name!r}; the model has "
                    f"{', '.join(map(repr, signature.output_names))}"
                )

    def predict(
        self, served: Served, inputs: Any, record: RequestRecord, gone: Gone | None = None,
        use_cache: bool = True, timeout_s: float | None = None, arrived: float | None = None,
    ) -> Awaitable[Outputs]:  # fmt: skip
        """Validate ``inputs``, then answer from the cache or the model's runner (awaited).

        ``timeout_s`` shortens the server's request timeout (a gRPC client's deadline, say).
        ``arrived`` (``time.monotonic()``) is when the request reached the server.
        When the model's manifest names a fallback, it answers for a model that fails or is
        too slow, and ``record.guard`` says so (server/fallback.py).
        """
        # Not a coroutine itself: a model without a fallback costs no frame more than answer.
        guard = self.guards.guard(served) if served.guarded else None
        if guard is None:
            return self.answer(served, inputs, record, gone, use_cache, timeout_s, arrived)
        return guard.predict(
            self.answer, self.models(), inputs, record, gone, use_cache, timeout_s, arrived
        )

    async def answer(
        self, served: Served, inputs: Any, record: RequestRecord, gone: Gone | None,
        use_cache: bool, timeout_s: float | None, arrived: float | None,
    ) -> Outputs:  # fmt: skip
        """``predict`` without the fallback: the model's own answer, or its error.

        With a shadow of the model, a copy runs on it once the answer is out.
        """
        batch = validate_inputs(served.model.signature, inputs, served.model.limits)
        if not self.config.limits.allow_non_finite:
            check_finite(batch, served.model.signature.column_names)
        timeout = self.config.limits.request_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, max(timeout_s, 0.0))
        now = time.monotonic()
        served.measured.input.observe(now - record.started)
        deadline = now + timeout
        if self.cache is None or not use_cache or not served.cacheable:
            outputs = await self._infer_now(served, batch, deadline, gone, arrived, record)
        else:
            outputs = await self._cached(self.cache, served, batch, record, gone, deadline, arrived)
        if self.shadows is not None:
            self.shadows.offer(served, batch, outputs, record.request_id)
        return outputs

    async def _cached(
        self, cache: Cache, served: Served, batch: dict[str, np.ndarray], record: RequestRecord,
        gone: Gone | None, deadline: float, arrived: float | None,
    ) -> Outputs:  # fmt: skip
        """From the prediction cache, or computed once for every request asking at once."""
        measured = served.measured
        key = cache_key(
            served.name, served.version, batch, digest=served.digest,
            namespace=self.config.cache_namespace,
        )  # fmt: skip
        looked_at = tracing.now_ns() if record.span is not None else 0
        cached = await cache.get(key)
        if record.span is not None:
            found = {"modelport.cache": "miss" if cached is None else "hit"}
            tracing.phase(record.span, "cache", looked_at, tracing.now_ns(), served.traced | found)
        if cached is not None:
            measured.cache_hit.inc()
            record.cache = "hit"
            self._answered(served, batch, cached, record)
            return cached
        measured.cache_miss.inc()
        record.cache = "miss"
        running = self._computing.get(key)
        if running is not None:  # the same inputs are being computed now: share the answer
            try:
                shared = await asyncio.shield(running)
                self._answered(served, batch, shared, record)
                return shared
            except ConnectionAbortedError:  # its client left, and took the work with it
                return await self._infer_now(served, batch, deadline, gone, arrived, record)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._computing[key] = future
        try:
            outputs = await self._infer_now(served, batch, deadline, gone, arrived, record)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                # The caller was cancelled (a gRPC client that left): waiters compute anew.
                exc = ConnectionAbortedError("the client that computed this left")
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters get it, nobody else needs it
            raise
        finally:
            del self._computing[key]
        future.set_result(outputs)
        evictions = cache.stats.evictions
        await cache.set(key, outputs)
        if cache.stats.evictions > evictions:
            measured.cache_eviction.inc(cache.stats.evictions - evictions)
        return outputs

    async def _infer_now(
        self, served: Served, batch: dict[str, np.ndarray], deadline: float, gone: Gone | None,
        arrived: float | None, record: RequestRecord,
    ) -> Outputs:  # fmt: skip
        measured = served.measured
        self.in_flight += 1
        measured.entered()
        try:
            outputs, timing = await served.runner.run(batch, deadline, gone, arrived, record.span)
        except OverloadedError:
            measured.queue_full.inc()
            raise
        except DeadlineExceededError:
            measured.deadline.inc()
            raise
        finally:
            self.in_flight -= 1
            measured.left()
        measured.queue.observe(timing.queue_s)
        measured.inference.observe(timing.inference_s)
        if record.span is not None:  # from the runner's times: the run ended just now
            ran_from = tracing.seconds_ago_ns(timing.inference_s)
            waited_from = ran_from - int(timing.queue_s * 1e9)
            tracing.phase(record.span, "queue", waited_from, ran_from, served.traced)
            tracing.phase(record.span, "inference", ran_from, tracing.now_ns(), served.traced)
        self._answered(served, batch, outputs, record)
        return outputs

    def _answered(
        self, served: Served, inputs: dict[str, np.ndarray], outputs: Outputs,
        record: RequestRecord,
    ) -> None:  # fmt: skip
        record.computed = time.monotonic()
        if self.predictions is not None:
            self.predictions.offer(served, inputs, outputs, record)

    async def close(self) -> None:
        """Close the cache and unload the models (at shutdown)."""
        if self.cache is not None:
            await self.cache.close()
        if self.registry is not None:
            await self.registry.stop_batching()
            await asyncio.to_thread(self.registry.close)
            log.info("models unloaded")
