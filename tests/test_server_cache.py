"""The prediction cache in the real server: shared through Redis, per version, single-flight."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

import server_models
from modelport.testing import run_server

REDIS = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("cache") / "models")


def body(name: str, values: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": name, "shape": [len(values)], "datatype": "FP32", "data": values}]}


def counter(metrics: str, model: str, event: str) -> float:
    found = re.search(
        rf'modelport_cache_total\{{event="{event}",model="{model}",version="1"\}} (\S+)', metrics
    )
    return float(found[1]) if found else 0.0


def test_a_value_cached_by_one_worker_is_a_hit_for_another(repo: Path) -> None:
    unique = float(uuid.uuid4().int % 10**6)  # a fresh key in the shared Redis
    with run_server(repo, "--trust-code", "--workers", "2", "--cache", REDIS) as server:
        url = f"{server.url}/v2/models/whoami/infer"
        computed_by = {
            httpx.post(url, json=body("x", [unique]), timeout=30).json()["outputs"][0]["data"][0]
            for _ in range(40)
        }
        last = httpx.post(url, json=body("x", [unique]), timeout=30)
        server.access_entry(last.headers["x-request-id"])  # every line is written by now
        entries = [json.loads(line) for line in server.access_log.splitlines()]
    assert len(computed_by) == 1  # computed once, in one worker; every other answer cached
    hits = {e["pid"] for e in entries if e.get("cache") == "hit"}
    assert len(hits) == 2  # both workers answered from the shared cache
    assert next(iter(computed_by)) in {e["pid"] for e in entries}  # by one of the workers


def post_in_one_write(port: int, path: str, payload: object) -> int:
    """POST with head and body in one write, as curl and wrk send a small request (httpx
    writes them apart): the server then answers before its first wait, outside any task."""
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        return response.status


def test_redis_serves_requests_that_arrive_in_one_write(repo: Path) -> None:
    unique = float(uuid.uuid4().int % 10**6)
    with run_server(repo, "--trust-code", "--cache", REDIS) as server:
        statuses = [
            post_in_one_write(server.port, "/v2/models/whoami/infer", body("x", [unique]))
            for _ in range(3)
        ]
        metrics = httpx.get(f"{server.url}/metrics").text
        log = server.log
    assert statuses == [200, 200, 200]
    assert "unavailable" not in log
    assert counter(metrics, "whoami", "hit") == 2


def test_versions_never_share_answers_and_no_cache_bypasses(repo: Path) -> None:
    import onnxruntime as ort

    x = [[0.25, -1.0, 2.0, 0.5]]
    request = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    with run_server(repo, "--trust-code", "--version-policy", "all", "--cache", REDIS) as server:
        for version in (1, 2, 1, 2):
            response = httpx.post(f"{server.url}/v2/models/tiny/versions/{version}/infer",
                                  json=request)  # fmt: skip
            session = ort.InferenceSession(str(repo / "tiny" / str(version) / "model.onnx"))
            expected = session.run(None, {"input": np.array(x, np.float32)})[0]
            np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected.ravel(),
                                       rtol=1e-6)  # fmt: skip
        fresh = httpx.post(f"{server.url}/v2/models/tiny/versions/1/infer", json=request,
                           headers={"Cache-Control": "no-cache"})  # fmt: skip
        assert fresh.status_code == 200
        entry = server.access_entry(fresh.headers["x-request-id"])
    assert "cache" not in entry


def test_identical_requests_in_flight_are_computed_once(repo: Path) -> None:
    value = 0.5 + (uuid.uuid4().int % 1000) / 1e6
    with run_server(repo, "--trust-code", "--cache", "memory") as server:
        url = f"{server.url}/v2/models/slow/infer"
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda: results.append(
                httpx.post(url, json=body("seconds", [value]), timeout=30)))
            for _ in range(4)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert [r.status_code for r in results] == [200] * 4
    inference = re.search(
        r'modelport_request_duration_seconds_count\{model="slow",phase="inference",version="1"\} '
        r"(\S+)",
        metrics,
    )
    assert inference is not None
    assert float(inference[1]) == 1


def test_a_model_can_opt_out_of_the_cache(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--cache", "memory") as server:
        for _ in range(3):
            response = httpx.post(f"{server.url}/v2/models/whoami-live/infer",
                                  json=body("x", [1.0]))  # fmt: skip
            assert "cache" not in server.access_entry(response.headers["x-request-id"])


def test_a_redis_outage_degrades_to_no_cache(repo: Path) -> None:
    with run_server(repo, "--trust-code", "--cache", "redis://127.0.0.1:1/0") as server:
        for _ in range(3):
            response = httpx.post(f"{server.url}/v2/models/whoami/infer", json=body("x", [1.0]))
            assert response.status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        log = server.log
    assert counter(metrics, "whoami", "miss") == 3
    assert log.count("is unavailable") == 1


def test_repeated_requests_are_answered_from_memory_and_versions_stay_apart(repo: Path) -> None:
    x = np.array([[0.25, -1.0, 2.0, 0.5]], np.float32)
    as_json = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                           "data": x.tolist()}]}  # fmt: skip
    head = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    binary = {"content": head.encode() + x.tobytes(),
              "headers": {"Inference-Header-Content-Length": str(len(head))}}  # fmt: skip
    with run_server(repo, "--trust-code", "--version-policy", "all", "--cache", "memory") as server:
        answers: dict[tuple[str, int], list[httpx.Response]] = {}
        for _ in range(2):
            for version in (1, 2):
                url = f"{server.url}/v2/models/tiny/versions/{version}/infer"
                answers.setdefault(("json", version), []).append(httpx.post(url, json=as_json))
                answers.setdefault(("binary", version), []).append(httpx.post(url, **binary))
                answers.setdefault(("v1", version), []).append(httpx.post(
                    f"{server.url}/v1/models/tiny/versions/{version}:predict",
                    json={"instances": x.tolist()},
                ))  # fmt: skip
        caching = {
            key: [server.access_entry(r.headers["x-request-id"]).get("cache") for r in replies]
            for key, replies in answers.items()
        }
    for (kind, version), (first, again) in answers.items():
        assert first.status_code == again.status_code == 200
        assert again.content == first.content  # the same answer, from memory the second time
        assert caching[(kind, version)][1] == "hit"
        assert first.headers.get("inference-header-content-length") == again.headers.get(
            "inference-header-content-length"
        )
    for kind in ("json", "binary", "v1"):
        assert answers[(kind, 1)][0].content != answers[(kind, 2)][0].content
