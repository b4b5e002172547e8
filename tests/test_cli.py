import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def modelport(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


def ok(*args: str | Path) -> str:
    result = modelport(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "modelport"
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "0.1.0" in result.stdout


def test_import_list_show_predict(tmp_path: Path, tiny_onnx_file: Path) -> None:
    repo = tmp_path / "models"
    assert "ready" in ok("repo", "init", repo)
    assert "imported tiny:1 (onnx)" in ok(
        "import", tiny_onnx_file, "--name", "tiny", "--repo", repo
    )
    assert "imported tiny:2" in ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    listing = ok("list", "--repo", repo)
    assert listing.startswith("tiny")
    assert "1,2" in listing
    manifest = json.loads(ok("show", "tiny:1", "--repo", repo))
    assert manifest["version"] == 1
    assert manifest["runtime"] == "onnx"

    request = tmp_path / "x.json"
    request.write_text(json.dumps({"input": [[1, 2, 3, 4]]}))
    out = json.loads(ok("predict", "tiny", "--repo", repo, "--input", request))
    assert out["model"] == "tiny"
    assert out["version"] == 2
    expected = _reference(tiny_onnx_file, np.array([[1, 2, 3, 4]], np.float32))
    np.testing.assert_allclose(out["outputs"]["logits"], expected, rtol=1e-6)


def _reference(path: Path, x: np.ndarray) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path)).run(None, {"input": x})[0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("x.npy", None),
        ("x.csv", "a,b,c,d\n1,2,3,4\n5,6,7,8\n"),
        ("x.json", json.dumps([[1, 2, 3, 4], [5, 6, 7, 8]])),
        (
            "v2.json",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [2, 4],
                            "datatype": "FP32",
                            "data": [1, 2, 3, 4, 5, 6, 7, 8],
                        }
                    ]
                }
            ),
        ),
        ("inst.json", json.dumps({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]})),
    ],
)
def test_predict_input_formats(
    tmp_path: Path, tiny_onnx_file: Path, name: str, content: str | None
) -> None:
    repo = tmp_path / "models"
    ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    path = tmp_path / name
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    if content is None:
        np.save(path, x)
    else:
        path.write_text(content)
    out = json.loads(ok("predict", "tiny", "--repo", repo, "--input", path))
    np.testing.assert_allclose(out["outputs"]["logits"], _reference(tiny_onnx_file, x), rtol=1e-6)


def test_import_sklearn_joblib_with_sample(
    tmp_path: Path, digits_pipeline: Any, digits: Any
) -> None:
    import joblib

    repo = tmp_path / "models"
    model_file = tmp_path / "pipe.joblib"
    joblib.dump(digits_pipeline, model_file)
    sample = tmp_path / "sample.npy"
    np.save(sample, digits[0][:16])
    refused = modelport(
        "import", model_file, "--name", "digits", "--sample-input", sample, "--repo", repo
    )
    assert refused.returncode == 1
    assert "--trust-pickle" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok(
        "import",
        model_file,
        "--name",
        "digits",
        "--sample-input",
        sample,
        "--repo",
        repo,
        "--trust-pickle",
    )
    out = json.loads(ok("predict", "digits", "--repo", repo, "--input", sample))
    assert out["outputs"]["label"] == digits_pipeline.predict(digits[0][:16]).tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no model named 'nope'"),
        (["show", "../../etc"], "invalid model name"),
        (["show", "tiny:9"], "has no version 9"),
        (["predict", "tiny", "--input", "BAD"], "input 'input': expected shape [?, 4], got [1, 3]"),
    ],
)
def test_errors_are_one_clear_line(
    tmp_path: Path, tiny_onnx_file: Path, args: list[str], message: str
) -> None:
    repo = tmp_path / "models"
    ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1, 2, 3]]))
    result = modelport(*[str(bad) if a == "BAD" else a for a in args], "--repo", repo)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_usage_errors_and_help(tmp_path: Path) -> None:
    assert "import" in ok("--help")
    missing = modelport("import", tmp_path / "nothing.onnx", "--name", "x")
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert modelport("list", "--repo", tmp_path / "none").returncode == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instances": 5}', "'instances' must be a non-empty list"),
        ('{"instances": [{"input": [1, 2, 3, 4]}, {"y": 1}]}', "row 1: unknown column 'y'"),
        ('{"inputs": [{"name": ["x"], "data": [1, 2, 3, 4]}]}', "needs a string 'name'"),
        ('{"inputs": [{"name": "input", "shape": [3, 3], "data": [1, 2]}]}', "does not fit"),
        ("{oops", "cannot read inputs"),
    ],
)
def test_malformed_input_files_are_one_line_errors(
    tmp_path: Path, tiny_onnx_file: Path, content: str, message: str
) -> None:
    repo = tmp_path / "models"
    ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    request = tmp_path / "bad.json"
    request.write_text(content)
    result = modelport("predict", "tiny", "--repo", repo, "--input", request)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {request}: ")
    assert message in result.stderr


def test_ragged_csv_is_a_one_line_error(tmp_path: Path, tiny_onnx_file: Path) -> None:
    repo = tmp_path / "models"
    ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    request = tmp_path / "bad.csv"
    request.write_text("b,input\n1\n")
    result = modelport("predict", "tiny", "--repo", repo, "--input", request)
    assert result.returncode == 1
    assert "every CSV row needs 2 columns" in result.stderr


def test_failed_import_into_a_new_folder_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    result = modelport("import", bad, "--name", "x", "--repo", tmp_path / "typo")
    assert result.returncode == 1
    assert not (tmp_path / "typo").exists()


def test_os_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = modelport("repo", "init", tmp_path / "file" / "below")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_repository_that_is_not_the_demo(
    tmp_path: Path, tiny_onnx_file: Path
) -> None:
    repo = tmp_path / "models"
    ok("import", tiny_onnx_file, "--name", "tiny", "--repo", repo)
    result = modelport("demo", repo)
    assert result.returncode == 2
    assert "not a demo repository" in result.stderr


def test_serve_refuses_an_unknown_cache(tmp_path: Path, tiny_onnx_file: Path) -> None:
    result = modelport("serve", tiny_onnx_file, "--cache", "memcached://127.0.0.1:11211")
    assert result.returncode == 2
    assert "unknown cache 'memcached://127.0.0.1:11211'" in result.stderr


@pytest.fixture
def redis_socket() -> Iterator[Path]:
    """A Redis server of our own, listening on a unix socket only."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    with tempfile.TemporaryDirectory() as folder:  # short: socket paths have a length limit
        socket = Path(folder) / "redis.sock"
        server = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(socket), "--save", "",
             "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not socket.exists():
                assert server.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
            yield socket
        finally:
            server.terminate()
            server.wait(10)


def test_serve_takes_a_redis_cache_on_a_unix_socket(
    tmp_path: Path, tiny_onnx_file: Path, redis_socket: Path
) -> None:
    import httpx

    from modelport.testing import run_server

    request = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                           "data": [1, 2, 3, 4]}]}  # fmt: skip
    with run_server(tiny_onnx_file, "--cache", f"unix://{redis_socket}") as server:
        answers = [httpx.post(f"{server.url}/v2/models/tiny/infer", json=request) for _ in "ab"]
        cache = [server.access_entry(a.headers["x-request-id"]).get("cache") for a in answers]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["outputs"] == answers[1].json()["outputs"]
    assert cache == ["miss", "hit"]


@pytest.mark.slow
def test_import_a_torch_file_with_a_csv_sample(tmp_path: Path) -> None:
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 3))
    torch.save(net, tmp_path / "net.pt")
    sample = tmp_path / "rows.csv"
    sample.write_text("a,b,c,d\n1,2,3,4\n0.5,0.1,0,2\n")
    repo = tmp_path / "models"
    ok(
        "import",
        tmp_path / "net.pt",
        "--name",
        "net",
        "--sample-input",
        sample,
        "--repo",
        repo,
        "--trust-pickle",
    )
    out = json.loads(ok("predict", "net", "--repo", repo, "--input", sample))
    with torch.no_grad():
        expected = net(torch.tensor([[1, 2, 3, 4], [0.5, 0.1, 0, 2]])).numpy()
    np.testing.assert_allclose(out["outputs"]["output"], expected, rtol=1e-5, atol=1e-6)


def test_code_models_need_trust_code_to_import_and_predict(
    tmp_path: Path, code_folder: Path
) -> None:
    repo = tmp_path / "models"
    refused = modelport("import", code_folder, "--name", "doubler", "--repo", repo)
    assert refused.returncode == 1
    assert f"error: {code_folder} is a code model: its model.py is Python" in refused.stderr
    assert "(CLI: --trust-code)" in refused.stderr
    ok("import", code_folder, "--name", "doubler", "--repo", repo, "--trust-code")
    request = tmp_path / "x.json"
    request.write_text('{"x": [[1, 2]]}')
    refused = modelport("predict", "doubler", "--repo", repo, "--input", request)
    assert refused.returncode == 1
    assert "(CLI: --trust-code)" in refused.stderr
    out = json.loads(ok("predict", "doubler", "--repo", repo, "--input", request, "--trust-code"))
    assert out["outputs"]["y"] == [[2, 4]]
