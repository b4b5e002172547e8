"""HTTP/1.1 connections for ``modelport serve``: uvicorn runs the process, this runs the wire.

uvicorn still binds the sockets, runs the workers, the lifespan, the signals and the graceful
shutdown; it builds one of these protocols per connection (``uvicorn.Config(http=...)``).
Why our own: under load on one core, a bare ASGI app behind uvicorn's httptools protocol costs
about 45 us of CPU per request, behind this one about 30 us (``benchmarks/http_protocol.py``),
and for a small model the HTTP layer is a large part of a request. It does less per request:
one write per response (head and body together), no event object per request, a keep-alive
timer per connection rather than per request, and no task for a request answered before it
ever waits.

Requests start eagerly: the app runs in a plain loop callback (``data_received`` itself when
there is one connection) until it first waits, and a task takes over only then (as Python
3.12's eager tasks, which 3.10 and 3.11 lack). Until that first wait
``asyncio.current_task()`` is None, so code that needs a task (``asyncio.timeout``, which
redis-py uses) must first ``await asyncio.sleep(0)``, which hands the request to one.

What it speaks: keep-alive, pipelining (requests run one at a time, in order, reading paused
while any wait), chunked request bodies, ``Expect: 100-continue``, HEAD, chunked responses when
the app gives no length, write backpressure, the keep-alive timeout, 400 for malformed requests
and 431 for a head over ``MAX_HEAD_BYTES``. Upgrade requests (WebSocket, h2c) are answered as
plain HTTP/1.1, as the server speaks nothing else.
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import logging
import time
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("modelport.server")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; mature servers allow 8-64 KiB
_BUFFER_BYTES = 64 * 1024  # request body held unread before reading from the socket pauses
_ASGI = {"version": "3.0", "spec_version": "2.3"}
# An extension the app may use: it puts the time.monotonic() by which the request body must
# have come under "at", and receive() raises TimeoutError past it. The timer is armed only when
# receive() has to wait (seldom: most bodies are in hand when the app starts), where a timer
# around every read costs some 8 us a request under load (measured).
BODY_DEADLINE = "modelport.body_deadline"
_DISCONNECT = {"type": "http.disconnect"}
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_NO_BODY = frozenset((204, 304))


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 599:
            raise RuntimeError(f"the app answered with status {status}, not an HTTP status")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


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

    def __init__(self, conn: H1Protocol, scope: dict[str, Any], keep_alive: bool, expect: bool):
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
            self.started = True
            if not self.complete:
                # Answered before the whole body came (a 413, a 408): what the client sends
                # next may be the rest of it, so the stream cannot carry another request.
                self.keep_alive = False
            self.expect_continue = False
            self.head = self._head(message["status"], message.get("headers", ()))
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

    def _head(self, status: int, headers: Any) -> bytes:
        parts = [_status_line(status)]
        for name, value in self.conn.server_state.default_headers:  # date (and server)
            parts += (name, b": ", value, b"\r\n")
        length = None
        chunked_given = False
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise RuntimeError(f"response header {name!r} has a line break")
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked_given = True
            elif lower == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue  # written once below
            parts += (name, b": ", value, b"\r\n")
        if self.scope["method"] == "HEAD" or status in _NO_BODY or status < 200:
            self.remaining = 0
        elif length is None:
            self.chunked = True
            if not chunked_given:
                parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.remaining = length
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

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


class H1Protocol(asyncio.Protocol):
    """One client connection; uvicorn's server creates it with its config and shared state."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self._raw_root = self.root_path.encode("latin-1")
        self.keep_alive_s: float = config.timeout_keep_alive
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.current: Exchange | None = None  # the request the app is answering
        self.parsing: Exchange | None = None  # the request the parser is reading
        self.pipeline: deque[Exchange] = deque()
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # of the request line and headers parsed so far
        self._head_raw = 0  # bytes received while a head is unfinished (counted per read)
        self._in_head = False
        self._refusal: bytes | None = None  # a 400/431 that waits for the current answer
        self._expect = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ready: Exchange | None = None  # a request to start once the parser returns

    # -- the transport's side -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server_state.connections.add(self)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._last_active = self.loop.time()
        self._idle_timer = self.loop.call_later(self.keep_alive_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        for exchange in (self.current, *self.pipeline):
            if exchange is not None and not exchange.finished:
                exchange.disconnected = True
                exchange.wake()
        self.pipeline.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is read from this stream
        self._last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
            if self._in_head:  # the parser keeps a line that never ends to itself: count here
                self._head_raw += len(data)
                if self._head_raw > MAX_HEAD_BYTES:
                    self._refuse(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
        except httptools.HttpParserUpgrade:
            # Answered as plain HTTP/1.1; the parser stops where the upgrade begins, so the
            # connection closes after that answer.
            if self.parsing is not None:
                self.parsing.keep_alive = False
        except httptools.HttpParserError as exc:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
        if self._ready is not None:
            exchange, self._ready = self._ready, None
            if len(self.server_state.connections) == 1:  # no other client's request to await
                self._start_here(exchange)
            else:
                # Once the loop has read what came on its other connections this round: their
                # requests then run back to back, with code and data hot. At c=64 that costs
                # about 10% less CPU a request than running each one as it is read (measured).
                self.loop.call_soon(self._start_here, exchange)

    def eof_received(self) -> bool:
        # A client that closed looks the same as one that only half-closed: taken as gone, as
        # most servers do, so that work queued for it is withdrawn (connection_lost follows).
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._next()

    async def drain(self) -> None:
        if self.write_paused and not self.transport.is_closing():
            self._writable = self.loop.create_future()
            await self._writable

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.pipeline:
            self.read_paused = False
            self.transport.resume_reading()

    # -- the parser's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = self._head_raw = 0
        self._in_head = True
        self._expect = False

    # The head's size is counted inline in these two: they run for every line of every request.
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("head too large")  # the parser stops; data_received answers 431

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("head too large")
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute form (http://host/path?q) or '*'
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)  # UTF-8, as ASGI says
        version = parser.get_http_version()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": self.root_path,
            "path": self.root_path + path if self.root_path else path,
            "raw_path": self._raw_root + raw_path if self._raw_root else raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
            "extensions": {BODY_DEADLINE: {}},
        }
        self._in_head = False
        self._headers = []  # chunked trailers, if any, stay out of this request's scope
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = self.parsing = Exchange(self, scope, keep_alive, self._expect)
        if self.current is None:  # started once the parser has handed over the body it has
            self.current = self._ready = exchange
        else:  # pipelined behind a request still being answered
            self.pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.finished:
            return  # answered without reading its body (413, say): the rest is dropped
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _BUFFER_BYTES:
            self.pause_reading()
        if exchange.waiters:
            exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.complete = True
            if exchange.waiters:
                exchange.wake()

    # -- running requests ---------------------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        # Held in uvicorn's set for the graceful shutdown; _run takes itself out at its end
        # (cheaper than a done callback, which the loop would schedule once more).
        task = exchange.task = self.loop.create_task(self._run(exchange))
        self.server_state.tasks.add(task)

    def _start_here(self, exchange: Exchange) -> None:
        """Run the app now, in this callback, as far as it goes without waiting.

        A small request is answered before it would ever wait (its body is in hand and a fast
        model runs inline), and then costs no task, and no getpid() for current_task() at its
        end. Only when it must wait does a task take it over from where it stopped, as Python
        3.12's eager tasks do.
        """
        context = contextvars.copy_context()  # as a task would: nothing the app sets leaks
        coroutine = self._run(exchange)
        try:
            waiting = context.run(coroutine.send, None)
        except StopIteration:
            return
        task = exchange.task = self.loop.create_task(_resume(coroutine, waiting, context))
        self.server_state.tasks.add(task)

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:  # the server gave up on it: shutdown past its grace
            self.transport.close()
            raise
        except Exception as exc:
            log.error("the app failed on %s %s", exchange.scope["method"], exchange.scope["path"],
                      exc_info=exc)  # fmt: skip
            if not exchange.started:
                await self._answer_500(exchange)
            elif not exchange.finished:
                self.transport.close()
        else:
            if not exchange.finished and not exchange.disconnected:
                log.error("the app returned without completing its response")
                if exchange.started:
                    self.transport.close()
                else:
                    await self._answer_500(exchange)
        finally:
            if exchange.task is not None:
                self.server_state.tasks.discard(exchange.task)

    @staticmethod
    async def _answer_500(exchange: Exchange) -> None:
        exchange.keep_alive = False
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
        await exchange.send({"type": "http.response.start", "status": 500, "headers": headers})
        await exchange.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def finished(self, exchange: Exchange) -> None:
        """The app has handed over its whole response: the next request may start."""
        self.server_state.total_requests += 1
        self.current = None
        if self._refusal is not None:
            self.transport.write(self._refusal)
            self.transport.close()
        elif not exchange.keep_alive:
            self.transport.close()
        else:
            self._last_active = self.loop.time()
            self._next()

    def _next(self) -> None:
        """Start the next pipelined request, or read more, unless the client is not reading."""
        if self.current is not None or self.write_paused or self.transport.is_closing():
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
        self.resume_reading()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the parser cannot take, and close: the stream is out of step.

        A request being answered still gets its answer first; the ones queued behind it are
        dropped with the connection (clients resend unanswered pipelined requests).
        """
        log.warning("%s from %s: %s", status, self.client, message)
        current = self.current
        if current is not None and not current.complete:
            # The fault is in this request's own body: it is the request refused.
            current.disconnected = True
            current.wake()
            current = None
        body = message.encode()
        head = [_status_line(status)]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        self.pipeline.clear()
        self.pause_reading()
        self._refusal = b"".join(head) + body
        if current is None:
            self.transport.write(self._refusal)
            self.transport.close()

    # -- time and shutdown --------------------------------------------------------------------

    def _check_idle(self) -> None:
        """Close a connection idle past the keep-alive timeout; one timer per connection."""
        if self.transport.is_closing():
            return
        idle = self.loop.time() - self._last_active
        # Requests held back while the client does not read its answers are work, not idleness.
        busy = self.current is not None or bool(self.pipeline)
        if not busy and idle >= self.keep_alive_s:
            self.transport.close()
            return
        wait = self.keep_alive_s if busy else self.keep_alive_s - idle
        self._idle_timer = self.loop.call_later(max(wait, 0.01), self._check_idle)

    def shutdown(self) -> None:
        """uvicorn's graceful stop: close when idle, else once the current response is out."""
        if self.current is None:
            self.transport.close()
        else:
            self.current.keep_alive = False
            self.pipeline.clear()


class _Started:
    """A coroutine started by hand, awaitable from where it stopped: ``waiting`` is what it
    yielded there. What is sent or thrown in goes on to it in its own ``context``, as
    ``yield from`` would (create_task takes no context before Python 3.11)."""

    __slots__ = ("context", "coroutine", "waiting")

    def __init__(
        self, coroutine: Coroutine[Any, Any, None], waiting: Any, context: contextvars.Context
    ) -> None:
        self.coroutine = coroutine
        self.waiting = waiting
        self.context = context

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting, run = self.coroutine, self.waiting, self.context.run
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:
                try:
                    waiting = run(coroutine.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = run(coroutine.send, sent)
                except StopIteration:
                    return


async def _resume(
    coroutine: Coroutine[Any, Any, None], waiting: Any, context: contextvars.Context
) -> None:
    await _Started(coroutine, waiting, context)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the request body did not come in time"))


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
