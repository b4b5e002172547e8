"""Running one model version for the server: a bounded queue in front of inference threads.

Inference never runs on the event loop: onnxruntime releases the GIL, so threads give real
parallelism. Requests beyond ``max_queue`` are refused at once, and a request whose deadline
passes while it waits is dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from modelport.errors import DeadlineExceededError, ModelportError, OverloadedError, PredictionError
from modelport.model import Model


@dataclass(frozen=True)
class Timing:
    queue_s: float
    inference_s: float


class Runner:
    """Runs validated batches of one model on ``threads`` inference threads."""

    def __init__(self, model: Model, max_queue: int, threads: int = 1) -> None:
        self.model = model
        self.max_queue = max_queue
        self.threads = threads
        self.pending = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"infer-{model.name}")

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
        self.pending += 1
        enqueued = time.monotonic()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, inputs, enqueued, deadline
            )
            try:
                return await asyncio.wait_for(future, max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                raise DeadlineExceededError(
                    f"no answer from model {self.model.name!r} within the request deadline"
                ) from None
        finally:
            self.pending -= 1

    def _predict(
        self, inputs: dict[str, np.ndarray], enqueued: float, deadline: float
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
        return outputs, Timing(started - enqueued, time.monotonic() - started)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.model.close()
