"""Slow clients against the real server process: a slowloris holding many connections with
heads that never end, and bodies trickled a byte a second. Other clients are answered
throughout, promptly; the slow ones are dropped at the server's limits (the head deadline, the
request deadline). These are modelport's HTTP/1.1 protocol's bounds: `--http uvicorn` keeps
only the connection cap, so this file is not among those run again on uvicorn's protocol."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import server_models
from modelport.server.protocols.http1 import HEAD_TIMEOUT_S
from modelport.testing import RunningServer, run_server

TINY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
LORIS = 200  # connections held open with an unfinished head
TRICKLERS = 20  # bodies sent a byte a second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = server_models.build(tmp_path_factory.mktemp("slow") / "models")
    with run_server(repo, "--trust-code", "--request-timeout-s", "3", "--cache", "off") as s:
        yield s


def answer_of(conn: socket.socket, deadline: float) -> str:
    """The status of the server's answer on ``conn``, or "closed"/"none" by ``deadline``."""
    conn.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
        data = conn.recv(4096)
    except TimeoutError:
        return "none"
    except OSError:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


def test_slow_clients_are_dropped_at_the_limits_while_others_are_served(
    server: RunningServer,
) -> None:
    loris = []
    for i in range(LORIS):
        conn = socket.create_connection(("127.0.0.1", server.port))
        conn.sendall(f"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nX-Slow-{i}: ".encode())
        loris.append(conn)
    trickling = []
    for _ in range(TRICKLERS):
        conn = socket.create_connection(("127.0.0.1", server.port))
        conn.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
        )
        trickling.append(conn)
    stop = threading.Event()

    def trickle() -> None:  # a byte a second on every body, and on every slow head
        while not stop.wait(1.0):
            for conn in trickling + loris:
                with contextlib.suppress(OSError):
                    conn.send(b" " if conn in trickling else b"a")

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    started = time.monotonic()
    slowest = 0.0
    with httpx.Client(base_url=server.url, timeout=10) as other:
        while time.monotonic() - started < HEAD_TIMEOUT_S + 2:  # past every limit
            asked = time.monotonic()
            assert other.post("/v2/models/tiny/infer", json=TINY).status_code == 200
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.05)
    stop.set()
    feeder.join()
    end = time.monotonic() + 5
    bodies = [answer_of(conn, end) for conn in trickling]
    heads = [answer_of(conn, end) for conn in loris]
    for conn in trickling + loris:
        conn.close()
    assert slowest < 1.0, f"another client waited {slowest:.2f} s"
    assert set(bodies) == {"408"}, bodies  # the request deadline (3 s), however it trickles
    assert set(heads) == {"408"}, set(heads)  # the head deadline, however it trickles
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
