"""Dynamic batching as a pure asyncio component: single submissions in, batched calls out.

    batcher = Batcher(handler, BatchingConfig(max_batch_size=32, max_delay_s=0.002))
    result = await batcher.submit(item)      # handler(list_of_items) -> list_of_results

A batch closes when it holds ``max_batch_size`` rows (an item counts by ``size_of``), reaches
one of ``preferred_batch_sizes``, or ``max_delay_s`` after its first item, whichever comes
first. With ``max_delay_s = 0`` a lone request never waits: batches form from what queued
while the model was busy. When a batch fails, its items are retried one by one, so only the
items that really fail get the error, unless the first two alone fail the same way: then the
failure is the model's, not an item's, and every item gets it without more calls. Items whose
caller has gone (cancelled) are dropped before they reach the handler. No HTTP in here.

The window is timed to the microsecond on Linux (a timerfd the loop watches): loop timers are
whole milliseconds under uvloop, where a 0.4 ms window would not wait at all and 1.4 ms would
wait 1 ms counted from the start of the loop's turn, not from the request.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
from collections import deque
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
    queued: float  # time.monotonic(): a window counts from its first item's


class Batcher(Generic[T, R]):
    """Feeds ``handler`` batches built from ``submit`` calls, ``concurrency`` at a time."""

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[list[R]]],
        config: BatchingConfig,
        size_of: Callable[[T], int] = lambda _: 1,
        concurrency: int = 1,
        on_batch: Callable[[int], None] = lambda _: None,
        target: LatencyTarget | None = None,
    ) -> None:
        self._handler = handler
        self._config = config
        self._size_of = size_of
        self._concurrency = concurrency
        self._on_batch = on_batch
        self.target = target
        self._queue: deque[_Pending[T, R]] = deque()
        # Workers waiting for items. While one is filling a batch, items are its own: a
        # request joins the open batch rather than starting a batch of its own.
        self._filling: list[asyncio.Future[bool]] = []
        self._idle: list[asyncio.Future[bool]] = []
        self._open = 0  # batches being filled
        self._workers: list[asyncio.Task[None]] = []

    async def submit(self, item: T) -> R:
        """The handler's result for ``item``, or the exception it raised for it."""
        return await self.enqueue(item)

    def enqueue(self, item: T, since: float | None = None) -> asyncio.Future[R]:
        """Queue ``item``; cancelling the returned future withdraws it if not yet running.

        ``since`` (``time.monotonic()``) is when the item's request reached the server, if
        earlier: a window opened by this item counts from then, so that batching adds at most
        the window to the request's time in the server.
        """
        loop = asyncio.get_running_loop()
        if not self._workers:  # asyncio objects belong to the loop that runs us
            self._workers = [loop.create_task(self._work()) for _ in range(self._concurrency)]
        if self.target is not None:
            self.target.arrived(loop.time())
        future: asyncio.Future[R] = loop.create_future()
        queued = time.monotonic() if since is None else since
        self._queue.append(_Pending(item, self._size_of(item), future, queued))
        if self._filling:
            _release(self._filling.pop())
        elif self._idle and not self._open:
            _release(self._idle.pop())
        return future

    async def _wait(
        self, waiters: list[asyncio.Future[bool]], timer: _Timer | None = None, until: float = 0
    ) -> bool:
        """Until an item is queued (False), or with a timer until ``until`` (True). A future
        and a timer: ``asyncio.wait_for`` would cost a task and a cancellation every time."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        if timer is not None:
            timer.arm(until, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.disarm()
            if waiter in waiters:
                waiters.remove(waiter)

    async def _work(self) -> None:
        timer = _timer(asyncio.get_running_loop())
        try:
            while True:
                while not self._queue:
                    await self._wait(self._idle)
                self._open += 1
                try:
                    batch = await self._fill(timer)
                finally:
                    self._open -= 1
                if self._queue and self._idle:  # the rest is another worker's batch
                    _release(self._idle.pop())
                await self._run([p for p in batch if not p.future.done()])
        finally:
            timer.close()

    async def _fill(self, timer: _Timer) -> list[_Pending[T, R]]:
        """A batch from the queue's head: full, of a preferred size, or its window closed."""
        queue, config = self._queue, self._config
        first = queue.popleft()
        if self.target is not None:
            max_size, delay_s = self.target.choose()
        else:
            max_size, delay_s = config.max_batch_size, config.max_delay_s
        batch, rows = [first], first.size
        closes_at = first.queued + delay_s
        while rows < max_size and rows not in config.preferred_batch_sizes:
            if not queue:
                if time.monotonic() >= closes_at or await self._wait(
                    self._filling, timer, closes_at
                ):
                    break  # the window closed
                continue
            if rows + queue[0].size > max_size:
                break  # it opens the next batch
            pending = queue.popleft()
            batch.append(pending)
            rows += pending.size
        return batch

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        if not batch:
            return
        rows = sum(p.size for p in batch)
        self._on_batch(rows)
        started = asyncio.get_running_loop().time()
        try:
            results = await self._handler([p.item for p in batch])
            if self.target is not None:
                self.target.observe(rows, asyncio.get_running_loop().time() - started)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch handler returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            # Isolate: only the items that fail on their own fail. But when the first two
            # each fail alone just as the batch did, the failure is the model's (a broken
            # session, no memory), not an item's: the rest get it without a call each.
            probes, rest = batch[:2], batch[2:]
            for pending in probes:
                await self._run([pending])
            if all(_same_failure(p.future, exc) for p in probes):
                for pending in rest:
                    _settle(pending.future, exc=exc)
                return
            for pending in rest:
                await self._run([pending])
            return
        for pending, result in zip(batch, results, strict=True):
            _settle(pending.future, result=result)

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


def _same_failure(future: asyncio.Future[R], exc: Exception) -> bool:
    if not future.done() or future.cancelled():
        return False
    alone = future.exception()
    return type(alone) is type(exc) and str(alone) == str(exc)


def _release(waiter: asyncio.Future[bool], timed_out: bool = False) -> None:
    if not waiter.done():
        waiter.set_result(timed_out)


class _LoopTimer:
    """Times out a waiter at a ``time.monotonic()`` instant with the loop's own timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, when: float, waiter: asyncio.Future[bool]) -> None:
        delay = when - time.monotonic()
        self._handle = self._loop.call_later(delay, _release, waiter, True)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.disarm()


_MAX_LEAD_S = 200e-6


class _TimespecPair(ctypes.Structure):  # struct itimerspec: interval, then value
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]  # fmt: skip


_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME = 1, 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # the values of TFD_NONBLOCK and TFD_CLOEXEC


class _Timerfd:
    """A Linux timerfd on CLOCK_MONOTONIC set to absolute times: Python's own functions from
    3.13, libc's through ctypes before."""

    def __init__(self) -> None:
        if hasattr(os, "timerfd_create"):
            self.fd = os.timerfd_create(time.CLOCK_MONOTONIC, flags=_TFD_FLAGS)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        create, self._settime = libc.timerfd_create, libc.timerfd_settime
        create.argtypes, create.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        self._settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_TimespecPair), ctypes.c_void_p,
        ]  # fmt: skip
        self._settime.restype = ctypes.c_int
        self.fd = create(_CLOCK_MONOTONIC, _TFD_FLAGS)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def set(self, when: float) -> None:
        """Go off at ``when`` (``time.monotonic()``); 0 disarms, and clears an expiry not read."""
        seconds = int(when)
        nanoseconds = max(int((when - seconds) * 1e9), 1) if when else 0
        if hasattr(os, "timerfd_settime_ns"):
            initial = seconds * 1_000_000_000 + nanoseconds
            os.timerfd_settime_ns(self.fd, flags=_TFD_TIMER_ABSTIME, initial=initial)
            return
        spec = _TimespecPair(0, 0, seconds, nanoseconds)
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")


class _FdTimer:
    """The same to the microsecond: a timerfd on ``time.monotonic``'s clock, which the loop
    watches like a socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timerfd = _Timerfd()
        self._fd = self._timerfd.fd
        self._waiter: asyncio.Future[bool] | None = None
        self._when = 0.0  # when the waiter's time is up
        self._set_for = 0.0  # when the timer goes off
        self._lead = 0.0  # how much earlier to set it: the loop wakes this much late
        loop.add_reader(self._fd, self._fired)

    def arm(self, when: float, waiter: asyncio.Future[bool]) -> None:
        self._waiter = waiter
        self._when = when
        self._set(when - self._lead)

    def disarm(self) -> None:
        self._waiter = None
        self._set(0.0)  # also clears an expiry not yet read

    def _set(self, when: float) -> None:
        self._set_for = when
        self._timerfd.set(when)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # disarmed after the loop saw it ready
            return
        # The loop wakes late by the kernel's and its own delay (50-70 us on an idle virtual
        # CPU, measured): the timer is set that much early, the least of it seen lately.
        now = time.monotonic()
        late = now - self._set_for
        self._lead = max(0.0, min(late, self._lead + 0.05 * (late - self._lead), _MAX_LEAD_S))
        if self._waiter is None:
            return
        if now < self._when:  # woke faster than ever: never close a window early
            self._set(self._when)
        else:
            _release(self._waiter, True)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


_Timer = _LoopTimer | _FdTimer


def _timer(loop: asyncio.AbstractEventLoop) -> _Timer:
    if sys.platform == "linux":
        try:
            return _FdTimer(loop)
        except (OSError, AttributeError):  # no timerfd (an old or unusual libc)
            pass
    return _LoopTimer(loop)


def _settle(
    future: asyncio.Future[R], result: R | None = None, exc: Exception | None = None
) -> None:
    if future.done():  # the caller gave up (cancelled) meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class LatencyTarget:
    """Chooses batch size and window to get the most throughput within a latency budget.

    A request can wait for the window, then behind the batch already running, then for its own
    batch: its worst case is about ``window + 2 * cost(batch)``. The largest batch whose cost
    fits keeps the model busiest; the window is spent only when traffic is heavy enough to
    fill it and batches are already combining requests (a lone request is not made to wait
    for company that is not coming). Costs start
    from measurements at load and follow every real batch.
    """

    def __init__(self, budget_s: float, max_batch_size: int, costs_s: dict[int, float]) -> None:
        self.budget_s = budget_s
        self.max_batch_size = max_batch_size
        self.costs_s = dict(costs_s)
        self._gap_s: float | None = None  # moving average of the time between arrivals
        self._last_arrival: float | None = None
        self._last_rows = 0

    def arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap_s = gap if self._gap_s is None else 0.9 * self._gap_s + 0.1 * gap
        self._last_arrival = now

    def observe(self, rows: int, seconds: float) -> None:
        self._last_rows = rows
        known = self.costs_s.get(rows)
        self.costs_s[rows] = seconds if known is None else 0.8 * known + 0.2 * seconds

    def cost_s(self, rows: int) -> float:
        """Measured, or interpolated linearly between the nearest measured sizes."""
        if rows in self.costs_s:
            return self.costs_s[rows]
        sizes = sorted(self.costs_s)
        if not sizes:
            return 0.0
        below = [s for s in sizes if s < rows]
        above = [s for s in sizes if s > rows]
        if not below:
            return self.costs_s[above[0]] * rows / above[0]
        if not above:
            return self.costs_s[below[-1]] * rows / below[-1]
        lo, hi = below[-1], above[0]
        share = (rows - lo) / (hi - lo)
        return self.costs_s[lo] + share * (self.costs_s[hi] - self.costs_s[lo])

    def choose(self) -> tuple[int, float]:
        """(batch size, window in seconds) for the next batch."""
        usable = 0.8 * self.budget_s  # a margin for what the model costs besides inference
        batch = 1
        for size in range(self.max_batch_size, 0, -1):
            if 2 * self.cost_s(size) <= usable:
                batch = size
                break
        slack = max(usable - 2 * self.cost_s(batch), 0.0)
        # Wait only with evidence of company: frequent arrivals, and the last batch combined
        # requests. A lone caller that waits for its own answer (one in flight) never waits.
        if self._gap_s is None or self._gap_s >= slack or self._last_rows <= 1:
            return batch, 0.0
        return batch, min(slack, self._gap_s * (batch - 1))
