"""Limits, failures, security and shutdown of the real server process."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import server_models
from modelport.cli import serve
from modelport.config import LookupConfig, ServerConfig, ServerLimits
from modelport.testing import RunningServer, free_port, run_server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("lifecycle") / "models")


def slow(seconds: float) -> dict[str, object]:
    return {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [seconds]}]}


def post_in_background(
    url: str, body: dict[str, object]
) -> tuple[threading.Thread, list[httpx.Response]]:
    results: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: results.append(httpx.post(url, json=body, timeout=30)))
    thread.start()
    return thread, results


@pytest.fixture(scope="module")
def limited(repo: Path) -> Iterator[RunningServer]:
    with run_server(
        repo, "--trust-code", "--max-queue", "1", "--request-timeout-s", "1.0", "--cache", "off"
    ) as server:
        yield server


def test_a_full_queue_answers_503_with_retry_after(limited: RunningServer) -> None:
    url = f"{limited.url}/v2/models/slow/infer"
    started = [post_in_background(url, slow(0.4)) for _ in range(2)]  # one runs, one waits
    time.sleep(0.2)
    refused = httpx.post(url, json=slow(0), timeout=10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue" in refused.json()["error"]
    metrics = httpx.get(f"{limited.url}/metrics").text
    assert 'modelport_rejected_total{model="slow",reason="queue_full",version="1"}' in metrics
    for thread, results in started:
        thread.join()
        assert results[0].status_code == 200
    assert httpx.post(url, json=slow(0), timeout=10).status_code == 200


def test_a_passed_deadline_answers_504(limited: RunningServer) -> None:
    url = f"{limited.url}/v2/models/slow/infer"
    response = httpx.post(url, json=slow(1.5), timeout=10)
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]
    metrics = httpx.get(f"{limited.url}/metrics").text
    assert 'modelport_rejected_total{model="slow",reason="deadline",version="1"}' in metrics
    time.sleep(0.6)  # let the model finish the abandoned work
    assert httpx.post(url, json=slow(0), timeout=10).status_code == 200


def test_a_model_that_raises_answers_500_without_internals(limited: RunningServer) -> None:
    response = httpx.post(f"{limited.url}/v2/models/slow/infer", json=slow(-1), timeout=10)
    assert response.status_code == 500
    error = response.json()["error"]
    request_id = response.headers["x-request-id"]
    assert error == (
        "the model failed on this request; the server log has the details "
        f"(request id {request_id})"
    )
    assert f"request {request_id} failed: " in limited.log
    assert "negative seconds" in limited.log  # the details are in the log, not the response
    assert httpx.get(f"{limited.url}/v2/health/ready").status_code == 200


def test_a_body_that_never_arrives_times_out(limited: RunningServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", limited.port)) as conn:
        conn.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        conn.settimeout(10)
        started = time.monotonic()
        reply = conn.recv(4096).decode()
    assert reply.split()[1] == "408"
    assert time.monotonic() - started < 5


def test_sigterm_drains_in_flight_work_then_exits_zero(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--trust-code") as server:
        url = f"{server.url}/v2/models/slow/infer"
        thread, results = post_in_background(url, slow(1.0))
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        thread.join()
        assert results[0].status_code == 200  # the request in flight finished
        assert server.process.wait(30) == 0
        log = server.log
    assert "draining: readiness is now false; 1 requests in flight" in log
    assert "models unloaded" in log


def test_draining_refuses_new_work(repo: Path) -> None:
    # In process, so the open connection cannot race the server closing it.
    from modelport.server.registry import load_registry
    from modelport.server.service import create_app

    app = create_app(repo, ServerConfig(trust_code=True))
    app.registry = load_registry(repo, app.config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client:
            before = await client.get("/v2/health/ready")
            app.begin_drain()
            ready = await client.get("/v2/health/ready")
            refused = await client.post("/v2/models/slow/infer", json=slow(0))
            return before, ready, refused

    import asyncio

    before, ready, refused = asyncio.run(scenario())
    app.registry.close()
    assert before.status_code == 200
    assert ready.status_code == 503
    assert ready.json() == {"ready": False}
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "shutting down" in refused.json()["error"]


def test_a_token_guards_everything_but_health(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with run_server(repo, "--trust-code", "--token-file", str(token_file)) as server:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": [1, 2, 3, 4]}]}  # fmt: skip
        url = f"{server.url}/v2/models/tiny/infer"
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        missing = httpx.post(url, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.get(f"{server.url}/v2/models/tiny").status_code == 401
        good = httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args], capture_output=True, text=True, timeout=60
    )


def test_listening_beyond_loopback_needs_a_token(repo: Path) -> None:
    result = run_cli("serve", str(repo), "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "pass --token" in result.stderr
    assert "--no-auth" in result.stderr


def test_no_auth_beyond_loopback_is_logged_as_a_warning(repo: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", str(repo), "--host", "0.0.0.0",
         "--port", str(port), "--no-auth", "--trust-code"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert "WARNING" in stderr
    assert "--no-auth: anyone who can reach 0.0.0.0" in stderr


def test_bad_serve_options_are_usage_errors(repo: Path) -> None:
    result = run_cli("serve", str(repo), "--version-policy", "newest")
    assert result.returncode == 2
    assert "invalid version policy" in result.stderr
    result = run_cli("serve", str(repo), "--max-queue", "0")
    assert result.returncode == 2
    assert "max_queue must be >= 1" in result.stderr


def test_every_limit_and_setting_has_its_cli_option() -> None:
    options = {p.name for p in serve.params}
    limits = {f.name for f in dataclasses.fields(ServerLimits)}
    assert limits <= options
    settings = {f.name for f in dataclasses.fields(ServerConfig)} - {"limits", "runtime"}
    assert settings <= options | {"trust_pickle", "batching", "lookups"}
    assert {f.name for f in dataclasses.fields(LookupConfig)} <= options
    assert {"max_batch_size", "max_delay_ms", "latency_budget_ms", "cache"} <= options


def _worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True,
                         text=True).stdout  # fmt: skip
    return [int(p) for p in out.split()]


def _requests_counted(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    counted = re.search(
        r'modelport_requests_total\{model="tiny",status="200",version="2"\} (\S+)', metrics
    )
    return 0.0 if counted is None else float(counted.group(1))


def test_workers_share_the_port_replace_the_dead_and_sum_metrics(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--workers", "2") as server:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": [1, 2, 3, 4]}]}  # fmt: skip
        url = f"{server.url}/v2/models/tiny/infer"
        deadline = time.monotonic() + 30
        while (
            len(workers := [p for p in _worker_pids(server.process.pid) if _is_worker(p)]) < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)  # fmt: skip
        for _ in range(20):
            assert httpx.post(url, json=body).status_code == 200
        # A request is counted just after its answer is sent: wait for the last one's count
        # (a kill in between would lose it, as it would lose any work in flight).
        while _requests_counted(server.url) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(20):  # the other worker keeps serving while the dead one is replaced
            assert httpx.post(url, json=body, timeout=30).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [p for p in _worker_pids(server.process.pid) if _is_worker(p)]
            if len(alive) == 2 and workers[0] not in alive:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the dead worker was not replaced")
        # The killed worker's samples stay on disk: every request is counted once.
        assert _requests_counted(server.url) == 40


def _is_worker(pid: int) -> bool:
    """A worker process (multiprocessing's resource tracker is a child of the server too)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


SLOW_LOADING = """
import time


class SlowLoad:
    signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
                 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}

    def load(self):
        time.sleep(3)

    def predict(self, batch):
        return {"y": batch["x"]}
"""


def test_live_while_loading_then_ready(tmp_path: Path) -> None:
    folder = tmp_path / "slow-load"
    folder.mkdir()
    (folder / "model.py").write_text(SLOW_LOADING)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", str(folder), "--port", str(port),
         "--trust-code"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                live = httpx.get(f"{url}/v2/health/live")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert live.status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        loading = httpx.post(f"{url}/v2/models/slow-load/infer", json={"inputs": []})
        assert loading.status_code == 503
        assert "still loading" in loading.json()["error"]
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_repository_that_cannot_load_stops_the_server(
    repo: Path, tmp_path: Path, workers: str
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)
    (broken / "tiny" / "2" / "model.onnx").write_bytes(b"tampered")
    result = run_cli(
        "serve", str(broken), "--port", str(free_port()), "--workers", workers, "--trust-code"
    )
    assert result.returncode == 1
    assert "does not match its manifest" in result.stderr


@pytest.mark.parametrize(
    "mode", [["--max-delay-ms", "5"], ["--latency-budget-ms", "50"]], ids=["window", "target"]
)
def test_batched_requests_each_get_their_own_rows(repo: Path, mode: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "tiny" / "2" / "model.onnx"))
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    with run_server(
        repo, "--trust-code", "--cache", "off", "--max-batch-size", "16", *mode
    ) as server:
        url = f"{server.url}/v2/models/tiny/infer"

        def call(x: np.ndarray) -> np.ndarray:
            body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                "data": x.ravel().tolist()}]}  # fmt: skip
            response = httpx.post(url, json=body, timeout=30)
            assert response.status_code == 200, response.text
            (output,) = response.json()["outputs"]
            return np.array(output["data"], np.float32).reshape(output["shape"])

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, inputs))
        metrics = httpx.get(f"{server.url}/metrics").text
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-5)
    rows = float(
        re.search(r'modelport_batch_size_sum\{model="tiny",version="2"\} (\S+)', metrics)[1]
    )
    calls = float(
        re.search(r'modelport_batch_size_count\{model="tiny",version="2"\} (\S+)', metrics)[1]
    )
    assert rows == sum(len(x) for x in inputs)
    assert calls < len(inputs)  # requests were combined
    assert 'modelport_batch_size_bucket{le="16.0",model="tiny",version="2"}' in metrics


def inference_count(server_url: str, model: str) -> float:
    metrics = httpx.get(f"{server_url}/metrics").text
    found = re.search(
        rf'modelport_request_duration_seconds_count\{{model="{model}",phase="inference",'
        rf'version="1"\}} (\S+)',
        metrics,
    )
    return float(found[1]) if found else 0.0


def test_a_client_that_disconnects_has_its_queued_work_removed(repo: Path) -> None:
    import json
    import socket

    with run_server(repo, "--trust-code", "--cache", "off") as server:
        url = f"{server.url}/v2/models/slow/infer"
        busy, results = post_in_background(url, slow(1.0))  # holds the model's only thread
        time.sleep(0.2)
        payload = json.dumps(slow(0.2)).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                b"application/json\r\nContent-Length: " + str(len(payload)).encode()
                + b"\r\n\r\n" + payload
            )  # fmt: skip
            time.sleep(0.2)  # queued behind the busy request; then the client leaves
        busy.join()
        assert results[0].status_code == 200
        time.sleep(0.5)
        assert inference_count(server.url, "slow") == 1  # the abandoned request never ran
        assert httpx.post(url, json=slow(0), timeout=10).status_code == 200


def test_with_batching_a_failing_request_fails_alone(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--cache", "off", "--max-batch-size", "8") as server:
        url = f"{server.url}/v2/models/slow/infer"
        busy, _ = post_in_background(url, slow(0.5))  # the next ones queue into one batch
        time.sleep(0.1)
        started = [post_in_background(url, slow(v)) for v in (0.01, -1.0, 0.02, 0.03)]
        for thread, _ in started:
            thread.join()
        busy.join()
        statuses = [results[0].status_code for _, results in started]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert statuses == [200, 500, 200, 200]
    assert re.search(r'modelport_batch_size_bucket\{le="4.0",model="slow",version="1"\} [1-9]',
                     metrics)  # fmt: skip


def test_no_auth_on_loopback_is_logged_too(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--no-auth") as server:
        log = server.log
    assert "--no-auth: anyone who can reach 127.0.0.1" in log


def test_serving_a_code_model_needs_trust_code(tmp_path: Path) -> None:
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "model.py").write_text(SLOW_LOADING.replace("time.sleep(3)", "pass"))
    refused = run_cli("serve", str(folder), "--port", str(free_port()))
    assert refused.returncode == 1
    assert f"{folder} is a code model" in refused.stderr
    assert "(CLI: --trust-code)" in refused.stderr
    with run_server(folder, "--trust-code") as server:
        body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
        answer = httpx.post(f"{server.url}/v2/models/echo/infer", json=body).json()
    assert answer["outputs"][0]["data"] == [1, 2]


def test_the_config_handed_to_workers_round_trips_with_every_field_set() -> None:
    from typing import Any

    from modelport.config import BatchingConfig, PredictionLogConfig, RuntimeConfig
    from modelport.server.lifecycle import config_from_json, config_to_json

    # One non-default value per field: a field added without one here fails the test, and so
    # does one that config_from_json cannot bring back.
    values: dict[str, Any] = {
        "host": "::1",
        "port": 8123,
        "grpc_port": 8124,
        "lookups": LookupConfig("sqlite:///p.db", max_age=("24h", "fraud=1h"), write_back=True),
        "workers": 3,
        "token": "s3cret",
        "no_auth": True,
        "grace_s": 2.5,
        "version_policy": "all",
        "limits": ServerLimits(
            max_body_bytes=1000,
            max_json_bytes=900,
            max_json_depth=7,
            max_elements=99,
            request_timeout_s=1.5,
            max_queue=3,
            allow_non_finite=True,
            max_string_bytes=5000,
            max_connections=5,
        ),
        "runtime": RuntimeConfig(
            providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
            intra_op_threads=2,
            inter_op_threads=3,
        ),
        "trust_pickle": True,
        "trust_code": True,
        "batching": BatchingConfig(
            max_batch_size=16,
            max_delay_s=0.005,
            preferred_batch_sizes=(4, 8),
            latency_budget_s=0.05,
        ),
        "cache": "redis://127.0.0.1:6379/3",
        "cache_ttl_s": 60.0,
        "cache_namespace": "blue",
        "tls_cert": "/etc/modelport/cert.pem",
        "tls_key": "/etc/modelport/key.pem",
        "http": "uvicorn",
        "web": True,
        "web_webgpu": "/opt/node_modules/onnxruntime-web",
        "otlp_endpoint": "http://collector:4318",
        "prediction_log": PredictionLogConfig(
            "postgresql://db/log", sample=0.5, inputs="hash", max_queue_bytes=10, flush_s=2.0
        ),
        "watch": True,
        "watch_interval_s": 0.5,
        "control": True,
        "control_token": "control-secret",
        "routes": ("churn=2:90,3:10",),
        "routes_file": "/etc/modelport/routes.txt",
        "shadows": ("churn=3",),
    }
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert fields - set(values) == set(), "give each new ServerConfig field a value above"

    def assert_all_set(config: Any, where: str) -> None:
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if field.default is not dataclasses.MISSING:
                assert value != field.default, f"{where}.{field.name} is left at its default"
            if dataclasses.is_dataclass(value):
                assert_all_set(value, f"{where}.{field.name}")

    config = ServerConfig(**values)
    assert_all_set(config, "ServerConfig")
    source = Path("/srv/models")
    assert config_from_json(config_to_json(source, config)) == (source, config)
