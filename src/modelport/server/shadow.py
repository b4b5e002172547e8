"""Shadowing: copies of live requests run on a candidate version after the answer is sent.

    shadows = Shadows({"churn": 3}, lambda: engine.registry, request_timeout_s=30)
    shadows.offer(served, inputs, outputs, request_id)     # the engine, after each answer

The copy never changes or delays the live answer. ``offer`` only queues it; every ``WINDOW_S``
(or as soon as ``FULL_ROWS`` copies wait) the copies queued for a model run on the candidate
as one batch (rows stacked when every tensor has a dynamic first dimension) on its inference
threads, never on the event loop, and are compared in a few array operations: what a copy
costs the server is a share of one call. Beyond ``max_pending`` copies queued or running,
copies are dropped (counted ``skipped``).

Agreement is counted per request in ``/metrics``: classifier scores (a float output of shape
[-1, classes]) agree when their argmax does, labels and other exact types when equal, other
floats within ``atol``; the largest absolute difference of any float output goes to a
histogram. The last disagreements are kept (inputs and outputs cut short) for
``GET /v2/shadow`` and ``modelport shadow report``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from prometheus_client import Counter, Histogram

from modelport.server import metrics
from modelport.server.registry import Registry, Served
from modelport.server.runner import batchable

log = logging.getLogger("modelport.server")

Outputs = dict[str, np.ndarray]

SHADOW = Counter(
    "modelport_shadow_requests_total",
    "Copies of live requests run on a shadow version, by result: agree, disagree, error, "
    "skipped (the candidate was busy or not served).",
    ["model", "live_version", "candidate_version", "result"],
)
SHADOW_DIFF = Histogram(
    "modelport_shadow_max_abs_diff",
    "Largest absolute difference between the live and the shadow version's float outputs.",
    ["model", "candidate_version"],
    buckets=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0),
)
WINDOW_S = 0.05  # copies queued this long run together (or fewer, once FULL_ROWS are)
FULL_ROWS = 128  # copies queued that make a call worth making at once
MAX_ROWS = 256  # rows of one shadow call
SHOWN_VALUES = 16  # values of each tensor kept with a disagreement


class _Copy(NamedTuple):
    live: Served
    inputs: dict[str, np.ndarray]
    outputs: Outputs
    request_id: str
    rows: int


def compare(live: Outputs, shadow: Outputs, rows: int, atol: float) -> tuple[Any, Any]:
    """Per part of a stacked batch (``rows`` parts: its rows, or 1 for an answer compared
    whole): whether the answers agree, and the largest absolute difference of their floats
    (inf when the shadow's outputs do not even have the same shapes)."""
    agree, worst = np.ones(rows, bool), np.zeros(rows)
    for name, a in live.items():
        b = shadow.get(name)
        if b is None or b.shape != a.shape or a.size % rows:
            return np.zeros(rows, bool), np.full(rows, np.inf)
        a2, b2 = a.reshape(rows, -1), b.reshape(rows, -1)
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            diff = np.abs(a2.astype(np.float64) - b2).max(axis=1, initial=0)
            worst = np.maximum(worst, diff)
            if a.ndim == 2 and a.shape[1] > 1:  # scores per class: the chosen class counts
                agree &= (a.argmax(-1) == b.argmax(-1)).reshape(rows, -1).all(axis=1)
            else:
                agree &= diff <= atol
        else:
            agree &= (a2 == b2).all(axis=1)
    return agree, worst


def _shown(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {"shape": list(a.shape), "data": a.ravel()[:SHOWN_VALUES].tolist()}
        for name, a in arrays.items()
    }


def _rows(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


class Shadows:
    """The shadow of each model that has one; ``offer`` every live answer."""

    def __init__(
        self, targets: dict[str, int], registry: Callable[[], Registry | None],
        request_timeout_s: float, max_pending: int = 1024, kept: int = 100, atol: float = 1e-4,
    ) -> None:  # fmt: skip
        self.targets = targets
        self._registry = registry
        self._timeout_s = request_timeout_s
        self._max_pending = max_pending
        self._atol = atol
        self.disagreements: collections.deque[dict[str, Any]] = collections.deque(maxlen=kept)
        self.counts: dict[tuple[str, str, str], dict[str, int]] = {}
        self._queued: dict[str, list[_Copy]] = {}
        self._running = 0  # copies handed to the candidates and not yet judged
        self._tasks: set[asyncio.Task[None]] = set()
        self._children: dict[tuple[str, ...], Any] = {}

    def offer(
        self, live: Served, inputs: dict[str, np.ndarray], outputs: Outputs, rid: str
    ) -> None:
        candidate = self.targets.get(live.name)
        if candidate is None or candidate == live.version:
            return
        rows = _rows(inputs)
        if not rows:  # nothing to compare
            return
        queued = self._queued.get(live.name)
        if queued is None:
            queued = self._queued[live.name] = []
            asyncio.get_running_loop().call_later(WINDOW_S, self._flush, live.name, candidate)
        if len(queued) + self._running >= self._max_pending:  # the candidate cannot keep up
            self._count(live.name, live.label, str(candidate), "skipped")
            return
        queued.append(_Copy(live, inputs, outputs, rid, rows))
        if len(queued) >= FULL_ROWS:  # a full call's worth: no need to wait for the window
            self._flush(live.name, candidate)

    def _flush(self, name: str, version: int) -> None:
        copies = self._queued.pop(name, [])
        if not copies:  # flushed early, when full
            return
        registry = self._registry()
        candidate = None if registry is None else registry.find(name, version)
        if candidate is None:
            for copy in copies:
                self._count(name, copy.live.label, str(version), "skipped")
            return
        candidate.users += 1  # held: a retired candidate drains its copies like requests
        self._running += len(copies)
        task = asyncio.get_running_loop().create_task(self._run(candidate, copies))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, candidate: Served, copies: list[_Copy]) -> None:
        try:
            stack, waiting = batchable(candidate.model), collections.deque(copies)
            while waiting:
                chunk = [waiting.popleft()]
                rows = chunk[0].rows
                while stack and waiting and rows + waiting[0].rows <= MAX_ROWS:
                    rows += waiting[0].rows
                    chunk.append(waiting.popleft())
                await self._judge(candidate, chunk, rows)
        finally:
            candidate.users -= 1
            self._running -= len(copies)

    async def _judge(self, candidate: Served, chunk: list[_Copy], rows: int) -> None:
        inputs, live = chunk[0].inputs, chunk[0].outputs
        if len(chunk) > 1:  # stacked: every tensor has a dynamic first dimension
            inputs = {n: np.concatenate([c.inputs[n] for c in chunk]) for n in inputs}
            live = {n: np.concatenate([c.outputs[n] for c in chunk]) for n in live}
        stacked = batchable(candidate.model)
        rows = rows if stacked else 1  # an answer of fixed shape is compared whole
        try:
            deadline = time.monotonic() + self._timeout_s
            shadow, _ = await candidate.runner.run(inputs, deadline, inline=False)
        except Exception as exc:
            log.info("shadow %s:%s failed: %s", candidate.name, candidate.label, exc)
            for copy in chunk:
                self._count(candidate.name, copy.live.label, candidate.label, "error")
            return
        agree, worst = compare(live, shadow, rows, self._atol)
        spans = [c.rows for c in chunk] if stacked else [1] * len(chunk)
        starts = np.cumsum([0, *spans[:-1]])
        agreed = np.logical_and.reduceat(agree, starts)  # per copy, in a few array calls
        most = np.maximum.reduceat(worst, starts)
        diff = self._child(SHADOW_DIFF, candidate.name, candidate.label)
        for value in most[np.isfinite(most)].tolist():
            diff.observe(value)
        tally: collections.Counter[tuple[str, str]] = collections.Counter(
            (c.live.label, "agree" if ok else "disagree")
            for c, ok in zip(chunk, agreed.tolist(), strict=True)
        )
        for (live_label, result), count in tally.items():
            self._count(candidate.name, live_label, candidate.label, result, count)
        for i in np.flatnonzero(~agreed).tolist():
            copy, start = chunk[i], int(starts[i])
            end = start + spans[i]
            self.disagreements.append(
                {
                    "at": time.time(), "request_id": copy.request_id, "model": candidate.name,
                    "live_version": copy.live.version, "candidate_version": candidate.version,
                    "max_abs_diff": float(most[i]) if np.isfinite(most[i]) else None,
                    "inputs": _shown(copy.inputs), "live": _shown(copy.outputs),
                    "candidate": _shown({n: v[start:end] for n, v in shadow.items()}),
                }
            )  # fmt: skip

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:  # labels() costs microseconds: once per combination; then counted
            kind = metrics.BulkHistogram if metric is SHADOW_DIFF else metrics.BulkCounter
            child = self._children[key] = kind(metric.labels(*labels))  # as requests are
        return child

    def _count(self, model: str, live: str, candidate: str, result: str, n: int = 1) -> None:
        self._child(SHADOW, model, live, candidate, result).inc(n)
        counts = self.counts.setdefault((model, live, candidate), {})
        counts[result] = counts.get(result, 0) + n

    def report(self) -> dict[str, Any]:
        """What ``GET /v2/shadow`` answers: counts per model and version pair, disagreements."""
        return {
            "shadows": [
                {"model": m, "live_version": lv, "candidate_version": cv, "counts": counts}
                for (m, lv, cv), counts in sorted(self.counts.items())
            ],
            "targets": {m: str(v) for m, v in sorted(self.targets.items())},
            "disagreements": list(self.disagreements),
        }

    async def close(self) -> None:
        """Let the copies in flight finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout_s)
