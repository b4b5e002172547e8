"""One Lambda event through the service's own ASGI app, in process, on one event loop.

    app = LambdaApp.start(Path("/models"), lambda_config())   # loads the models (init)
    app(event, context)                                        # -> {"statusCode": 200, ...}

The event becomes an HTTP request for the REST door (server/rest), which parses, validates,
predicts and answers as it does for a socket: the same routes, the same 4xx JSON errors, the
same binary tensor extension. The loop lives as long as the execution environment, and with it
the engine's batchers, runner threads and the in-memory prediction cache; Lambda freezes it
between invocations and thaws it for the next.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.config import ServerConfig, ServerLimits
from modelport.errors import ModelportError
from modelport.server.rest.http import HTTPError, Message
from modelport.server.service import Service
from modelport.serverless.events import (
    MAX_BODY_BYTES,
    Request,
    error_reply,
    event_path,
    lambda_response,
    read_event,
)

log = logging.getLogger("modelport.server")

# What Lambda's environment configures (the function's variables, baked into the image or
# set in template.yaml): read once, at init.
REPOSITORY_ENV = "MODELPORT_REPOSITORY"
_TRUE = ("1", "true", "yes")


def lambda_config(environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The service's configuration on Lambda, from the function's environment variables:
    ``MODELPORT_TRUST_CODE``, ``MODELPORT_TRUST_PICKLE`` (1 or true), ``MODELPORT_CACHE``
    (``memory``, the default, ``off`` or a Redis URL). Who may call is API Gateway's or the
    function URL's business (IAM, authorizers): the handler asks no token."""
    environ = environ or {}
    return ServerConfig(
        host="0.0.0.0",  # not loopback: requests come with API Gateway's Host
        no_auth=True,
        version_policy="all",
        trust_code=environ.get("MODELPORT_TRUST_CODE", "").lower() in _TRUE,
        trust_pickle=environ.get("MODELPORT_TRUST_PICKLE", "").lower() in _TRUE,
        cache=environ.get("MODELPORT_CACHE", "memory"),
        limits=ServerLimits(max_body_bytes=MAX_BODY_BYTES),
    )


def repository_from(environ: Mapping[str, str]) -> Path:
    """The model repository the function serves: ``MODELPORT_REPOSITORY``."""
    value = environ.get(REPOSITORY_ENV)
    if not value:
        raise ModelportError(
            f"{REPOSITORY_ENV} is not set: the function needs the path of its model repository "
            "(modelport build --lambda and --lambda-zip set it; /models in an image)"
        )
    return Path(value)


class LambdaApp:
    """The service of one execution environment: ``app(event, context)`` answers an event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, service: Service) -> None:
        self.loop = loop
        self.service = service

    @classmethod
    def start(cls, source: Path, config: ServerConfig) -> LambdaApp:
        """Load (and warm up) every model version of ``source``: the function's init."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        service = loop.run_until_complete(_loaded(source, config))
        # What init loaded lives as long as the environment: out of the collector's sight.
        gc.collect()
        gc.freeze()
        return cls(loop, service)

    def __call__(self, event: Any, context: Any = None) -> dict[str, Any]:
        try:
            request = read_event(event)
        except HTTPError as exc:
            payload = "1.0" if isinstance(event, dict) and "httpMethod" in event else "2.0"
            return error_reply(payload, exc)
        request_id = getattr(context, "aws_request_id", None)
        status, headers, body = self.loop.run_until_complete(self._call(request, request_id))
        return lambda_response(request.payload, status, headers, body)

    async def _call(
        self, request: Request, request_id: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path, raw_path = event_path(request)
        headers = request.headers
        if request_id and not any(n == b"x-request-id" for n, _ in headers):
            headers = [*headers, (b"x-request-id", request_id.encode("latin-1", "replace"))]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "https",
            "path": path,
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": headers,
            "client": (request.client, 0) if request.client else None,
            "server": (request.host, 443) if request.host else None,
        }
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.Event().wait()  # a Lambda caller cannot leave halfway: wait forever
            raise AssertionError("unreachable")

        answer: dict[str, Any] = {"status": 500, "headers": [], "body": []}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], message["headers"]
            elif message["type"] == "http.response.body":
                answer["body"].append(message.get("body", b""))

        await self.service(scope, receive, send)
        return answer["status"], list(answer["headers"]), b"".join(answer["body"])


async def _loaded(source: Path, config: ServerConfig) -> Service:
    service = Service(source, config)
    service.registry = await asyncio.to_thread(service.load_models, source)
    log.info("serving %s", ", ".join(service.registry.names()) or "no models")
    return service
