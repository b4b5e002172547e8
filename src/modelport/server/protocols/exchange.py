"""One request and its answer on an HTTP/1.1 connection: the ASGI receive() and send().

The connection (``H1Protocol`` in http1.py) parses and hands each request's body here; the
app reads it with receive() and answers with send(), which writes one buffer per response.
"""

from __future__ import annotations

import asyncio
import http
import time
from typing import Any, Protocol

import orjson

from modelport.server.rest.http import BODY_DEADLINE


class Connection(Protocol):
    """What an exchange needs of its connection."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    server_state: Any
    write_paused: bool

    async def drain(self) -> None: ...
    def resume_reading(self) -> None: ...
    def finished(self, exchange: Exchange) -> None: ...


BUFFER_BYTES = 64 * 1024  # request body held unread before reading from the socket pauses
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT = {"type": "http.disconnect"}
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_NO_BODY = frozenset((204, 304))


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 599:
            raise RuntimeError(f"the app answered with status {status}, not an HTTP status")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


def closing_answer(status: int, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """An error answer, ``{"error": message}`` as the app's, that closes the connection."""
    body = orjson.dumps({"error": message})
    head = [status_line(status)]
    for name, value in default_headers:
        head += (name, b": ", value, b"\r\n")
    head.append(b"content-type: application/json\r\nconnection: close\r\n")
    if status in (429, 503):  # too many at once: worth another try shortly
        head.append(b"retry-after: 1\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body


class Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one app call."""

    __slots__ = (
        "body_done",
        "buffered",
        "chunked",
        "chunks",
        "complete",
        "conn",
        "disconnected",
        "expect_continue",
        "finished",
        "head",
        "keep_alive",
        "remaining",
        "scope",
        "started",
        "task",
        "waiters",
    )

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool, expect: bool):
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole request body has arrived
        self.body_done = False  # ... and the app has been given all of it
        self.disconnected = False
        self.waiters: list[asyncio.Future[None]] = []
        self.started = False  # http.response.start seen
        self.head: bytes | None = None  # status line and headers, written with the first body
        self.chunked = False
        self.remaining = 0  # body bytes the declared content-length still expects
        self.finished = False  # the whole response has been handed to the transport
        self.task: asyncio.Task[None] | None = None  # None until a task takes it over

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def _wait(self, deadline: float | None = None) -> None:
        loop = self.conn.loop
        waiter = loop.create_future()
        self.waiters.append(waiter)
        if deadline is None:
            await waiter
            return
        timer = loop.call_later(deadline - time.monotonic(), _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    async def receive(self) -> dict[str, Any]:
        if self.body_done or self.finished:
            # The request is read: all that is left to say is that the client went away.
            while not (self.disconnected or self.finished):
                await self._wait()
            return _DISCONNECT
        if self.expect_continue:
            self.expect_continue = False
            if not (self.chunks or self.complete):  # a client that did not wait needs no 100
                self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (self.chunks or self.complete or self.disconnected):
            self.conn.resume_reading()
            await self._wait(self.scope["extensions"][BODY_DEADLINE].get("at"))
        if self.disconnected:
            return _DISCONNECT
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.body_done = self.complete
        if not self.complete:
            self.conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": not self.complete}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, the app sent {kind}")
            if not self.complete:
                # Answered before the whole body came (a 413, a 408): what the client sends
                # next may be the rest of it, so the stream cannot carry another request.
                self.keep_alive = False
            self.expect_continue = False
            # Started once the head is made: a head refused (a line break in a header) is the
            # app's failure, and nothing has been sent, so a 500 can still answer.
            self.head = self._head(message["status"], message.get("headers", ()))
            self.started = True
            return
        if kind != "http.response.body":
            raise RuntimeError(f"expected http.response.body, the app sent {kind}")
        if self.finished:
            raise RuntimeError("the app sent a body after its response was complete")
        if self.conn.write_paused:  # the client is not reading: do not pile up more for it
            await self.conn.drain()
        if self.disconnected:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        out = self._frame(body, more)
        if self.head is not None:
            out = self.head + out
            self.head = None
        if out:
            self.conn.transport.write(out)
        if not more:
            if self.remaining and not self.chunked:
                raise RuntimeError("the response body is shorter than its content-length")
            self.finished = True
            if self.waiters:
                self.wake()
            self.conn.finished(self)

    async def answer_500(self) -> None:
        """The app failed before it answered: a plain 500, and the connection closes."""
        self.keep_alive = False
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def _head(self, status: int, headers: Any) -> bytes:
        parts = [status_line(status)]
        for name, value in self.conn.server_state.default_headers:  # date (and server)
            parts += (name, b": ", value, b"\r\n")
        length = None
        chunked_given = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked_given = True
            elif lower == b"connection" and value.lower().find(b"close") >= 0:
                self.keep_alive = False
                continue  # written once below
            parts += (name, b": ", value, b"\r\n")
        lines = 2 + (len(parts) - 1) // 4  # the status line, the headers, the empty line
        if self.scope["method"] == "HEAD" or status in _NO_BODY or status < 200:
            self.remaining = 0
        elif length is None:
            self.chunked = True
            if not chunked_given:
                parts.append(b"transfer-encoding: chunked\r\n")
                lines += 1
        else:
            self.remaining = length
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # A CR or LF in a header's name or value would end a line the app did not mean to
        # (response splitting): each is counted once, on the whole head, rather than tested per
        # header (`b"\n" in value` costs CPython a TypeError raised and cleared each time).
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise RuntimeError(f"a response header has a line break: {head[:200]!r}")
        return head

    def _frame(self, body: bytes, more: bool) -> bytes:
        if self.scope["method"] == "HEAD":
            return b""
        if self.chunked:
            framed = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            return framed if more else framed + b"0\r\n\r\n"
        if len(body) > self.remaining:
            raise RuntimeError("the response body is longer than its content-length")
        self.remaining -= len(body)
        return body


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the request body did not come in time"))
