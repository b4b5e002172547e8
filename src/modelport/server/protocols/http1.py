"""HTTP/1.1 connections for ``modelport serve``: uvicorn runs the process, this runs the wire.

uvicorn binds the sockets, runs the workers, the lifespan, the signals and the graceful shutdown,
and builds one of these per connection (``uvicorn.Config(http=...)``). Ours because it costs
less CPU per request than uvicorn's httptools protocol (``benchmarks/http_protocol.py``): one
write per response, no event objects, one timer per connection, eager tasks on Python 3.12+.
Nothing imports it (``serve --http uvicorn`` runs uvicorn's instead; the tests run both); it
relies on uvicorn's protocol interface, so uvicorn is pinned to the tested releases.

What it speaks: keep-alive, pipelining (requests run one at a time, in order, reading paused
while any wait), chunked request bodies, ``Expect: 100-continue``, HEAD, chunked responses when
the app gives no length, write backpressure, the keep-alive timeout and 400 for malformed
requests. Upgrade requests (WebSocket, h2c) are answered as plain HTTP/1.1. What a client may
cost is bounded, each limit answered and the connection closed: a request's non-body bytes
(431), its head's time (408), requests sent ahead of their answers (429), connections (503:
uvicorn's ``limit_concurrency``, applied as uvicorn does), the time answers lie unread (dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any
from urllib.parse import unquote

import httptools

from modelport.server.protocols.exchange import ASGI_VERSION, BUFFER_BYTES, Exchange, closing_answer
from modelport.server.rest.http import BODY_DEADLINE

log = logging.getLogger("modelport.server")

MAX_HEAD_BYTES = 64 * 1024  # request line, headers, chunk-size lines, trailers (8-64 KiB elsewhere)
HEAD_TIMEOUT_S = 10.0  # from the first byte of a request to the end of its head
WRITE_STALL_S = 30.0  # a client that takes none of its answers for this long is dropped
# Requests parsed ahead of the one being answered: reading pauses behind them, but one read may
# hold thousands of small ones. Deep enough for any pipelining client (benchmarks use 16-64).
MAX_PIPELINE = 256
_FEED_BYTES = 8 * 1024  # reads go to the parser in pieces of this: the head limit's slack


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
        self.limit_concurrency: int | None = config.limit_concurrency
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
        self._head_bytes = 0  # of the request line, headers and trailers parsed so far
        self._framing = 0  # the request's non-body bytes, counted per read: data_received
        self._body_read = 0  # body bytes in the read being parsed
        self._open = self._began = False  # a request is being read; one began in this read
        self._in_head = False
        self._head_since = 0.0
        self._refusal: bytes | None = None  # an error answer that waits for the current one
        self._expect = False
        self._last_active = 0.0  # when the connection last fell idle
        self._stuck_since: float | None = None  # when the client last took any of its answers
        self._unsent = 0  # bytes it had not taken then
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
        if len(data) <= _FEED_BYTES:
            self._feed(data)
        else:  # so that a head or trailer that begins in a large read is counted from there
            view = memoryview(data)
            for start in range(0, len(data), _FEED_BYTES):
                if self._refusal is not None:
                    break
                self._feed(view[start : start + _FEED_BYTES])
        self._start_ready()

    def _feed(self, data: bytes | memoryview) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is read from this stream
        self._began = False
        self._body_read = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered as plain HTTP/1.1; the parser stops where the upgrade begins, so the
            # connection closes after that answer.
            if self.parsing is not None:
                self.parsing.keep_alive = False
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")  # unless a callback refused
        else:
            # The parser keeps a header or trailer line that never ends to itself: counted here,
            # per piece fed. A piece in which no request began belongs whole to the one being
            # read; of a chunked body, framing beyond the data it carries counts (as Go's
            # net/http). A large read is fed in pieces, so at most one piece goes uncounted.
            if self._open and not self._began:
                framing = self._framing + len(data) - 2 * self._body_read
                if framing > MAX_HEAD_BYTES:
                    self._refuse(431, f"the request's head, chunk lines and trailers are over "
                                      f"{MAX_HEAD_BYTES} bytes")  # fmt: skip
                self._framing = framing if framing > 0 else 0

    def _start_ready(self) -> None:
        if self._ready is not None:
            exchange, self._ready = self._ready, None
            # Once the loop has read what came on its other connections this round: requests
            # then run back to back, with code and data hot (less CPU a request under load). A
            # plain task (before Python 3.12) waits for that anyway: no call_soon hop then.
            if _EAGER is None or len(self.server_state.connections) == 1:
                self._start_here(exchange)
            else:
                self.loop.call_soon(self._start_here, exchange)

    def eof_received(self) -> bool:
        # A client that closed looks the same as one that only half-closed: taken as gone, as
        # most servers do, so that work queued for it is withdrawn (connection_lost follows).
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        self._watch_writes()

    def _watch_writes(self) -> None:
        """From now on _check_idle drops the client if it takes none of what it was sent."""
        if self._stuck_since is None:
            self._stuck_since = self.loop.time()
            self._unsent = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.transport.is_closing():
            self._stuck_since = None
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
        if self.read_paused and not self.pipeline and self._refusal is None:
            self.read_paused = False
            self.transport.resume_reading()
            if self._in_head:  # its time ran from its first byte, less the pause
                self._head_since = self.loop.time()

    # -- the parser's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = self._framing = 0
        self._in_head = self._began = self._open = True
        self._head_since = self.loop.time()
        self._expect = False

    # The head's size is counted inline in these two: they run for every line of every request
    # (trailers too), and catch a head too large in the read where its request began.
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._too_large()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def _too_large(self) -> None:
        self._refuse(431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
        raise ValueError("head too large")  # the parser stops here

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.current is not None and len(self.pipeline) >= MAX_PIPELINE:
            # Those queued are answered first, then this: 429 says "slow down and retry", which
            # a client that pipelines must do anyway for requests a closed connection left.
            self._refuse(429, f"over {MAX_PIPELINE} requests sent ahead of their answers", True)
            raise ValueError("pipeline full")
        limit = self.limit_concurrency  # checked as uvicorn's own protocol does
        if limit is not None and (
            len(self.server_state.connections) >= limit or len(self.server_state.tasks) >= limit
        ):
            self._refuse(503, f"at the limit of {limit} connections or requests in progress")
            raise ValueError("too busy")
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
            "asgi": ASGI_VERSION,
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
        self._headers = []  # chunked trailers, if any, stay out of this request's scope
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = self.parsing = Exchange(self, scope, keep_alive, self._expect)
        if self.current is None:  # started once the parser has handed over the body it has
            self.current = self._ready = exchange
        else:  # pipelined behind a request still being answered
            self.pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        self._body_read += len(body)
        exchange = self.parsing
        if exchange is None or exchange.finished:
            return  # answered without reading its body (413, say): the rest is dropped
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > BUFFER_BYTES:
            self.pause_reading()
        if exchange.waiters:
            exchange.wake()

    def on_message_complete(self) -> None:
        self._open = False
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
        """Run the app in a task that starts at once where the loop allows it (Python 3.12's
        eager tasks): a small request is then answered before the task is ever scheduled."""
        task = exchange.task = _new_task(self.loop, self._run(exchange))
        if not task.done():
            self.server_state.tasks.add(task)

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:  # the server gave up on it: shutdown past its grace
            self._close()
            raise
        except Exception as exc:
            log.error("the app failed on %s %s", exchange.scope["method"], exchange.scope["path"],
                      exc_info=exc)  # fmt: skip
            if not exchange.started:
                await exchange.answer_500()
            elif not exchange.finished:
                self._close()
        else:
            if not exchange.finished and not exchange.disconnected:
                log.error("the app returned without completing its response")
                if exchange.started:
                    self._close()
                else:
                    await exchange.answer_500()
        finally:
            if exchange.task is not None:
                self.server_state.tasks.discard(exchange.task)

    def finished(self, exchange: Exchange) -> None:
        """The app has handed over its whole response: the next request may start."""
        self.server_state.total_requests += 1
        self.current = None
        if self._refusal is not None and not self.pipeline:
            self.transport.write(self._refusal)
            self._close()
        elif not exchange.keep_alive:
            self._close()
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

    def _refuse(self, status: int, message: str, queued: bool = False) -> None:
        """Answer a request the parser cannot take, and close: the stream is out of step.

        A request being answered still gets its answer first, and with ``queued`` those queued
        behind it too; else they are dropped (clients resend unanswered pipelined requests).
        """
        if self._refusal is not None:
            return
        log.warning("%s from %s: %s", status, self.client, message)
        current = self.current
        if current is not None and not current.complete:
            # The fault is in this request's own body: it is the request refused.
            current.disconnected = True
            current.wake()
            current = None
        if not queued:
            self.pipeline.clear()
        self.pause_reading()
        self._in_head = False
        self._refusal = closing_answer(status, message, self.server_state.default_headers)
        if current is None and not self.pipeline:
            self.transport.write(self._refusal)
            self._close()

    def _close(self) -> None:
        """Close once the client has taken what is written, unless it stalls (_check_idle)."""
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._watch_writes()

    # -- time and shutdown --------------------------------------------------------------------

    def _check_idle(self) -> None:
        """The connection's one timer: closes it idle past the keep-alive timeout, answers 408
        to a head unfinished ``HEAD_TIMEOUT_S`` after its first byte, and drops a client that
        took none of its answers for ``WRITE_STALL_S`` (its queued requests are withdrawn)."""
        now = self.loop.time()
        if self._stuck_since is not None:
            unsent = self.transport.get_write_buffer_size()
            if unsent < self._unsent:  # it reads, if slowly
                self._stuck_since, self._unsent = now, unsent
            elif now - self._stuck_since >= WRITE_STALL_S:
                log.warning("%s read nothing for %ss: dropped", self.client, WRITE_STALL_S)
                self.transport.abort()  # close() would wait for it to read them
                return
            wait = self._stuck_since + WRITE_STALL_S - now
        elif self.transport.is_closing():
            return
        elif self._in_head and not self.read_paused:
            wait = self._head_since + HEAD_TIMEOUT_S - now
            if wait <= 0:
                self._refuse(408, f"the request head took over {HEAD_TIMEOUT_S}s")
                wait = self.keep_alive_s
        elif self.current is not None or self.pipeline:
            # Requests held back while the client does not read are work, not idleness.
            wait = self.keep_alive_s
        else:
            wait = self._last_active + self.keep_alive_s - now
            if wait <= 0:
                self._close()
                wait = WRITE_STALL_S  # then watches what it had not taken yet, if anything
        self._idle_timer = self.loop.call_later(max(wait, 0.01), self._check_idle)

    def shutdown(self) -> None:
        """uvicorn's graceful stop: close when idle, else once the current response is out."""
        if self.current is None:
            self._close()
        else:
            self.current.keep_alive = False
            self.pipeline.clear()


def _new_task(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> Any:
    if _EAGER is not None:
        return _EAGER(loop, coroutine)
    return loop.create_task(coroutine)


# Python 3.12+: a task that runs until its first real wait inside this call.
_EAGER = getattr(asyncio, "eager_task_factory", None)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
