"""The little HTTP plumbing the service needs on raw ASGI: requests, responses, errors.

Raw ASGI rather than a framework: the hot path is one dict lookup and a few awaits, which is
where Python model servers otherwise lose most of their time (benchmarks/serving.py measures it).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelport.errors import OverloadedError, PredictionError
from modelport.server.requests import status_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# An ASGI scope extension for a server that can time the wait for a request's body itself
# (our HTTP/1.1 protocol): the app sets ``["at"]``, a time.monotonic() deadline, before it reads
# the body, and receive() raises TimeoutError past it. Without it the app times the read.
BODY_DEADLINE = "modelport.body_deadline"


class HTTPError(Exception):
    """An error that already knows its status (auth, size, method, draining)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # The headers as sent, made on first use: a response kept for identical requests (see
    # answers.py) is sent many times.
    encoded: list[tuple[bytes, bytes]] | None = field(default=None, repr=False, compare=False)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status, orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), headers=headers or {}
    )


def error_response(exc: Exception, request_id: str) -> Response:
    """The status and ``{"error": ...}`` body for ``exc``; 500s never show internals."""
    if isinstance(exc, HTTPError):
        return json_response({"error": str(exc)}, exc.status, exc.headers)
    status = status_of(exc)
    if status != 500:
        headers = {}
        if isinstance(exc, OverloadedError):
            headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        return json_response({"error": str(exc)}, status, headers)
    if isinstance(exc, PredictionError):  # the model's own words may hold paths, secrets, names
        message = (
            "the model failed on this request; the server log has the details "
            f"(request id {request_id})"
        )
        return json_response({"error": message}, 500)
    message = f"internal server error; the server log has the details (request id {request_id})"
    return json_response({"error": message}, 500)


class Deadline:
    """Cancel the current task after ``seconds``; ``expired`` tells whether that happened.

    A timer on the loop, not asyncio.wait_for, which costs a task per request; a class, not a
    generator context manager, which costs a few microseconds more on every request.
    """

    __slots__ = ("_seconds", "_task", "_timer", "expired")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self.expired = False

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer = task.get_loop().call_later(self._seconds, self._expire)
        return self

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        if self.expired and hasattr(self._task, "uncancel"):
            self._task.uncancel()  # the cancellation was ours and has been handled


async def read_body(receive: Receive, length: int | None, limit: int, hint: str = "") -> bytes:
    """The whole request body, refusing more than ``limit`` bytes before reading them;
    ``hint`` ends the refusal's message."""
    if length is not None and length > limit:
        raise HTTPError(413, f"request body of {length} bytes is over the limit of {limit}{hint}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit} bytes{hint}")
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk  # mostly one message
        chunks.append(chunk)


# Content-Encoding -> zlib's wbits. "deflate" is zlib-wrapped (RFC 9110), as tritonclient
# sends it; raw deflate, which some clients send instead, is tried when that fails.
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_INLINE_INFLATE_BYTES = 1024  # inflates to at most ~1 MiB: under a millisecond on the loop


async def decoded(body: bytes, encoding: str | None, limit: int, hint: str = "") -> bytes:
    """``body`` decompressed as its ``Content-Encoding`` says, never to more than ``limit``
    bytes: a small bomb is refused (413) after ``limit`` bytes, not after all of them."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    wbits = _CODINGS.get(coding)
    if wbits is None:
        raise HTTPError(
            415, f"Content-Encoding {coding[:40]!r} is not supported; send gzip, deflate or none"
        )
    if len(body) <= _INLINE_INFLATE_BYTES:
        return _inflate(body, coding, wbits, limit, hint)
    return await asyncio.to_thread(_inflate, body, coding, wbits, limit, hint)


def _inflate(body: bytes, coding: str, wbits: int, limit: int, hint: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, limit + 1)  # one bounded step: at most limit + 1
    except zlib.error as exc:
        if coding == "deflate" and wbits > 0:
            return _inflate(body, coding, -zlib.MAX_WBITS, limit, hint)
        raise HTTPError(400, f"the request body is not valid {coding} data ({exc})") from None
    if len(plain) > limit:
        raise HTTPError(
            413, f"the request body decompresses to over the limit of {limit} bytes{hint}"
        )
    if not inflater.eof or inflater.unused_data:
        raise HTTPError(400, f"the request body is not one complete {coding} stream")
    return plain


async def send_response(send: Send, response: Response, extra: list[tuple[bytes, bytes]]) -> None:
    encoded = response.encoded
    if encoded is None:
        encoded = response.encoded = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((k.encode(), v.encode()) for k, v in response.headers.items()),
        ]
    start = {"type": "http.response.start", "status": response.status, "headers": encoded + extra}
    await send(start)
    await send({"type": "http.response.body", "body": response.body})


_HEADERS = "modelport.headers"  # scope key: the request's headers by name, made on first use


def headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by name (in lower case), the first value of each: one dict made
    on first use, so that a request's few lookups are ``.get`` calls rather than scans."""
    table = scope.get(_HEADERS)
    if table is None:
        table = scope[_HEADERS] = dict(reversed(scope["headers"]))
    return table


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header ``name`` (in lower case), or None."""
    value = headers(scope).get(name)
    return None if value is None else bytes(value).decode("latin-1")
