"""Running one model version for the server: a bounded queue in front of inference threads.

Inference runs on threads (onnxruntime releases the GIL, so they run in parallel). With
batching on, queued requests are combined into one call (see modelport.batching) and each gets
back exactly its own rows. Without it, a model so fast that handing work to a thread costs more
than the work (estimated under ``inline_below_s`` from the measured time per row) runs on the
event loop, which it then holds for less than that. Requests beyond ``max_queue`` are refused
at once, and a request whose deadline passes while it waits is dropped before inference.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from modelport.batching import Batcher, LatencyTarget
from modelport.config import BatchingConfig
from modelport.errors import DeadlineExceededError, ModelportError, OverloadedError, PredictionError
from modelport.model import Model, measure_costs
from modelport.server import tracing

INLINE_BELOW_S = 100e-6  # about the cost of one thread hand-off on a busy core
WATCH_AFTER_S = 0.05  # work that waits longer looks out for its client leaving
SWEEP_S = 0.01  # how often waiting work is checked for its deadline and its client
_WARMUP_CALLS = 8  # calls measured on threads before any runs inline
_DRIFT = 1.05  # how fast the estimate of a model's cost may rise, a call

Outputs = dict[str, np.ndarray]
Gone = Callable[[], Awaitable[object]]  # resolves when the caller has gone away


class Timing(NamedTuple):  # NamedTuples: one of each per request, cheap to make
    queue_s: float
    inference_s: float


class _Job(NamedTuple):
    inputs: dict[str, np.ndarray]
    rows: int
    enqueued: float
    deadline: float
    trace: Any = None  # the request's span, when the server traces: a batch links to it


def _withdraw(
    future: asyncio.Future[tuple[Outputs, Timing]], watcher: asyncio.Future[object]
) -> None:
    if not watcher.cancelled():  # the client left
        future.cancel()


class _Waiting:
    """Work handed to a thread or the batcher, as the sweep sees it."""

    __slots__ = ("deadline", "expired", "gone", "since", "watcher")

    def __init__(self, since: float, deadline: float, gone: Gone | None) -> None:
        self.since = since
        self.deadline = deadline
        self.gone = gone
        self.expired = False
        self.watcher: asyncio.Future[object] | None = None


def batchable(model: Model) -> bool:
    """Whether rows of several requests can be stacked: every tensor has a dynamic first dim."""
    tensors = (*model.signature.inputs, *model.signature.outputs)
    return all(t.shape and t.shape[0] == -1 for t in tensors)


class Runner:
    """Runs validated requests of one model on ``threads`` inference threads."""

    def __init__(
        self,
        model: Model,
        max_queue: int,
        threads: int = 1,
        batching: BatchingConfig | None = None,
        on_batch: Callable[[int, float], None] = lambda rows, seconds: None,
        inline_below_s: float = INLINE_BELOW_S,
    ) -> None:
        self.model = model
        self.max_queue = max_queue
        self.threads = threads
        self.batching = batching
        self.inline_below_s = inline_below_s if batching is None else 0.0
        self.pending = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"infer-{model.name}")
        self._row_s = 0.0  # inference time per row: the least seen lately (see _call)
        self._calls = 0
        self._batcher: Batcher[_Job, tuple[Outputs, Timing]] | None = None
        if batching is not None:
            target = None
            if batching.latency_budget_s is not None:
                costs = measure_costs(model, batching.max_batch_size)
                target = LatencyTarget(batching.latency_budget_s, batching.max_batch_size, costs)
            self._batcher = Batcher(
                self._run_batch, batching, lambda job: job.rows, threads, target=target
            )
        self._on_batch = on_batch
        # Work waiting on a thread or the batcher, and one timer that sweeps it for passed
        # deadlines and clients to watch: two timers a request cost some 15 us under load.
        self._waiting: dict[asyncio.Future[tuple[Outputs, Timing]], _Waiting] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def check_capacity(self) -> None:
        """Raise OverloadedError when the queue is full (503 with Retry-After)."""
        if self.pending >= self.max_queue + self.threads:
            raise OverloadedError(
                f"model {self.model.name!r} is busy: {self.threads} running and "
                f"{self.pending - self.threads} queued, the queue's limit (--max-queue); "
                "retry shortly",
                retry_after_s=1.0,
            )

    async def run(
        self,
        inputs: dict[str, np.ndarray],
        deadline: float,
        gone: Gone | None = None,
        arrived: float | None = None,
        trace: Any = None,
        inline: bool = True,
    ) -> tuple[Outputs, Timing]:
        """Outputs for ``inputs`` (already validated), or Overloaded/DeadlineExceeded.

        ``gone`` resolves when the caller disconnects: queued work is then withdrawn and
        ConnectionAbortedError raised. It is awaited only for work still waiting after
        ``WATCH_AFTER_S``; both are looked at every ``SWEEP_S``. ``arrived``
        (``time.monotonic()``) is when the request reached the server: a batching window
        counts from then. ``inline=False`` never runs on the event loop (a shadow's copy:
        nothing it costs may delay live work).
        """
        self.check_capacity()
        job = _Job(inputs, _rows(inputs), time.monotonic(), deadline, trace)
        warm = self._calls >= _WARMUP_CALLS
        # One inference thread: a fast model runs inline whatever the load. Several: only while
        # they are idle, since busy they run requests in parallel on other cores.
        inline_ok = self.threads == 1 or self.pending == 0
        if inline and warm and inline_ok and self._row_s * job.rows < self.inline_below_s:
            answer = self._predict(job)
            self._on_batch(job.rows, answer[1].inference_s)
            return answer
        self.pending += 1
        loop = asyncio.get_running_loop()
        if self._batcher is not None:
            future = self._batcher.enqueue(job, arrived)
        else:
            future = loop.run_in_executor(self._executor, self._predict, job)
        # The sweep cancels work whose deadline passed, and looks for a client that left only
        # once its work has waited WATCH_AFTER_S (rather than asyncio.wait_for and a watcher
        # task per request). Cancelling a queued job also takes it out of the batcher's queue.
        waiting = self._waiting[future] = _Waiting(job.enqueued, deadline, gone)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._sweep_waiting)
        try:
            result: tuple[Outputs, Timing] = await future
            if self._batcher is None:  # the batch's own run counted it
                self._on_batch(job.rows, result[1].inference_s)
            return result
        except asyncio.CancelledError:
            if waiting.expired:
                raise DeadlineExceededError(
                    f"no answer from model {self.model.name!r} within the request deadline"
                ) from None
            watcher = waiting.watcher
            if watcher is not None and watcher.done() and not watcher.cancelled():
                raise ConnectionAbortedError("the client left; its work was withdrawn") from None
            raise
        finally:
            del self._waiting[future]
            if waiting.watcher is not None:
                waiting.watcher.cancel()
            self.pending -= 1

    def _sweep_waiting(self) -> None:
        now = time.monotonic()
        for future, waiting in self._waiting.items():
            if future.done():
                continue
            if now >= waiting.deadline:
                waiting.expired = True
                future.cancel()
            elif (
                waiting.gone is not None
                and waiting.watcher is None
                and now - waiting.since >= WATCH_AFTER_S
            ):
                waiting.watcher = asyncio.ensure_future(waiting.gone())
                waiting.watcher.add_done_callback(functools.partial(_withdraw, future))
        self._sweep = None
        if self._waiting:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep_waiting)

    async def _run_batch(self, jobs: list[_Job]) -> list[tuple[Outputs, Timing]]:
        loop = asyncio.get_running_loop()
        answers = await loop.run_in_executor(self._executor, self._predict_batch, jobs)
        rows, ran_s = sum(job.rows for job in jobs), answers[0][1].inference_s
        self._on_batch(rows, ran_s)
        if len(jobs) > 1 and tracing.on():
            attributes = {"modelport.model": self.model.name, "modelport.batch_rows": rows}
            start = tracing.seconds_ago_ns(ran_s)
            tracing.batch((job.trace for job in jobs), start, tracing.now_ns(), attributes)
        return answers

    def _predict_batch(self, jobs: list[_Job]) -> list[tuple[Outputs, Timing]]:
        if len(jobs) == 1:
            return [self._predict(jobs[0])]
        started = time.monotonic()
        names = list(jobs[0].inputs)
        merged = {n: np.concatenate([job.inputs[n] for job in jobs]) for n in names}
        outputs = self._call(merged, started, min(job.deadline for job in jobs))
        inference_s = time.monotonic() - started
        total = sum(job.rows for job in jobs)
        if any(len(v) != total for v in outputs.values()):
            raise PredictionError("the model returned outputs without one row per input row")
        offsets = np.cumsum([job.rows for job in jobs])[:-1]
        parts = {name: np.split(value, offsets) for name, value in outputs.items()}
        return [
            (
                {name: parts[name][i] for name in outputs},
                Timing(started - job.enqueued, inference_s),
            )
            for i, job in enumerate(jobs)
        ]

    def _predict(self, job: _Job) -> tuple[Outputs, Timing]:
        started = time.monotonic()
        outputs = self._call(job.inputs, started, job.deadline)
        return outputs, Timing(started - job.enqueued, time.monotonic() - started)

    def _call(self, inputs: dict[str, np.ndarray], started: float, deadline: float) -> Outputs:
        if started >= deadline:
            raise DeadlineExceededError(
                f"the request deadline passed while waiting for model {self.model.name!r}"
            )
        try:
            outputs = self.model.runtime.predict(inputs)
        except ModelportError:
            raise
        except Exception as exc:
            raise PredictionError(f"{type(exc).__name__}: {exc}") from exc
        per_row = (time.monotonic() - started) / max(_rows(inputs), 1)
        # The least time seen, let rise 5% a call: a call slowed by a preemption, or by waiting
        # for the GIL on a busy event loop, says nothing of the model. An average would carry
        # one such call over the inline threshold, and on a thread every call waits for the GIL
        # and looks slow, so the model would stay there. A model really slower gets there in
        # some 50 calls.
        self._row_s = per_row if self._calls == 0 else min(per_row, self._row_s * _DRIFT)
        self._calls += 1
        return outputs

    def warm_up(self, inputs: dict[str, np.ndarray], calls: int) -> list[Outputs]:
        """Run ``inputs`` ``calls`` times on the inference threads, at once, and wait (from
        any thread but the event loop's): each thread meets the model before requests do."""
        forever = float("inf")
        futures = [
            self._executor.submit(self._call, inputs, time.monotonic(), forever)
            for _ in range(calls)
        ]
        try:
            return [future.result() for future in futures]
        finally:
            # Forgotten: whether a model may run inline is judged on real requests only (a
            # code model fast on its sample may be slow on what clients send).
            self._calls, self._row_s = 0, 0.0

    async def stop_batching(self) -> None:
        """Stop the batcher's workers and their timers (at shutdown, before ``close``)."""
        if self._batcher is not None:
            await self._batcher.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.model.close()


def _rows(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
