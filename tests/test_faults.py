"""Faults under load, on the real server: a worker killed, a model that hangs, Redis killed and
restarted. Each time only what the fault touches fails, and the server recovers by itself.
(PostgreSQL restarted during a batch run: tests/test_batch_cli.py.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import server_models
from modelport.testing import RunningServer, free_port, run_server
from test_server_lifecycle import _is_worker, _worker_pids

TINY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("faults") / "models")


def under_load(
    url: str, path: str, body: dict[str, object], clients: int = 4
) -> tuple[Callable[[], Counter[str]], threading.Event]:
    """``clients`` threads posting ``body`` until stopped; returns (results so far, stop)."""
    results: Counter[str] = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    outcome = str(http.post(path, json=body).status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                with lock:
                    results[outcome] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()

    def finish() -> Counter[str]:
        stop.set()
        for thread in threads:
            thread.join(30)
        return results

    return finish, stop


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.1)


def workers_of(server: RunningServer) -> list[int]:
    return [p for p in _worker_pids(server.process.pid) if _is_worker(p)]


def test_a_worker_killed_under_load_fails_only_its_requests(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--workers", "2", "--cache", "off") as server:
        wait_for(lambda: len(workers_of(server)) == 2)
        victim = workers_of(server)[0]
        finish, _ = under_load(server.url, "/v2/models/tiny/infer", TINY)
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        wait_for(lambda: len(workers_of(server)) == 2 and victim not in workers_of(server))
        time.sleep(1.0)  # load on the replacement too
        results = finish()
        after = httpx.post(f"{server.url}/v2/models/tiny/infer", json=TINY)
    failed = sum(n for outcome, n in results.items() if outcome != "200")
    print(f"worker killed under load: {dict(results)}")  # shown with pytest -s
    assert results["200"] > 100, results
    # The killed worker's connections: at most one request in flight on each of the 4.
    assert failed <= 4, results
    assert after.status_code == 200


def test_a_hanging_model_answers_504_and_its_queue_recovers(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--request-timeout-s", "1", "--cache", "off") as server:
        url = f"{server.url}/v2/models/slow/infer"
        hang = {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [4]}]}
        quick = {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [0]}]}
        hung = threading.Thread(target=lambda: httpx.post(url, json=hang, timeout=30))
        hung.start()
        time.sleep(0.2)
        started = time.monotonic()
        waiting = httpx.post(url, json=quick, timeout=30)  # queued behind the hang
        assert waiting.status_code == 504
        assert time.monotonic() - started < 2.5  # the deadline, not the hang
        other = httpx.post(f"{server.url}/v2/models/tiny/infer", json=TINY)
        assert other.status_code == 200  # other models are not held up
        hung.join(30)
        wait_for(lambda: httpx.post(url, json=quick).status_code == 200, timeout_s=10)
        metrics = httpx.get(f"{server.url}/metrics").text
    depth = re.search(r'modelport_queue_depth\{model="slow",version="1"\} (\S+)', metrics)
    assert depth is not None
    assert float(depth.group(1)) == 0  # nothing left behind in the queue


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A Redis of this test's own on a free port: (port, kill, start)."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed (the machine's Redis package)"
    port = free_port()
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for(lambda: _listening(port), timeout_s=10)

    def kill() -> None:
        process[-1].kill()
        process[-1].wait()

    start()
    yield port, kill, start
    kill()


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def cache_hits(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(
        r'modelport_cache_total\{event="hit",model="tiny",version="2"\} (\S+)', metrics
    )
    return float(found.group(1)) if found else 0.0


def test_redis_killed_and_restarted_under_load(
    repo: Path, own_redis: tuple[int, Callable[[], None], Callable[[], None]]
) -> None:
    port, kill, start = own_redis
    cache = f"redis://127.0.0.1:{port}/0"
    with run_server(repo, "--trust-code", "--cache", cache, "--cache-ttl-s", "60") as server:
        finish, _ = under_load(server.url, "/v2/models/tiny/infer", TINY)  # the same inputs
        wait_for(lambda: cache_hits(server.url) > 50)
        kill()
        time.sleep(2.0)  # requests go on without a cache
        start()
        hits = cache_hits(server.url)
        wait_for(lambda: cache_hits(server.url) > hits + 50, timeout_s=20)  # it came back
        results = finish()
        log = server.log
    print(f"Redis killed and restarted under load: {dict(results)}")
    assert set(results) == {"200"}, results  # no errors while Redis was away
    assert "is unavailable" in log
