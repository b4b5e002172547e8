"""``Client``: the blocking client, driving the flows of ``_calls`` with httpx."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from modelport.client._calls import (
    Calls,
    Fallback,
    Flow,
    Inputs,
    Options,
    Sleep,
    check_transport,
)
from modelport.client._protocol import Outputs, Version, auth_headers

T = TypeVar("T")


class Client:
    """A blocking client for a modelport service.

        client = modelport.Client("http://127.0.0.1:8000", timeout_s=2.0, fallback=default)
        client.predict("digits", x)["label"]
        client.predict("churn", frame)      # a DataFrame, or [{"plan": "pro", ...}, ...]

    ``timeout_s`` bounds a whole call, retries and waits included. Overload (503), a lost
    connection and a proxy's 502 are retried ``retries`` times with exponential backoff
    from ``backoff_s``, honouring Retry-After when the deadline allows; 4xx never are. A
    service that cannot be reached at all raises ServiceUnreachableError (a ConnectionError).
    A model with one input per column takes a DataFrame or a list of ``{column: value}`` rows,
    typed by its metadata (fetched once).
    ``token`` is sent as ``Authorization: Bearer``. ``fallback`` (a mapping of array-likes, or a
    function ``(name, inputs, error) -> mapping``; its values come back as arrays) answers
    ``predict`` when the service is down, too slow or failing (ServiceUnreachableError,
    OverloadedError, DeadlineExceededError, PredictionError); without it those are raised.
    InvalidInputError (400) and ModelNotFoundError (404) are always raised.

    ``transport`` (an ``httpx.BaseTransport``) is handed to the ``httpx.Client`` underneath,
    to answer without a network in tests of your own code:

        stub = httpx.MockTransport(lambda request: httpx.Response(503))
        modelport.Client("http://localhost", transport=stub, fallback=default).predict("digits", x)

    httpx runs an ASGI app, such as ``create_app``'s service, only from asyncio: call one in
    process with ``AsyncClient`` and ``httpx.ASGITransport``, or serve it on a free port with
    ``modelport.testing.run_server``. An async-only transport raises TypeError here.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        token: str | None = None,
        fallback: Fallback = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        check_transport(transport, httpx.BaseTransport)
        options = Options(timeout_s, retries, backoff_s, fallback)
        self._http = httpx.Client(base_url=url, headers=auth_headers(token), transport=transport)
        self._calls = Calls(self._http.base_url, options)

    def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> Outputs:
        """Run model ``name`` on ``inputs``: one array for a single-input model, else a dict.

            client.predict("digits", {"input": x}, version=2, outputs=["label"])

        Returns the outputs (all, or those named) as arrays keyed by name.
        """
        return self._run(self._calls.predict(name, inputs, version, outputs))

    def metadata(self, name: str, version: Version = None) -> dict[str, Any]:
        """A model's name, versions, platform, inputs and outputs: ``client.metadata("digits")``."""
        return self._run(self._calls.metadata(name, version))

    def live(self) -> bool:
        """Whether the service is up; one attempt, False when it cannot be reached."""
        return self._run(self._calls.probe("/v2/health/live"))

    def ready(self) -> bool:
        """Whether the service takes requests now; one attempt, False when unreachable."""
        return self._run(self._calls.probe("/v2/health/ready"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = next(flow)
                    continue
                try:
                    response = self._http.request(
                        step.method,
                        step.path,
                        content=step.body,
                        headers=step.headers,
                        timeout=step.timeout_s,
                    )
                except httpx.TransportError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
        except StopIteration as done:
            answer: T = done.value
            return answer
        finally:
            flow.close()
