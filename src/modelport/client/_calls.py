"""What a client call does, written once for ``Client`` and ``AsyncClient``.

Each call is a generator (a *flow*, as HTTPX's auth flows are): it yields a ``Send`` and gets
back the ``httpx.Response``, or has the transport's error thrown in; it yields a ``Sleep``
between retries; it returns the call's answer. A client drives flows with its own HTTP client
and its own sleep, so deadlines, retries, input naming and fallbacks have no I/O in them.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from modelport.client._protocol import (
    Outputs,
    Version,
    decode_outputs,
    encode_request,
    error_from_response,
    error_from_transport,
    full_url,
    is_table,
    model_path,
    read_answer,
    single_input_name,
    table_inputs,
)
from modelport.errors import (
    DeadlineExceededError,
    ModelportError,
    OverloadedError,
    PredictionError,
    ServiceUnreachableError,
)

# An array, a dict of arrays, a DataFrame, or a list of {column: value} rows.
Inputs: TypeAlias = "npt.ArrayLike | Mapping[str, npt.ArrayLike] | Any"
FallbackFunction: TypeAlias = Callable[[str, Inputs, ModelportError], Mapping[str, npt.ArrayLike]]
Fallback: TypeAlias = "FallbackFunction | Mapping[str, npt.ArrayLike] | None"

# The service is down, slow or failing: what a fallback stands in for. 4xx errors are the
# caller's to fix, so they are always raised.
_RETRIED = (OverloadedError, ServiceUnreachableError)
_OUTAGES = (OverloadedError, DeadlineExceededError, PredictionError, ServiceUnreachableError)
_JSON = {"Content-Type": "application/json"}
# A transport of the other kind than its client's: what to say, by the kind the client wants.
_OTHER_KIND = {
    httpx.BaseTransport: (
        "is not a blocking httpx transport (it is async only): "
        "pass it to modelport.AsyncClient, or give Client an httpx.BaseTransport"
    ),
    httpx.AsyncBaseTransport: (
        "is not an async httpx transport: "
        "pass it to modelport.Client, or give AsyncClient an httpx.AsyncBaseTransport"
    ),
}

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send one request; the flow gets the response back, or the transport error thrown in."""

    method: str
    path: str
    body: bytes | None
    timeout_s: float

    @property
    def headers(self) -> dict[str, str]:
        headers = _JSON if self.body is not None else {}
        if "opentelemetry.trace" in sys.modules:  # the app traces: its trace goes on with us
            from opentelemetry.propagate import inject

            headers = dict(headers)
            inject(headers)
        return headers


@dataclass(frozen=True)
class Sleep:
    """Wait before the next attempt; the flow is resumed with ``next()``."""

    seconds: float


Flow: TypeAlias = Generator["Send | Sleep", httpx.Response, T]


def retry_delay_s(
    attempt: int, backoff_s: float, retry_after_s: float, remaining_s: float
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (0-based), or None to give up now.

    Exponential backoff with up to 10% jitter; a server's Retry-After wins when it is longer.
    A wait that would not leave time for another attempt is not worth starting.
    """
    delay = max(backoff_s * 2**attempt * (1 + 0.1 * random.random()), retry_after_s)
    return delay if delay < remaining_s else None


class Budget:
    """One call's deadline and retries."""

    def __init__(self, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.timeout_s, self.retries_left, self.backoff_s = timeout_s, retries, backoff_s
        self.deadline = time.monotonic() + timeout_s
        self.attempt = 0

    def remaining_s(self, url: str) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{url} did not answer within timeout_s={self.timeout_s:g}")
        return remaining

    def retry_delay_s(self, error: ModelportError) -> float | None:
        """How long to wait before retrying after ``error``; None means raise it."""
        if not isinstance(error, _RETRIED) or self.retries_left <= 0:
            return None
        retry_after_s = getattr(error, "retry_after_s", 0.0)
        delay = retry_delay_s(
            self.attempt, self.backoff_s, retry_after_s, self.deadline - time.monotonic()
        )
        if delay is not None:
            self.retries_left -= 1
            self.attempt += 1
        return delay


@dataclass(frozen=True)
class Options:
    """What both clients are built with, checked once."""

    timeout_s: float
    retries: int
    backoff_s: float
    fallback: Fallback

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0")

    def budget(self) -> Budget:
        return Budget(self.timeout_s, self.retries, self.backoff_s)

    def fall_back(self, name: str, inputs: Inputs, error: ModelportError) -> Outputs:
        """The fallback's answer to a failed predict, or ``error`` raised when there is none."""
        if self.fallback is None:
            raise error
        answer = self.fallback(name, inputs, error) if callable(self.fallback) else self.fallback
        return {key: np.asarray(value) for key, value in answer.items()}  # as the service's


def check_transport(transport: object, kind: type[Any]) -> None:
    """TypeError at once for a transport that is not a ``kind``, naming the client it suits."""
    if transport is not None and not isinstance(transport, kind):
        raise TypeError(f"{type(transport).__name__} {_OTHER_KIND[kind]}")


class Calls:
    """The flows of one client, with what they remember: each model's single input name."""

    def __init__(self, base_url: httpx.URL, options: Options) -> None:
        self.base_url = base_url
        self.options = options
        self._input_names: dict[tuple[str, Version], str] = {}
        self._metadata_of: dict[tuple[str, Version], dict[str, Any]] = {}

    def predict(
        self, name: str, inputs: Inputs, version: Version, outputs: Sequence[str] | None
    ) -> Flow[Outputs]:
        budget, path = self.options.budget(), model_path(name, version, "/infer")
        try:
            if isinstance(inputs, Mapping):
                named = inputs
            elif is_table(inputs):  # typed by the model's metadata
                named = table_inputs((yield from self._metadata(name, version, budget)), inputs)
            else:
                named = {(yield from self._single_input_name(name, version, budget)): inputs}
            answer = yield from self._request("POST", path, budget, encode_request(named, outputs))
        except _OUTAGES as error:
            return self.options.fall_back(name, inputs, error)
        return decode_outputs(answer, path)

    def metadata(self, name: str, version: Version) -> Flow[dict[str, Any]]:
        path = model_path(name, version)
        answer: dict[str, Any] = yield from self._request("GET", path, self.options.budget())
        return answer

    def probe(self, path: str) -> Flow[bool]:
        """One attempt; False when the service cannot be reached."""
        try:
            response = yield Send("GET", path, None, self.options.timeout_s)
        except httpx.TransportError:
            return False
        return response.is_success

    def _single_input_name(self, name: str, version: Version, budget: Budget) -> Flow[str]:
        if (name, version) not in self._input_names:
            metadata = yield from self._metadata(name, version, budget)
            self._input_names[name, version] = single_input_name(metadata, name)
        return self._input_names[name, version]

    def _metadata(self, name: str, version: Version, budget: Budget) -> Flow[dict[str, Any]]:
        if (name, version) not in self._metadata_of:
            metadata = yield from self._request("GET", model_path(name, version), budget)
            self._metadata_of[name, version] = metadata
        return self._metadata_of[name, version]

    def _request(
        self, method: str, path: str, budget: Budget, body: bytes | None = None
    ) -> Flow[Any]:
        url = full_url(self.base_url, path)
        while True:
            try:
                response = yield Send(method, path, body, budget.remaining_s(url))
            except httpx.TransportError as exc:
                error = error_from_transport(exc, url, budget.timeout_s)
            else:
                if response.is_success:
                    return read_answer(response)
                error = error_from_response(response)
            delay = budget.retry_delay_s(error)
            if delay is None:
                raise error
            yield Sleep(delay)
