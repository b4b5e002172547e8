"""Running one model version for the server: a bounded queue in front of inference threads.

Inference runs on threads (onnxruntime releases the GIL, so they run in parallel) except when
the model is so fast that handing work to a thread would cost more than the work itself: a
call estimated under ``inline_below_s`` (from the measured time per row) runs on the event
loop, which it then holds for less than that. Requests beyond ``max_queue`` are refused at
once, and a request whose deadline passes while it waits is dropped before inference.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import DeadlineExceededError, ModelportError, OverloadedError, PredictionError
from modelport.model import Model

INLINE_BELOW_S = 100e-6  # about the cost of one thread hand-off on a busy core
_WARMUP_CALLS = 8  # calls measured on threads before any runs inline


@dataclass(frozen=True)
class Timing:
    queue_s: float
    inference_s: float


def _expire(future: asyncio.Future[Any], expired: list[bool]) -> None:
    if not future.done():
        expired.append(True)
        future.cancel()


class Runner:
    """Runs validated batches of one model on ``threads`` inference threads."""

    def __init__(
        self, model: Model, max_queue: int, threads: int = 1, inline_below_s: float = INLINE_BELOW_S
    ) -> None:
        self.model = model
        self.max_queue = max_queue
        self.threads = threads
        self.inline_below_s = inline_below_s
        self.pending = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"infer-{model.name}")
        self._row_s = 0.0  # moving average of inference time per row
        self._calls = 0

    def check_capacity(self) -> None:
        """Raise OverloadedError when the queue is full (503 with Retry-After)."""
        if self.pending >= self.max_queue + self.threads:
            raise OverloadedError(
                f"model {self.model.name!r} has {self.pending} requests in progress, the "
                f"queue limit; retry shortly",
                retry_after_s=1.0,
            )

    async def run(
        self, inputs: dict[str, np.ndarray], deadline: float
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Outputs for ``inputs`` (already validated), or Overloaded/DeadlineExceeded."""
        self.check_capacity()
        rows = _rows(inputs)
        warm = self._calls >= _WARMUP_CALLS
        if warm and self.pending == 0 and self._row_s * rows < self.inline_below_s:
            return self._predict(inputs, time.monotonic(), deadline, rows)
        self.pending += 1
        enqueued = time.monotonic()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, self._predict, inputs, enqueued, deadline, rows
        )
        # A timer rather than asyncio.wait_for, which costs a task per request.
        expired: list[bool] = []
        timer = loop.call_later(max(deadline - enqueued, 0), _expire, future, expired)
        try:
            return await future
        except asyncio.CancelledError:
            if expired:
                raise DeadlineExceededError(
                    f"no answer from model {self.model.name!r} within the request deadline"
                ) from None
            raise
        finally:
            timer.cancel()
            self.pending -= 1

    def _predict(
        self, inputs: dict[str, np.ndarray], enqueued: float, deadline: float, rows: int
    ) -> tuple[dict[str, np.ndarray], Timing]:
        started = time.monotonic()
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
        inference_s = time.monotonic() - started
        per_row = inference_s / max(rows, 1)
        self._row_s = per_row if self._calls == 0 else 0.9 * self._row_s + 0.1 * per_row
        self._calls += 1
        return outputs, Timing(started - enqueued, inference_s)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.model.close()


def _rows(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
