"""Denial of service on modelport's HTTP/1.1 protocol (issue 23): a client that pipelines without
end, stops reading its answers, trickles a head in, opens too many connections or never ends a
chunked trailer must cost the server a bounded amount of memory and time, and meanwhile every
other client is served as usual. Limits are made small here so that each attack takes a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelport
from modelport.config import ServerLimits
from modelport.demo import mlp_onnx
from modelport.server.protocols import http1
from modelport.server.protocols.http1 import H1Protocol
from modelport.testing import run_server
from test_server_http1 import STARTED, Conn, connect, echo, uvicorn_in_thread

FLOODED: list[str] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``echo``, and /flood: an endless answer, after which it records what receive() says."""
    if scope["type"] == "http" and scope["path"] == "/flood":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4096):  # 256 MiB: far more than the socket buffers hold
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        FLOODED.append((await receive())["type"])
        return
    await echo(scope, receive, send)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from uvicorn_in_thread(app, H1Protocol, timeout_keep_alive=1)


def served(port: int) -> bool:
    """Whether another client, on a connection of its own, gets its answer now."""
    with connect(port) as conn:
        conn.send(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
        return conn.response()[0] == 200


def gone(conn: Conn, within_s: float) -> bool:
    """Whether the server closes ``conn`` within ``within_s`` (reading what it had sent)."""
    conn.sock.settimeout(within_s)
    try:
        while conn.sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_pipeline_deeper_than_the_cap_is_answered_up_to_it_then_429(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_PIPELINE", 4)
    with connect(port) as conn:
        # One answered at once, four queued behind it, the sixth refused, the rest never read.
        conn.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        conn.send(b"".join(b"GET /n/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(9)))
        assert served(port)
        assert [conn.response()[0] for _ in range(5)] == [200] * 5
        status, headers, body = conn.response()
        assert (status, headers["connection"]) == (429, "close")
        assert b"4 requests" in body
        assert conn.closed()
    assert served(port)


def test_a_client_that_stops_reading_is_dropped_and_its_work_withdrawn(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "WRITE_STALL_S", 0.3)
    FLOODED.clear()
    STARTED.clear()
    with connect(port) as conn:
        conn.send(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\nGET /queued HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 3  # the connection's timer looks once a second here
        while not FLOODED and time.monotonic() < deadline:
            assert served(port)  # the server goes on meanwhile
            time.sleep(0.1)
        # Not one byte read, yet the app was told its client left, the queued request was
        # withdrawn unstarted, and the connection is closed.
        assert FLOODED == ["http.disconnect"]
        assert gone(conn, within_s=2)
    assert "/queued" not in STARTED
    assert served(port)


def test_a_head_that_trickles_in_is_answered_408(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.5)
    with connect(port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        started = time.monotonic()
        conn.sock.settimeout(0.05)
        answer = b""
        while not answer and time.monotonic() - started < 4:
            try:
                conn.send(b"a")  # a byte every 50 ms: each read used to keep it open
                answer = conn.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 2.5
        assert b"connection: close" in answer
        assert served(port)


def test_a_head_may_arrive_in_pieces_within_its_deadline(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.5)
    with connect(port) as conn:
        for _ in range(2):
            for piece in (b"GET /a HTTP/1.1\r\n", b"Host: t\r\n", b"\r\n"):
                conn.send(piece)
                time.sleep(0.1)
            assert conn.response()[0] == 200


def test_empty_lines_between_requests_do_not_keep_a_connection_open(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.response()[0] == 200
        started = time.monotonic()
        try:
            while time.monotonic() - started < 4:
                conn.send(b"\r\n")  # no request ever begins: the connection stays idle
                time.sleep(0.1)
        except OSError:
            pass
        assert gone(conn, within_s=0.5)
        assert time.monotonic() - started < 3  # timeout_keep_alive=1


def test_an_endless_trailer_line_is_refused_and_not_buffered(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_HEAD_BYTES", 16 * 1024)
    before = _rss_bytes()
    conns = [Conn(port) for _ in range(8)]
    started = time.monotonic()
    try:
        for conn in conns:
            conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\nX-Trailer: ")  # fmt: skip
            try:
                for _ in range(64):  # 4 MiB of one trailer line, never ended
                    conn.send(b"a" * 65536)
            except OSError:  # refused and closed while we were still sending
                pass
        time.sleep(0.2)
        grown = _rss_bytes() - before
        assert grown < 16 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"
        for conn in conns:
            status, headers, _ = conn.response()
            assert (status, headers["connection"]) == (431, "close")
            assert conn.closed()
        assert time.monotonic() - started < 3
    finally:
        for conn in conns:
            conn.close()
    assert served(port)


def test_chunk_size_lines_count_toward_the_head_limit(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_HEAD_BYTES", 16 * 1024)
    with connect(port) as conn:
        conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(64):  # a chunk extension that never ends: 4 MiB of framing
                conn.send(b"1;" + b"e" * 65534)
        except OSError:
            pass
        status, headers, _ = conn.response()
        assert (status, headers["connection"]) == (431, "close")
        assert conn.closed()
    assert served(port)


def test_a_chunked_body_of_many_small_chunks_is_no_oversized_head(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunk lines count only where they frame more bytes than they carry (as in Go's net/http):
    # here 6 bytes of framing a chunk carry 16 of data, 120 KiB of framing in all.
    monkeypatch.setattr(http1, "MAX_HEAD_BYTES", 16 * 1024)
    with connect(port) as conn:
        conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.send(b"10\r\n0123456789abcdef\r\n" * 20_000 + b"0\r\n\r\n")
        status, _, body = conn.response()
    assert (status, len(json.loads(body)["body"])) == (200, 320_000)


def test_a_large_body_and_the_next_head_in_one_read_are_no_oversized_head(port: int) -> None:
    # Body bytes that came in the same read as the start of the next head are not its head.
    body = b"b" * (300 * 1024)
    first = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    with connect(port) as conn:
        conn.send(first + body[:-100_000])
        time.sleep(0.2)
        conn.send(body[-100_000:] + b"GET /next HTTP/1.1\r\n")  # one read, most likely
        time.sleep(0.2)
        conn.send(b"Host: t\r\n\r\n")
        assert [conn.response()[0] for _ in range(2)] == [200, 200]


# -- connections: uvicorn's limit_concurrency, honoured by both protocols -----------------------


@pytest.fixture(scope="module", params=[H1Protocol, "httptools"], ids=["ours", "uvicorn"])
def capped(request: pytest.FixtureRequest) -> Iterator[int]:
    yield from uvicorn_in_thread(app, request.param, timeout_keep_alive=5, limit_concurrency=3)


def test_beyond_limit_concurrency_requests_get_503_and_the_connection_closes(
    capped: int,
) -> None:
    idle = [Conn(capped) for _ in range(2)]
    for conn in idle:  # answered: each is open and counted by now
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.response()[0] == 200
    with connect(capped) as third:  # uvicorn counts this one too: three open, three allowed
        third.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = third.response()
        assert (status, headers["connection"]) == (503, "close")
        assert third.closed()
    idle.pop().close()
    time.sleep(0.1)
    assert served(capped)
    idle[0].close()


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize("http", ["modelport", "uvicorn"])
def test_modelport_serve_caps_connections_with_either_protocol(tmp_path: Path, http: str) -> None:
    assert ServerLimits().max_connections >= 100
    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    with run_server(tmp_path / "models", "--http", http, "--max-connections", "2") as server:
        with connect(server.port) as first:
            first.send(LIVE)
            assert first.response()[0] == 200
            with connect(server.port) as second:
                second.send(LIVE)
                assert second.response()[0] == 503
        time.sleep(0.2)
        with connect(server.port) as alone:
            alone.send(LIVE)
            assert alone.response()[0] == 200


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize(
    "start",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: ",
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-Trailer: ",
    ],
    ids=["header", "trailer"],
)
def test_a_head_or_trailer_over_the_limit_in_the_read_it_began_is_refused(
    port: int, start: bytes
) -> None:
    # Past the limit in one write: the request begins in the read that carries it all (the
    # piece of it the parser was given when the request began is not counted).
    with connect(port) as conn:
        conn.send(start + b"a" * (http1.MAX_HEAD_BYTES + http1._FEED_BYTES + 4096))
        started = time.monotonic()
        status, _, _ = conn.response()
        assert (status, conn.closed()) == (431, True)
        assert time.monotonic() - started < 2
    assert served(port)
