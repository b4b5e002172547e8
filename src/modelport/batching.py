"""Dynamic batching as a pure asyncio component: single submissions in, batched calls out.

    batcher = Batcher(handler, BatchingConfig(max_batch_size=32, max_delay_s=0.002))
    result = await batcher.submit(item)      # handler(list_of_items) -> list_of_results

A batch closes when it holds ``max_batch_size`` rows (an item counts by ``size_of``), reaches
one of ``preferred_batch_sizes``, or ``max_delay_s`` after its first item, whichever comes
first. With ``max_delay_s = 0`` a lone request never waits: batches form from what queued
while the model was busy. When a batch fails, its items are retried one by one, so only the
items that really fail get the error. Items whose caller has gone (cancelled) are dropped
before they reach the handler. No HTTP in here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelport.config import BatchingConfig

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """Feeds ``handler`` batches built from ``submit`` calls, ``concurrency`` at a time."""

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[list[R]]],
        config: BatchingConfig,
        size_of: Callable[[T], int] = lambda _: 1,
        concurrency: int = 1,
        on_batch: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._handler = handler
        self._config = config
        self._size_of = size_of
        self._concurrency = concurrency
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._carry: list[_Pending[T, R]] = []
        self._workers: list[asyncio.Task[None]] = []

    @property
    def queued(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + len(self._carry)

    async def submit(self, item: T) -> R:
        """The handler's result for ``item``, or the exception it raised for it."""
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; cancelling the returned future withdraws it if not yet running."""
        if self._queue is None:  # asyncio objects belong to the loop that runs us
            self._queue = asyncio.Queue()
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, self._size_of(item), future))
        return future

    async def _next(self, timeout: float | None) -> _Pending[T, R] | None:
        assert self._queue is not None
        if self._carry:
            return self._carry.pop()
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        config = self._config
        while True:
            first = await self._next(None)
            assert first is not None
            batch, rows = [first], first.size
            closes_at = loop.time() + config.max_delay_s
            while rows < config.max_batch_size and rows not in config.preferred_batch_sizes:
                pending = await self._next(closes_at - loop.time())
                if pending is None:
                    break
                if rows + pending.size > config.max_batch_size:
                    self._carry.append(pending)  # opens the next batch
                    break
                batch.append(pending)
                rows += pending.size
            await self._run([p for p in batch if not p.future.done()])

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        if not batch:
            return
        self._on_batch(sum(p.size for p in batch))
        try:
            results = await self._handler([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch handler returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            for pending in batch:  # isolate: only the items that fail on their own fail
                await self._run([pending])
            return
        for pending, result in zip(batch, results, strict=True):
            _settle(pending.future, result=result)

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


def _settle(
    future: asyncio.Future[R], result: R | None = None, exc: Exception | None = None
) -> None:
    if future.done():  # the caller gave up (cancelled) meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
