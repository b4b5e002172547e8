"""The control API (the repository extension) over REST and gRPC: off by default, who may call
it, and its refusals, against a real server with tritonclient and httpx."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import modelport
from modelport.testing import free_port, run_server
from version_models import add_scorer, infer_body

TOKEN, CONTROL = "access-secret", "control-secret"


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = modelport.Repository.init(tmp_path_factory.mktemp("control") / "models")
    add_scorer(repo, "scorer")
    add_scorer(repo, "scorer", factor=3.0)
    add_scorer(repo, "slow-load", load_s=1.0)
    return repo.root


def _grpc_error(call: Any) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status())


def test_control_is_off_by_default(repo_root: Path) -> None:
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    with run_server(repo_root, "--trust-code", "--grpc-port", str(grpc_port)) as server:
        for path in ("/v2/repository/index", "/v2/repository/models/scorer/unload"):
            answer = httpx.post(server.url + path)
            assert answer.status_code == 404
            assert "--control" in answer.json()["error"]
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert _grpc_error(client.get_model_repository_index) == "StatusCode.UNIMPLEMENTED"
        assert _grpc_error(lambda: client.unload_model("scorer")) == "StatusCode.UNIMPLEMENTED"
        assert client.is_model_ready("scorer")


def test_on_loopback_standard_clients_need_no_token_but_pages_are_refused(repo_root: Path) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    args = ("--trust-code", "--control", "--grpc-port", str(grpc_port), "--cache", "off")
    with run_server(repo_root, *args) as server:
        rest = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert "model_repository" in rest.get_server_metadata()["extensions"]
        assert "model_repository" in rpc.get_server_metadata().extensions
        index = rest.get_model_repository_index()
        assert {"name": "scorer", "version": "2", "state": "READY", "reason": ""} in index
        assert {
            "name": "scorer", "version": "1", "state": "UNAVAILABLE",
            "reason": "not selected by the version policy (latest)",
        } in index  # fmt: skip
        ready = rpc.get_model_repository_index(as_json=True)["models"]
        assert {m["name"] for m in ready} == {"scorer", "slow-load"}
        rpc.unload_model("scorer")
        assert not rest.is_model_ready("scorer")
        assert (
            httpx.post(f"{server.url}/v2/models/scorer/infer", json=infer_body([1])).status_code
            == 404
        )
        rest.load_model("scorer")
        assert rpc.is_model_ready("scorer")
        # Nothing from a request names a configuration or a file.
        with pytest.raises(InferenceServerException, match="no configuration or file"):
            rest.load_model("scorer", config='{"backend": "python"}')
        with pytest.raises(InferenceServerException, match="no configuration or file"):
            rest.load_model("scorer", config="{}", files={"file:1/model.py": b"import os"})
        assert _grpc_error(lambda: rpc.load_model("scorer", config="{}")) == (
            "StatusCode.INVALID_ARGUMENT"
        )
        # Unknown models: 404 / NOT_FOUND, names checked.
        missing = httpx.post(f"{server.url}/v2/repository/models/nope/load")
        assert missing.status_code == 404
        assert "no model named 'nope'" in missing.json()["error"]
        assert _grpc_error(lambda: rpc.unload_model("nope")) == "StatusCode.NOT_FOUND"
        bad = httpx.post(f"{server.url}/v2/repository/models/..%2Fetc/load")
        assert bad.status_code == 400
        # A web page of another site, or a rebinding DNS name, cannot reach it.
        for headers in ({"origin": "http://evil.example"}, {"host": "evil.example"}):
            refused = httpx.post(f"{server.url}/v2/repository/index", headers=headers)
            assert refused.status_code == 403


def test_with_tokens_only_the_control_token_opens_control(repo_root: Path) -> None:
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    args = ("--trust-code", "--control", "--token", TOKEN, "--control-token", CONTROL,
            "--grpc-port", str(grpc_port))  # fmt: skip
    with run_server(repo_root, *args) as server:
        index = f"{server.url}/v2/repository/index"
        for headers in ({}, {"authorization": f"Bearer {TOKEN}"}, {"authorization": "Bearer x"}):
            answer = httpx.post(index, headers=headers)
            assert answer.status_code == 401
            assert "control token" in answer.json()["error"]
            unload = httpx.post(f"{server.url}/v2/repository/models/scorer/unload", headers=headers)
            assert unload.status_code == 401
        assert httpx.post(index, headers={"authorization": f"Bearer {CONTROL}"}).status_code == 200
        # ... and the control token opens no inference.
        infer = f"{server.url}/v2/models/scorer/infer"
        as_control = {"authorization": f"Bearer {CONTROL}"}
        assert httpx.post(infer, json=infer_body([1]), headers=as_control).status_code == 401
        as_client = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.post(infer, json=infer_body([1]), headers=as_client).status_code == 200
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for headers in (None, as_client):
            refused = _grpc_error(lambda h=headers: rpc.get_model_repository_index(headers=h))  # type: ignore[misc]
            assert refused == "StatusCode.UNAUTHENTICATED"
        assert len(rpc.get_model_repository_index(headers=as_control).models) == 3
        log = server.log
    assert log.count("missing or wrong control token") >= 8


def test_a_load_while_another_of_the_same_model_runs_is_409(repo_root: Path) -> None:
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    args = ("--trust-code", "--control", "--grpc-port", str(grpc_port))
    with run_server(repo_root, *args) as server:
        load = f"{server.url}/v2/repository/models/slow-load/load"
        assert httpx.post(f"{server.url}/v2/repository/models/slow-load/unload").status_code == 200
        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(answer=httpx.post(load, timeout=30)))
        thread.start()
        time.sleep(0.4)  # its load() sleeps 1 s
        second = httpx.post(load)
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        aborted = _grpc_error(lambda: rpc.load_model("slow-load"))
        thread.join()
        assert second.status_code == 409
        assert "a load or unload of 'slow-load' is running" in second.json()["error"]
        assert aborted == "StatusCode.ABORTED"
        assert first["answer"].status_code == 200
        assert rpc.is_model_ready("slow-load")


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", "serve", *args, "--port", str(free_port())]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_control_settings_that_would_expose_it_are_refused(repo_root: Path) -> None:
    beyond = _serve_fails(str(repo_root), "--control", "--host", "0.0.0.0", "--token", TOKEN)
    assert beyond.returncode == 2
    assert "pass --control-token" in beyond.stderr
    same = _serve_fails(str(repo_root), "--control", "--token", TOKEN, "--control-token", TOKEN)
    assert same.returncode == 2
    assert "must differ from the access token" in same.stderr
    workers = _serve_fails(str(repo_root), "--control", "--workers", "2")
    assert workers.returncode == 2
    assert "--control needs --workers 1" in workers.stderr
