"""``AsyncClient``: the asyncio client, driving the flows of ``_calls`` with httpx."""

from __future__ import annotations

import asyncio
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


class AsyncClient:
    """The asyncio twin of ``Client``: same arguments, same behaviour, awaitable methods.

        async with modelport.AsyncClient("http://127.0.0.1:8000") as client:
            outputs = await client.predict("digits", x)

    ``transport`` (an ``httpx.AsyncBaseTransport``) is handed to the ``httpx.AsyncClient``
    underneath. With ``httpx.ASGITransport`` it calls a service in this process, no socket
    involved; that transport runs no ASGI lifespan, so load the models first:

        app = create_app(Path("models"))
        app.registry = load_registry(Path("models"), app.config)  # modelport.server.registry
        transport = httpx.ASGITransport(app=app)
        async with modelport.AsyncClient("http://localhost", transport=transport) as client:
            outputs = await client.predict("digits", x)

    (A service without a token answers only requests whose Host is localhost or a loopback
    address, in process too.)

    A blocking-only transport raises TypeError here.
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        check_transport(transport, httpx.AsyncBaseTransport)
        options = Options(timeout_s, retries, backoff_s, fallback)
        self._http = httpx.AsyncClient(
            base_url=url, headers=auth_headers(token), transport=transport
        )
        self._calls = Calls(self._http.base_url, options)

    async def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> Outputs:
        """Run model ``name`` on ``inputs``; see ``Client.predict``."""
        return await self._run(self._calls.predict(name, inputs, version, outputs))

    async def metadata(self, name: str, version: Version = None) -> dict[str, Any]:
        """A model's name, versions, platform, inputs and outputs."""
        return await self._run(self._calls.metadata(name, version))

    async def live(self) -> bool:
        """Whether the service is up; one attempt, False when it cannot be reached."""
        return await self._run(self._calls.probe("/v2/health/live"))

    async def ready(self) -> bool:
        """Whether the service takes requests now; one attempt, False when unreachable."""
        return await self._run(self._calls.probe("/v2/health/ready"))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = next(flow)
                    continue
                try:
                    response = await self._http.request(
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
