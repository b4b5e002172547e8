"""What every door does alike with a request: its id, the token, Cache-Control, and the record
that ends it in the metrics and the access log.

Each door reads these from its own wire (REST headers, gRPC metadata) and hands the plain
values here, so that a request is identified, authorized and logged the same way whichever
door it came through.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from modelport.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidNameError,
    ModelNotFoundError,
    NotStoredError,
    OverloadedError,
    PredictionError,
)
from modelport.server import metrics, tracing

if TYPE_CHECKING:
    from modelport.server.registry import Served

access_log = logging.getLogger("modelport.access")

# Domain errors -> the status label of the metrics and access log: HTTP's codes, which REST
# answers with, so that one query counts every door (status=~"5.." for the server's failures).
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInputError, 400),
    (InvalidNameError, 400),
    (ModelNotFoundError, 404),
    (NotStoredError, 404),
    (OverloadedError, 503),
    (DeadlineExceededError, 504),
    (PredictionError, 500),
)
_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")


def status_of(exc: Exception) -> int:
    """The HTTP status that answers ``exc``: 500 for anything not in the table."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def client_request_id(given: str | None) -> str | None:
    """A client's request id when it is short and plain enough to log and echo, else None."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return None


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <token>``, compared in constant time."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), token.encode())


def cache_wanted(control: str | None) -> bool:
    """``Cache-Control: no-cache`` (or ``no-store``) asks for a fresh computation."""
    return control is None or not (
        {"no-cache", "no-store"} & set(control.replace(",", " ").split())
    )


@dataclass(slots=True)  # one per request: slots make it cheaper to fill in
class RequestRecord:
    """One request, filled in as it goes (which model, whether the cache answered) and
    counted and logged once it has been answered."""

    request_id: str
    started: float  # time.monotonic() when it arrived
    model: str | None = None
    version: str | None = None  # a version number, or "store" for stored predictions
    cache: str | None = None  # "hit" or "miss" when the prediction cache was asked
    computed: float = 0.0  # time.monotonic() when its outputs were ready
    elapsed_s: float = 0.0  # set by finish()
    span: Any = None  # its OpenTelemetry span, when the server traces
    leases: list[Served] | None = None  # versions admitted to (Engine.admit), held till the end
    measured: metrics.ModelMetrics | None = None  # the admitted version's, looked up once
    # A fallback's headers when one guards the model (server/fallback.py): the breaker's state,
    # and why the fallback answered when it did
    guard: dict[str, str] | None = None

    def release(self) -> None:
        """The request no longer needs the versions it was admitted to (a retired version
        drains until none holds it); ``finish`` calls it."""
        if self.leases is not None:
            for served in self.leases:
                served.users -= 1
            self.leases = None

    def finish(self, status: int) -> bool:
        """Count the request in its model's metrics; True when the access log wants its
        line (``log``), which a door then builds."""
        if self.leases is not None:
            self.release()
        now = time.monotonic()
        self.elapsed_s = now - self.started
        if self.model is not None:
            output_s = now - self.computed if self.computed else None
            measured = self.measured or metrics.for_model(self.model, self.version or "")
            measured.finished(status, self.elapsed_s, output_s)
        if self.span is not None:
            tracing.finish(self.span, status, self.model, self.version)
        return access_log.isEnabledFor(logging.INFO)

    def log(self, status: int, fields: dict[str, Any]) -> None:
        """Write the access-log line: ``fields`` (method, path...) and what every door logs."""
        entry = {
            "ts": time.time(),
            "request_id": self.request_id,
            **fields,
            "status": status,
            "duration_ms": round(self.elapsed_s * 1000, 3),
            "pid": os.getpid(),
        }
        if self.model is not None:
            entry["model"], entry["version"] = self.model, self.version
        if self.cache is not None:
            entry["cache"] = self.cache
        access_log.info(orjson.dumps(entry).decode())
