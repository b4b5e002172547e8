"""modelport's HTTP/1.1 protocol on real sockets: a tiny ASGI app under uvicorn with it, and the
real ``modelport serve`` for what clients do to a model server (pipelining, curl's 100-continue).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
import uvicorn

import server_models
from modelport.server.protocols.http1 import MAX_HEAD_BYTES, H1Protocol
from modelport.testing import RunningServer, free_port, run_server


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers what it was asked; /fail raises, /stream answers without a length, /linger
    waits for the client to leave and records that it noticed, /early answers before reading
    the body, /big answers 256 KiB, /slow takes 0.2 s, /task says whether it runs in a task
    before and after a wait, and what a context variable held when it began."""
    if scope["type"] != "http":
        return
    STARTED.append(scope["path"])
    if scope["path"] == "/task":
        began = {"in_task": asyncio.current_task() is not None, "seen": SEEN.get()}
        SEEN.set(scope["query_string"].decode())
        await asyncio.sleep(0)
        answer = json.dumps({**began, "then_in_task": asyncio.current_task() is not None})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer.encode()})
        return
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/big":
        headers = [(b"content-length", str(256 * 1024).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 256 * 1024})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/fail":
        raise RuntimeError("the app broke")
    if path == "/linger":
        LEFT.append((await receive())["type"])
        return
    answer = json.dumps(
        {
            "method": scope["method"],
            "path": path,
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "body": body.decode(),
            "http_version": scope["http_version"],
            "headers": [name.decode() for name, _ in scope["headers"]],
        }
    ).encode()
    headers = [(b"content-type", b"application/json")]
    if path.startswith("/split/"):  # a header value carrying what the query says
        headers.append((b"x-echo", unquote_to_bytes(scope["query_string"])))
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in (answer[:10], answer[10:]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(answer)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


LEFT: list[str] = []
STARTED: list[str] = []
SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="nothing")


def uvicorn_in_thread(app: Any, http: Any, **options: Any) -> Iterator[int]:
    """Serve ``app`` with uvicorn and the ``http`` protocol in a thread; yields its port."""
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http=http, lifespan="off", log_level="warning", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from uvicorn_in_thread(echo, H1Protocol, timeout_keep_alive=1)


class Conn:
    """A raw client connection that reads responses one at a time (pipelining-safe)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
        status = int(self.file.readline().split()[1])
        headers = http.client.parse_headers(self.file)
        if method == "HEAD":
            return status, headers, b""
        if headers["transfer-encoding"] == "chunked":
            body = b""
            while size := int(self.file.readline(), 16):
                body += self.file.read(size)
                self.file.readline()
            self.file.readline()
            return status, headers, body
        return status, headers, self.file.read(int(headers["content-length"]))

    def closed(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextmanager
def connect(port: int) -> Iterator[Conn]:
    conn = Conn(port)
    try:
        yield conn
    finally:
        conn.close()


def answered_then_closed(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` on a new connection: its answer's status and body, after checking the
    answer says ``connection: close`` and the server then closes."""
    with connect(port) as conn:
        conn.send(request)
        status, headers, body = conn.response()
        assert headers["connection"] == "close"
        assert conn.closed()
    return status, body


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"".join(post(f"/n/{i}", str(i).encode()) for i in range(20)))
        for i in range(20):
            status, _, body = conn.response()
            assert status == 200
            assert json.loads(body)["body"] == str(i)


@pytest.mark.parametrize("others", [0, 2])  # alone, it runs as read; else after the others
def test_a_request_runs_in_its_own_task_from_the_start(port: int, others: int) -> None:
    idle = [Conn(port) for _ in range(others)]
    with connect(port) as conn:
        for query in ("first", "second"):
            conn.send(f"GET /task?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, _, body = conn.response()
            assert status == 200
            # A task from the first line (asyncio.timeout works before any await, as under
            # uvicorn); what the app set stays with its own request.
            assert json.loads(body) == {"in_task": True, "seen": "nothing", "then_in_task": True}
    for other in idle:
        other.close()


def test_a_chunked_request_body_arrives_whole(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"hello ", b"chunked ", b"world"):
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.01)
        conn.send(b"0\r\n\r\n")
        status, _, body = conn.response()
        assert (status, json.loads(body)["body"]) == (200, "hello chunked world")


def test_trailers_stay_out_of_the_request_headers(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"2\r\nok\r\n0\r\nX-Trailer: late\r\n\r\n")  # fmt: skip
        answer = json.loads(conn.response()[2])
    assert answer["body"] == "ok"
    assert "x-trailer" not in answer["headers"]


def test_an_answer_before_the_body_closes_the_connection(port: int) -> None:
    # The other 990 bytes cannot be taken for a next request.
    request = b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789"
    assert answered_then_closed(port, request)[0] == 413


def test_expect_100_continue_is_answered_before_the_body_is_sent(port: int) -> None:
    with connect(port) as conn:
        conn.send(post("/e", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 4"))
        assert conn.file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert conn.file.readline() == b"\r\n"
        conn.send(b"data")
        status, _, body = conn.response()
        assert (status, json.loads(body)["body"]) == (200, "data")


def test_http_1_0_gets_its_answer_then_the_connection_closes(port: int) -> None:
    status, body = answered_then_closed(port, b"GET /old HTTP/1.0\r\n\r\n")
    assert status == 200
    assert json.loads(body)["http_version"] == "1.0"


def test_keep_alive_by_default_and_closed_when_idle(port: int) -> None:
    with connect(port) as conn:
        for _ in range(3):
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = conn.response()
            assert status == 200
            assert "date" in headers
            assert "connection" not in headers
        started = time.monotonic()
        assert conn.closed()  # timeout_keep_alive=1
        assert 0.5 < time.monotonic() - started < 4


def test_path_query_and_percent_encoding(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"GET /a%20b/c%2Fd?x=1&y=%20 HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = json.loads(conn.response()[2])
        conn.send(b"GET /caf%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n")
        utf8 = json.loads(conn.response()[2])
    assert answer["path"] == "/a b/c/d"
    assert answer["raw_path"] == "/a%20b/c%2Fd"
    assert answer["query"] == "x=1&y=%20"
    assert utf8["path"] == "/caf\u00e9"  # percent-escapes are UTF-8, as ASGI says


def test_head_gets_headers_only(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = conn.response("HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0
        assert json.loads(conn.response()[2])["path"] == "/after"  # the stream stayed in step


def test_an_answer_without_a_length_is_sent_chunked(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        _, headers, body = conn.response()
        assert headers["transfer-encoding"] == "chunked"
        assert json.loads(body)["path"] == "/stream"


def test_an_upgrade_request_is_answered_as_plain_http_1_1(port: int) -> None:
    status, body = answered_then_closed(
        port,
        b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    assert status == 200
    assert json.loads(body)["path"] == "/up"


def test_an_app_failure_is_a_500_and_the_server_goes_on(port: int) -> None:
    failed = answered_then_closed(port, b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
    assert failed == (500, b"Internal Server Error")
    with connect(port) as conn:
        conn.send(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.response()[0] == 200


@pytest.mark.parametrize("value", ["a%0D%0AInjected:%20yes", "a%0Ab", "a%0Db", "a%0D%0A%0D%0Ab"])
def test_an_app_header_with_a_line_break_is_a_500_not_a_split_response(
    port: int, value: str
) -> None:
    failed = answered_then_closed(port, f"GET /split/?{value} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert failed == (500, b"Internal Server Error")
    with connect(port) as conn:  # and a plain value still goes through
        conn.send(b"GET /split/?plain HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = conn.response()
        assert (status, headers["x-echo"]) == (200, "plain")


@pytest.mark.parametrize(
    "garbage",
    [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
     b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n"],
)  # fmt: skip
def test_a_malformed_request_is_a_400_and_the_connection_closes(port: int, garbage: bytes) -> None:
    status, body = answered_then_closed(port, garbage)
    assert status == 400
    assert b"malformed HTTP request" in body


def test_a_malformed_request_behind_one_in_progress_waits_for_its_answer(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.05)
        conn.send(b"NOT HTTP\r\n\r\n")
        assert conn.response()[0] == 200
        assert conn.response()[0] == 400
        assert conn.closed()


def test_a_header_line_that_never_ends_is_a_431(port: int) -> None:
    with connect(port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        status = None
        try:
            for _ in range(20):
                conn.send(b"a" * 8192)
                time.sleep(0.005)
        except OSError:  # refused and closed while we were still sending
            pass
        status, _, body = conn.response()
        assert status == 431
        assert str(MAX_HEAD_BYTES).encode() in body


def test_a_client_that_does_not_read_holds_back_the_pipeline(port: int) -> None:
    STARTED.clear()
    with connect(port) as conn:
        conn.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 200)  # 50 MiB of answers
        time.sleep(1.5)  # past the keep-alive timeout: waiting requests are no idle connection
        assert STARTED.count("/big") < 200  # not all answered into memory
        for _ in range(200):
            assert len(conn.response()[2]) == 256 * 1024
    assert STARTED.count("/big") == 200


def test_an_oversized_head_is_a_431(port: int) -> None:
    with connect(port) as conn:
        big = b"x" * (MAX_HEAD_BYTES + 1)
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + big + b"\r\n\r\n")
        status, _, body = conn.response()
        assert status == 431
        assert str(MAX_HEAD_BYTES).encode() in body


def test_the_app_hears_when_its_client_leaves(port: int) -> None:
    LEFT.clear()
    conn = Conn(port)
    conn.send(b"GET /linger HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.1)
    conn.close()
    deadline = time.monotonic() + 5
    while not LEFT and time.monotonic() < deadline:
        time.sleep(0.01)
    assert LEFT == ["http.disconnect"]


# -- the real model server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = server_models.build(tmp_path_factory.mktemp("http1") / "models")
    with run_server(repo, "--trust-code", "--trust-code") as running:
        yield running


def infer(row: list[float]) -> bytes:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def test_pipelined_inference_answers_each_request_with_its_own_rows(
    model_server: RunningServer,
) -> None:
    rows = np.random.default_rng(0).normal(size=(50, 4)).round(3).tolist()
    with connect(model_server.port) as conn:
        conn.send(b"".join(post("/v2/models/tiny/infer", infer(row)) for row in rows))
        answers = [json.loads(conn.response()[2]) for _ in rows]
    with connect(model_server.port) as conn:  # one at a time, for the reference
        for row, answer in zip(rows, answers, strict=True):
            conn.send(post("/v2/models/tiny/infer", infer(row)))
            assert json.loads(conn.response()[2])["outputs"] == answer["outputs"]


ROUTES = [  # a request of each kind, and the status it gets
    (post("/v2/models/tiny/infer", infer([1.0, 2.0, 3.0, 4.0])), 200),
    (post("/v2/models/tiny/versions/2/infer", infer([1.0, 2.0, 3.0, 4.0])), 200),
    (post("/v1/models/tiny:predict", b'{"instances": [[1.0, 2.0, 3.0, 4.0]]}'), 200),
    (post("/v2/models/slow/infer", b'{"inputs": [{"name": "seconds", "shape": [1], '
          b'"datatype": "FP32", "data": [0.01]}]}'), 200),  # on an inference thread
    (post("/graphql", b'{"query": "mutation { predict(model: \\"tiny\\", inputs: [{name: '
          b'\\"input\\", data: [[1, 2, 3, 4]]}]) { outputs { data } } }"}'), 200),
    (b"GET /v2/models/tiny HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
    (post("/v2/models/tiny/infer", b"{not json"), 400),
    (post("/v2/models/tiny/infer", b'{"inputs": [{"name": "input", "shape": [1, 4], '
          b'"datatype": "FP32", "data": [1, 2, 3]}]}'), 400),
    (post("/v2/models/nope/infer", infer([1.0, 2.0, 3.0, 4.0])), 404),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_bytes", "expected"), ROUTES, ids=[r.split(b" HTTP")[0].decode() for r, _ in ROUTES]
)
def test_every_kind_of_request_answers_alike_in_one_write_or_two(
    model_server: RunningServer, request_bytes: bytes, expected: int
) -> None:
    # In one write the app runs at once, up to its first wait; with the body late it waits
    # for it first, in a task. Both must give the same answer.
    head, _, body = request_bytes.partition(b"\r\n\r\n")
    answers = []
    with connect(model_server.port) as conn:
        conn.send(request_bytes)
        answers.append(conn.response())
        conn.send(head + b"\r\n\r\n")
        time.sleep(0.05)
        conn.send(body)
        answers.append(conn.response())
    (status, _, whole), (late_status, _, late) = answers
    assert (status, late_status) == (expected, expected), whole
    assert json.loads(whole) == json.loads(late)


def test_curl_sending_expect_100_continue(model_server: RunningServer, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(infer([1.0, 2.0, 3.0, 4.0]))
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", "Expect: 100-continue", "--data-binary",
         f"@{body}", f"{model_server.url}/v2/models/tiny/infer"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_name"] == "tiny"


def test_uvicorns_own_protocol_is_one_flag_away(tmp_path: Path) -> None:
    repo = server_models.build(tmp_path / "models")
    with (
        run_server(repo, "--trust-code", "--http", "uvicorn") as server,
        connect(server.port) as conn,
    ):
        conn.send(post("/v2/models/tiny/infer", infer([1.0, 2.0, 3.0, 4.0])))
        status, headers, body = conn.response()
    assert status == 200
    assert json.loads(body)["model_name"] == "tiny"
    assert "x-request-id" in headers
