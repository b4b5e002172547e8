"""Shadowing: copies of live requests run on a candidate version after the answer is sent.

    shadows = Shadows({"churn": 3}, engine_registry)   # the engine offers it every answer

The copy never changes or delays the live answer: it is scheduled once the live outputs exist
and runs when the door has handed its answer on; it is dropped (counted ``skipped``) when the
candidate already has ``max_pending`` copies waiting. Agreement is counted in ``/metrics``:
per request, classifier scores (a float output of shape [-1, classes]) agree when their argmax
does, labels and other exact types when equal, other floats when within ``atol``; the largest
absolute difference of any float output goes to a histogram. The last disagreements are kept
(inputs and outputs cut short) for ``GET /v2/shadow`` and ``modelport shadow report``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from modelport.server.registry import Registry, Served

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
SHOWN_VALUES = 16  # values of each tensor kept with a disagreement


def compare(live: Outputs, shadow: Outputs, atol: float) -> tuple[bool, float]:
    """Whether two answers agree, and the largest absolute difference of their floats."""
    agree, worst = True, 0.0
    for name, a in live.items():
        b = shadow.get(name)
        if b is None or b.shape != a.shape:
            return False, float("inf")
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            worst = max(worst, diff)
            if a.ndim == 2 and a.shape[1] > 1:  # scores per class: the chosen class counts
                agree = agree and bool(np.array_equal(a.argmax(1), b.argmax(1)))
            else:
                agree = agree and diff <= atol
        else:
            agree = agree and bool(np.array_equal(a, b))
    return agree, worst


def _shown(arrays: Outputs) -> dict[str, Any]:
    return {
        name: {"shape": list(a.shape), "data": a.ravel()[:SHOWN_VALUES].tolist()}
        for name, a in arrays.items()
    }


class Shadows:
    """The shadow of each model that has one; ``offer`` every live answer."""

    def __init__(
        self, targets: dict[str, int], registry: Callable[[], Registry | None],
        request_timeout_s: float, max_pending: int = 8, kept: int = 100, atol: float = 1e-4,
    ) -> None:  # fmt: skip
        self.targets = targets
        self._registry = registry
        self._timeout_s = request_timeout_s
        self._max_pending = max_pending
        self._atol = atol
        self.disagreements: collections.deque[dict[str, Any]] = collections.deque(maxlen=kept)
        self.counts: dict[tuple[str, str, str], dict[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._children: dict[tuple[str, str, str, str], Any] = {}

    def offer(self, live: Served, batch: dict[str, np.ndarray], outputs: Outputs, rid: str) -> None:
        candidate_version = self.targets.get(live.name)
        if candidate_version is None or candidate_version == live.version:
            return
        registry = self._registry()
        candidate = None if registry is None else registry.find(live.name, candidate_version)
        if candidate is None or candidate.runner.pending >= self._max_pending:
            self._count(live, str(candidate_version), "skipped")
            return
        candidate.users += 1  # held: a retired candidate drains its copies like requests
        task = asyncio.get_running_loop().create_task(
            self._run(live, candidate, batch, outputs, rid)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, live: Served, candidate: Served, batch: dict[str, np.ndarray], outputs: Outputs,
        rid: str,
    ) -> None:  # fmt: skip
        try:
            await asyncio.sleep(0)  # the door sends its answer first
            deadline = time.monotonic() + self._timeout_s
            shadow, _ = await candidate.runner.run(batch, deadline, inline=False)
        except Exception as exc:
            log.info("shadow %s:%s failed on %s: %s", live.name, candidate.label, rid, exc)
            self._count(live, candidate.label, "error")
            return
        finally:
            candidate.users -= 1
        agree, worst = compare(outputs, shadow, self._atol)
        if worst != float("inf"):
            SHADOW_DIFF.labels(live.name, candidate.label).observe(worst)
        self._count(live, candidate.label, "agree" if agree else "disagree")
        if not agree:
            self.disagreements.append(
                {
                    "at": time.time(), "request_id": rid, "model": live.name,
                    "live_version": live.version, "candidate_version": candidate.version,
                    "max_abs_diff": worst if worst != float("inf") else None,
                    "inputs": _shown(batch), "live": _shown(outputs), "candidate": _shown(shadow),
                }
            )  # fmt: skip

    def _count(self, live: Served, candidate: str, result: str) -> None:
        labels = (live.name, live.label, candidate, result)
        child = self._children.get(labels)
        if child is None:  # labels() costs microseconds: once per combination
            child = self._children[labels] = SHADOW.labels(*labels)
        child.inc()
        counts = self.counts.setdefault(labels[:3], {})
        counts[result] = counts.get(result, 0) + 1

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
