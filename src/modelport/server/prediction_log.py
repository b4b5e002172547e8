"""The prediction log's writer: a sample of requests, kept in the background.

    log = PredictionLog(PredictionLogConfig("predictions.db", sample=0.1))
    log.start()                                    # in the server's startup
    log.offer(served, inputs, outputs, record)     # on the request path: a few hundred ns
    log.close()                                    # at shutdown: what is queued is written

``offer`` only queues references to the request's arrays (nothing copies or encodes them on the
event loop); a thread encodes and inserts them in batches. The queue is bounded by the bytes of
its tensors: past ``max_queue_bytes`` records are dropped and counted
(``modelport_prediction_log_total{result="dropped"}``), so a slow or absent database never slows
a request. A batch the database refuses is counted as failed and logged, and the writer goes on.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import Counter

from modelport.batch.database import first_line
from modelport.config import PredictionLogConfig
from modelport.monitor.store import encode, open_log, write
from modelport.server.registry import Served
from modelport.server.requests import RequestRecord

log = logging.getLogger("modelport.server")

LOGGED = Counter(
    "modelport_prediction_log_total",
    "Requests offered to the prediction log, by result: written, dropped (queue full), "
    "failed (the database refused the batch).",
    ["result"],
)
_BATCH_ROWS = 500  # records per INSERT
_WARN_EVERY_S = 60.0

_Record = tuple[float, str, str, str, float, dict[str, np.ndarray], dict[str, np.ndarray], int]


class PredictionLog:
    """Sampled records of requests, written by one background thread."""

    def __init__(self, config: PredictionLogConfig) -> None:
        self.config = config
        self._queue: deque[_Record] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()  # the byte count, shared with the writer
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._engine: Any = None
        self._warned_at = 0.0
        self._written = LOGGED.labels("written")
        self._dropped = LOGGED.labels("dropped")
        self._failed = LOGGED.labels("failed")

    def start(self) -> None:
        """Open the database (creating the table) and start the writer."""
        self._engine = open_log(self.config.url)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        share = f"{self.config.sample:.0%}" if self.config.sample < 1 else "every"
        where = self._engine.url.render_as_string(hide_password=True)
        log.info(
            "logging %s request's predictions to %s (inputs: %s)", share, where, self.config.inputs
        )

    def offer(
        self, served: Served, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
        record: RequestRecord,
    ) -> None:  # fmt: skip
        """Keep this request, if sampled and there is room; never blocks."""
        if self.config.sample < 1.0 and random.random() >= self.config.sample:
            return
        size = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        with self._lock:
            if self._queued_bytes + size > self.config.max_queue_bytes:
                full = True
            else:
                full = False
                self._queued_bytes += size
        if full:
            self._dropped.inc()
            return
        latency_ms = (time.monotonic() - record.started) * 1000
        self._queue.append(
            (time.time(), served.name, served.label, record.request_id, latency_ms, inputs,
             outputs, size)
        )  # fmt: skip

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop the writer."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._engine is not None:
            self._engine.dispose()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.config.flush_s)
            self._wake.clear()
            while self._queue:
                self._write(self._take(_BATCH_ROWS))
            if self._stopping:
                return

    def _take(self, most: int) -> list[_Record]:
        taken = [self._queue.popleft() for _ in range(min(most, len(self._queue)))]
        with self._lock:
            self._queued_bytes -= sum(r[-1] for r in taken)
        return taken

    def _write(self, records: list[_Record]) -> None:
        rows = [self._row(r) for r in records]
        try:
            write(self._engine, rows)
        except Exception as exc:  # the database is down or refuses: count, tell, go on
            self._failed.inc(len(rows))
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning(
                    "prediction log: %d records not written: %s", len(rows), first_line(exc)
                )
            return
        self._written.inc(len(rows))

    def _row(self, record: _Record) -> dict[str, Any]:
        logged_at, model, version, request_id, latency_ms, inputs, outputs, _ = record
        digest = hashlib.sha256()
        for name in sorted(inputs):
            array = inputs[name]
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            text = array.dtype.kind == "O"  # strings: their text, not object pointers
            digest.update(encode({name: array}).encode() if text else array.tobytes())
        first = next(iter(inputs.values()), None)
        return {
            "logged_at": logged_at,
            "model": model,
            "version": version,
            "request_id": request_id,
            "latency_ms": latency_ms,
            "rows": int(first.shape[0]) if first is not None and first.ndim else 1,
            "inputs": encode(inputs) if self.config.inputs == "full" else None,
            "inputs_sha256": digest.hexdigest(),
            "outputs": encode(outputs),
        }
