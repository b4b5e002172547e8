"""A model's fallback and circuit breaker (manifest ``serving.fallback``), through the REST
door of the service in this process: a model that really raises or really sleeps."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

import modelport
from modelport.config import FallbackConfig, ServerConfig
from modelport.server.fallback import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from modelport.testing import free_port, run_server
from server_models import SLOW_MODEL, in_process

# The slow model sleeps for its largest input (seconds) and raises on a negative one.
SLOW_SIGNATURE_Y = 2.0  # y = seconds * 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fallback")
    repo = modelport.Repository.init(root / "models")
    code = root / "slow-src"
    code.mkdir()
    (code / "model.py").write_text(SLOW_MODEL)
    constant = {"outputs": {"y": -1.0}, "deadline_ms": 300, "failures": 3, "open_s": 0.5}
    modelport.add_model(repo, "guarded", code, trust_code=True, serving={"fallback": constant})
    modelport.add_model(repo, "backup", code, trust_code=True)
    modelport.add_model(
        repo,
        "chained",
        code,
        trust_code=True,
        serving={"fallback": {"model": "backup", "deadline_ms": 200}},
    )
    return repo.root


def _infer(http: object, name: str, seconds: list[float]) -> tuple[int, dict[str, str], object]:
    body = {"inputs": [{"name": "seconds", "shape": [len(seconds)], "datatype": "FP32",
                        "data": seconds}]}  # fmt: skip
    answer = http.post(f"/v2/models/{name}/infer", json=body)  # type: ignore[attr-defined]
    data = answer.json()
    return answer.status_code, dict(answer.headers), data


def _metric(http: object, line_start: str) -> float:
    text = http.get("/metrics").text  # type: ignore[attr-defined]
    values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start)]
    return sum(values)


def test_the_breaker_opens_after_failures_and_a_probe_closes_it(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True, cache="off")) as http:
        status, headers, data = _infer(http, "guarded", [0.0, 0.01])
        assert status == 200
        assert headers["x-modelport-circuit"] == "closed"
        assert "x-modelport-fallback" not in headers
        assert data["outputs"][0]["data"] == [0.0, 0.02]  # the model itself

        status, headers, data = _infer(http, "guarded", [-1.0, 0.0])  # the model raises
        assert status == 200
        assert headers["x-modelport-fallback"] == "error"
        assert data["outputs"][0]["data"] == [-1.0, -1.0]  # the constant, one per row

        started = time.monotonic()
        status, headers, _ = _infer(http, "guarded", [1.0])  # sleeps past its 300 ms deadline
        assert status == 200
        assert headers["x-modelport-fallback"] == "deadline"
        assert time.monotonic() - started < 0.9
        time.sleep(0.8)  # the model's one thread finishes its sleep

        _infer(http, "guarded", [-1.0])  # the third failure within the window: open
        status, headers, data = _infer(http, "guarded", [0.0])  # healthy, yet not asked
        assert headers["x-modelport-fallback"] == "open"
        assert headers["x-modelport-circuit"] == "open"
        assert data["outputs"][0]["data"] == [-1.0]
        assert _metric(http, 'modelport_circuit_state{model="guarded"') == 1
        fallen = 'modelport_fallback_total{model="guarded",reason="open"'
        assert _metric(http, fallen) >= 1

        time.sleep(0.6)  # open_s passed: the next request probes the model, which is well
        status, headers, data = _infer(http, "guarded", [0.0])
        assert "x-modelport-fallback" not in headers
        assert headers["x-modelport-circuit"] == "closed"
        assert data["outputs"][0]["data"] == [0.0]
        assert _metric(http, 'modelport_circuit_state{model="guarded"') == 0
        for reason in ("error", "deadline", "open"):
            line = f'modelport_fallback_total{{model="guarded",reason="{reason}"'
            assert _metric(http, line) >= 1, reason


def test_bad_input_is_refused_and_not_counted_as_a_failure(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True, cache="off")) as http:
        for _ in range(5):
            status, headers, _data = _infer(http, "guarded", ["text"])  # type: ignore[list-item]
            assert status == 400
            assert "x-modelport-fallback" not in headers
        status, headers, _ = _infer(http, "guarded", [0.0])
        assert status == 200
        assert headers["x-modelport-circuit"] == "closed"


def test_another_model_answers_for_a_failing_one(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True, cache="off")) as http:
        # chained misses its 200 ms deadline; backup, with no deadline of its own, answers
        status, headers, data = _infer(http, "chained", [0.5])
        assert status == 200
        assert headers["x-modelport-fallback"] == "deadline"
        assert data["outputs"][0]["data"] == [1.0]
        assert data["model_name"] == "chained"
        # backup raises on negative input too: the fallback's own failure is an error, 500
        time.sleep(0.4)
        status, headers, _ = _infer(http, "chained", [-1.0])
        assert status == 500
        assert "x-modelport-fallback" not in headers


def test_a_model_without_fallback_answers_as_before(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True, cache="off")) as http:
        status, headers, _data = _infer(http, "backup", [-1.0])
        assert status == 500
        assert "x-modelport-fallback" not in headers


def test_bad_fallback_settings_are_refused_at_import(tmp_path: Path, tiny_onnx: bytes) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    for settings, words in [
        ({}, "either another model or constant outputs"),
        ({"model": "a", "outputs": {"y": 1}}, "either another model"),
        ({"outputs": {"y": 1}, "deadline_ms": 0}, "deadline_ms must be > 0"),
        ({"outputs": {"y": 1}, "retries": 3}, "unknown fallback setting 'retries'"),
        ({"outputs": []}, "fallback outputs must map"),
    ]:
        with pytest.raises(ValueError, match=words):
            modelport.add_model(repo, "tiny", tiny_onnx, serving={"fallback": settings})
    assert repo.names() == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_counts_failures_within_its_window_only() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, window_s=10, open_s=5, clock=clock)
    breaker.failed()
    clock.now += 11  # the first failure left the window
    breaker.failed()
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failed()  # the probe failed: open again, for another open_s
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.abandoned()  # its client left: another request may probe
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == CLOSED
    assert breaker.allow()


def test_fallback_config_reads_the_manifest_form() -> None:
    config = FallbackConfig.from_manifest({"model": "b", "deadline_ms": 250, "failures": 2})
    assert (config.model, config.deadline_s, config.failures) == ("b", 0.25, 2)


def test_fallback_answers_are_never_kept_for_identical_requests(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True)) as http:  # answers kept by default
        reasons = [_infer(http, "guarded", [-2.0])[1]["x-modelport-fallback"] for _ in range(4)]
        assert reasons[:3] == ["error", "error", "error"]  # the model asked each time
        assert reasons[3] == "open"  # three failures opened the breaker


def test_grpc_and_graphql_get_the_same_fallback(repo: Path) -> None:
    port = free_port()
    with run_server(repo, "--trust-code", "--cache", "off", "--grpc-port", str(port)) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            seconds = triton.InferInput("seconds", [2], "FP32")
            seconds.set_data_from_numpy(np.array([-1.0, 0.0], np.float32))  # the model raises
            answer = client.infer("guarded", [seconds])
            assert answer.as_numpy("y").tolist() == [-1.0, -1.0]  # the constant, one per row

        request = service_pb2.ModelInferRequest(model_name="guarded")
        request.inputs.add(name="seconds", datatype="FP32", shape=[1]).contents.fp32_contents[:] = [
            0.5
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            _, call = stub.ModelInfer.with_call(request)  # 0.5 s: past its 300 ms deadline
            trailers = dict(call.trailing_metadata())
        assert trailers["x-modelport-fallback"] == "deadline"
        assert trailers["x-modelport-circuit"] == "closed"  # two failures of the three

        time.sleep(0.3)  # the model's one thread finishes its sleep
        query = """mutation { predict(model: "guarded", inputs: [{name: "seconds", data: [0.0]}])
                   { outputs { data } circuit fallback } }"""
        answer = httpx.post(f"{server.url}/graphql", json={"query": query}).json()
        assert answer["data"]["predict"] == {
            "outputs": [{"data": [0.0]}], "circuit": "closed", "fallback": None
        }  # fmt: skip
