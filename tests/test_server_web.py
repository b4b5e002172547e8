"""``serve --web``: what the server hands browsers (the bundles) and what it takes from them
(edge telemetry), refused cleanly when it is wrong. The page itself runs in
test_export_web.py."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import modelport
from modelport.config import ServerConfig
from modelport.demo import mlp_onnx
from modelport.export.web import RUNTIME, RUNTIME_FILES
from modelport.testing import run_server
from server_models import SLOW_MODEL, in_process

TOKEN = "s3cret-edge"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web")
    repo = modelport.Repository.init(root / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=4))
    code = root / "slow-src"
    code.mkdir()
    (code / "model.py").write_text(SLOW_MODEL)
    modelport.add_model(repo, "slow", code, trust_code=True)
    return repo.root


def test_the_vendored_runtime_is_what_npm_published() -> None:
    sums = dict(
        reversed(line.split()) for line in (RUNTIME / "SHA256SUMS").read_text().splitlines()
    )
    assert sorted(sums) == sorted(RUNTIME_FILES)
    for name in RUNTIME_FILES:
        assert hashlib.sha256((RUNTIME / name).read_bytes()).hexdigest() == sums[name], name


def test_bundle_files_with_their_content_types(repo: Path) -> None:
    with in_process(repo, ServerConfig(web=True, trust_code=True)) as http:
        manifest = http.get("/web/tiny/manifest.json")
        assert manifest.headers["content-type"] == "application/json"
        assert manifest.headers["cache-control"] == "no-store"
        described = manifest.json()
        assert (described["name"], described["version"]) == ("tiny", 2)
        assert described["model"]["url"] == "versions/2/model.onnx"
        assert described["service"] == "../../"
        model = http.get("/web/tiny/versions/2/model.onnx")
        assert model.headers["content-type"] == "application/octet-stream"
        assert hashlib.sha256(model.content).hexdigest() == described["model"]["sha256"]
        for path, kind in [
            ("/web/tiny/", "text/html; charset=utf-8"),
            ("/web/tiny/index.html", "text/html; charset=utf-8"),
            ("/web/tiny/modelport.js", "text/javascript; charset=utf-8"),
            ("/web/tiny/ort/ort.wasm.min.mjs", "text/javascript; charset=utf-8"),
            ("/web/tiny/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ]:
            answer = http.get(path)
            assert (answer.status_code, answer.headers["content-type"]) == (200, kind), path
        redirect = http.get("/web/tiny", follow_redirects=False)
        assert (redirect.status_code, redirect.headers["location"]) == (308, "/web/tiny/")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/web/tiny/%2e%2e/%2e%2e/manifest.json", "no such file"),
        ("/web/tiny/..%2f..%2fmanifest.json", "no such file"),
        ("/web/tiny/versions/2/..%2f..%2f..%2f..%2fetc%2fpasswd", "no such file"),
        ("/web/tiny/versions/2/manifest.json", "no such file"),
        ("/web/tiny/versions%2F2%2Fmodel.onnx", "no such file"),  # not the model's route
        ("/web/tiny/versions/2/model.onnx/x", "no such file"),
        ("/web/tiny/versions/1/model.onnx", "has no version 1 on the web"),  # policy: latest
        ("/web/tiny/versions/9/model.onnx", "has no version 9"),
        ("/web/tiny/versions/0/model.onnx", "invalid version"),
        ("/web/nope/", "no model named 'nope'"),
        ("/web/..%2fmodels/", "invalid model name"),
        ("/web/slow/manifest.json", "only ONNX models can run in a browser"),
        ("/web/slow/", "only ONNX models can run in a browser"),
    ],
)
def test_nothing_else_is_served(repo: Path, path: str, words: str) -> None:
    with in_process(repo, ServerConfig(web=True, trust_code=True)) as http:
        answer = http.get(path)
        assert answer.status_code in (400, 404), path
        assert words in answer.json()["error"]


def test_the_model_files_take_the_token_the_page_does_not(repo: Path) -> None:
    with in_process(repo, ServerConfig(web=True, token=TOKEN, trust_code=True)) as http:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for path in ("/web/tiny/", "/web/tiny/modelport.js", "/web/tiny/ort/ort.wasm.min.mjs"):
            assert http.get(path).status_code == 200, path
        for path in ("/web/tiny/manifest.json", "/web/tiny/versions/2/model.onnx"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers=auth).status_code == 200, path
        # Without the token the public files tell nothing of which models exist; with it, they do
        assert http.get("/web/no-such-model/").status_code == 200
        assert http.get("/web/no-such-model/", headers=auth).status_code == 404
        assert http.get("/web/no-such-model/manifest.json").status_code == 401
        telemetry = {"model": "tiny", "records": []}
        assert http.post("/v2/edge/telemetry", json=telemetry).status_code == 401
        assert http.post("/v2/edge/telemetry", json=telemetry, headers=auth).status_code == 200


def test_a_changed_model_file_is_not_served(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    with in_process(repo.root, ServerConfig(web=True)) as http:
        assert http.get("/web/tiny/versions/1/model.onnx").status_code == 200
        model = repo.version_dir("tiny", 1) / "model.onnx"
        model.write_bytes(model.read_bytes()[:-1] + b"\0")
        answer = http.get("/web/tiny/versions/1/model.onnx")
        assert answer.status_code == 500
        assert "sha256" not in answer.text
        assert str(tmp_path) not in answer.text


def test_without_web_there_are_no_bundles(repo: Path) -> None:
    with in_process(repo, ServerConfig(trust_code=True)) as http:
        assert "--web" in http.get("/web/tiny/").json()["error"]
        assert http.post("/v2/edge/telemetry", json={}).status_code == 404
        assert "/v2/edge/telemetry" not in http.get("/openapi.json").json()["paths"]


def test_telemetry_is_counted_in_metrics(repo: Path) -> None:
    with in_process(repo, ServerConfig(web=True, trust_code=True)) as http:
        records = [{"version": 2, "backend": "wasm", "event": "local", "latency_ms": 1.5}] * 3
        records += [{"version": 1, "backend": "wasm", "event": "failure"}]
        records += [{"version": 2, "backend": "service", "event": "fallback", "latency_ms": 9}]
        answer = http.post("/v2/edge/telemetry", json={"model": "tiny", "records": records})
        assert answer.status_code == 200
        assert answer.json() == {"accepted": 5}
        metrics = http.get("/metrics").text
        local = 'modelport_edge_predictions_total{backend="wasm",event="local",model="tiny",'
        assert f'{local}version="2"}} 3.0' in metrics
        assert 'event="failure",model="tiny",version="1"} 1.0' in metrics
        assert 'modelport_edge_latency_seconds_count{backend="service",model="tiny"' in metrics
        assert "/v2/edge/telemetry" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("message", "status", "words"),
    [
        ("[]", 400, "telemetry must be"),
        ('{"model": "tiny"}', 400, "telemetry must be"),
        ('{"model": "tiny", "records": [1]}', 400, "needs version, backend and event"),
        ('{"model": "nope", "records": []}', 404, "no model named 'nope'"),
        ('{"model": "../x", "records": []}', 400, "invalid model name"),
        (
            '{"model": "tiny", "records": [{"version": 7, "backend": "wasm", "event": "local"}]}',
            400,
            "version 7 is not one of this model's",
        ),
        (
            '{"model": "tiny", "records": [{"version": 1, "backend": "gpu", "event": "local"}]}',
            400,
            "backend must be one of",
        ),
        (
            '{"model": "tiny", "records": [{"version": 1, "backend": "wasm", "event": "local",'
            ' "latency_ms": -1}]}',
            400,
            "latency_ms must be a number",
        ),
        (
            '{"model": "tiny", "records": [{"version": 1, "backend": "wasm", "event": "local",'
            ' "input": [1, 2]}]}',
            400,
            "unknown field 'input'",
        ),
        ('{"model": "tiny", "records": [' + ",".join(["{}"] * 300) + "]}", 400, "over the limit"),
        ('{"model": "tiny", "records": ["' + "x" * 70_000 + '"]}', 413, "at most 65536 bytes"),
        ("{not json", 400, ""),
    ],
)
def test_bad_telemetry_is_refused_whole(repo: Path, message: str, status: int, words: str) -> None:
    with in_process(repo, ServerConfig(web=True, trust_code=True)) as http:
        before = http.get("/metrics").text.count("modelport_edge_predictions_total{")
        answer = http.post(
            "/v2/edge/telemetry", content=message, headers={"content-type": "application/json"}
        )
        assert answer.status_code == status
        assert words in answer.json()["error"]
        assert http.get("/metrics").text.count("modelport_edge_predictions_total{") == before


def test_a_telemetry_flood_gets_429_never_5xx(repo: Path) -> None:
    with in_process(repo, ServerConfig(web=True, trust_code=True)) as http:
        message = {"model": "tiny", "records": [{"version": 2, "backend": "wasm",
                                                 "event": "local", "latency_ms": 1}]}  # fmt: skip
        statuses = [http.post("/v2/edge/telemetry", json=message).status_code for _ in range(300)]
        assert set(statuses) == {200, 429}
        assert 100 <= statuses.count(200) < 200  # the burst, and what refilled meanwhile
        refused = http.post("/v2/edge/telemetry", json=message)
        if refused.status_code == 429:
            assert refused.headers["retry-after"] == "1"


def test_serve_web_needs_a_repository(tmp_path: Path, tiny_onnx_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", str(tiny_onnx_file), "--web"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "serve --web needs a model repository" in done.stderr


def test_serve_web_from_the_command_line(repo: Path) -> None:
    with run_server(repo, "--web", "--trust-code", "--no-access-log") as server:
        described = httpx.get(f"{server.url}/web/tiny/manifest.json").json()
        assert described["version"] == 2
        docs = httpx.get(f"{server.url}/openapi.json").json()
        assert "/web/{model_name}/{file}" in docs["paths"]
        assert json.dumps(docs["paths"]["/web/{model_name}/{file}"]).count('"file"') >= 1
        for path in ("/web/tiny/../../../etc/passwd", "/web/tiny/versions/2/../../../../x.py"):
            with socket.create_connection(("127.0.0.1", server.port)) as raw:  # not normalized
                raw.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = raw.recv(65536).decode("latin-1")
            assert head.startswith("HTTP/1.1 404"), head
            assert "no such file" in head
