"""The model in the browser: the exported page in real headless Chromium (the system's, driven
by Playwright) against a real ``modelport serve --web``, predicting with onnxruntime-web's WASM
build; its fallback, updates and telemetry really exercised."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.errors import IntegrityError
from modelport.export import web
from modelport.signature import Signature, validate_inputs
from modelport.testing import RunningServer, run_server

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGPU on SwiftShader, Chromium's CPU implementation of it: no GPU needed
    "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
]  # fmt: skip
OUTPUT = Path(os.environ.get("MODELPORT_TEST_OUTPUT", Path(__file__).parent.parent / "test-output"))
READY = "window.modelportPage && window.modelportPage.ready"
PREDICT = "async (inputs) => await window.modelportPage.model.predict(inputs)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The system Chromium, started once for this module (the only one that drives it); each
    test opens its own context (its own Cache Storage and local storage).

    Not for the session: while Playwright's sync API is open it runs an event loop on the main
    thread, and every later test's asyncio.run() (and Playwright elsewhere) would fail."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    yield context
    context.close()


@pytest.fixture(scope="module")
def repo(
    tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray],
    digits_pipeline: Any,
) -> modelport.Repository:  # fmt: skip
    repo = modelport.Repository.init(tmp_path_factory.mktemp("edge") / "models")
    modelport.add_model(repo, "digits", digits_pipeline, sample_input=digits[0][:64])
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    return repo


@pytest.fixture(scope="module")
def server(repo: modelport.Repository) -> Iterator[RunningServer]:
    with run_server(repo.root, "--web", "--no-access-log") as server:
        yield server


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(READY, timeout=60_000)
    assert page.evaluate("window.modelportPage.error || null") is None
    return page


def metric(server: RunningServer, start: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(start))


def test_the_demo_page_predicts_like_python(
    context: Any, server: RunningServer, repo: modelport.Repository,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:  # fmt: skip
    x = digits[0][100:150]
    with repo.load("digits") as model:
        expected = model.predict(x)
    page = open_page(context, f"{server.url}/web/digits/")
    page.fill("#input-input", json.dumps(x[:1].tolist()))
    page.click("#predict")
    page.wait_for_function("document.getElementById('where').textContent !== '-'")
    assert page.text_content("#where") == "local"
    assert page.text_content("#backend") == "wasm"
    assert "ms" in page.text_content("#latency")
    assert str(int(expected["label"][0])) in page.text_content("#outputs")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "edge-demo-page.png"), full_page=True)

    answer = page.evaluate(PREDICT, {"input": x.tolist()})
    assert (answer["where"], answer["backend"], answer["version"]) == ("local", "wasm", 1)
    for name, want in expected.items():
        got = np.array(answer["outputs"][name]["data"]).reshape(want.shape)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert answer["outputs"][name]["shape"] == list(want.shape)


SIGNATURE = {
    "inputs": [
        {"name": "x", "dtype": "float32", "shape": [-1, 3]},
        {"name": "n", "dtype": "int8", "shape": [-1]},
        {"name": "b", "dtype": "bool", "shape": [-1]},
        {"name": "s", "dtype": "string", "shape": [-1]},
    ],
    "outputs": [],
}
GOOD = {"x": [[1, 2, 3.5]], "n": [1], "b": [True], "s": ["a"]}
BAD = [
    {**GOOD, "x": [[1, 2]]},
    {**GOOD, "x": [1, 2, 3]},
    {**GOOD, "x": [[1, 2, 3], [4, 5]]},
    {**GOOD, "x": [[1, 2, [3]]]},
    {**GOOD, "x": [["a", "b", "c"]]},
    {**GOOD, "x": [[1, None, 3]]},
    {**GOOD, "x": [[1, {"a": 1}, 3]]},
    {**GOOD, "x": [[1, "b", 3]]},
    {**GOOD, "n": [300]},
    {**GOOD, "n": [-129, 5]},
    {**GOOD, "n": [1.5]},
    {**GOOD, "b": [1]},
    {**GOOD, "s": [1]},
    {**GOOD, "y": [1]},
    {k: v for k, v in GOOD.items() if k != "b"},
    [[1, 2, 3]],
]


def test_input_errors_read_as_in_python(context: Any, server: RunningServer) -> None:
    page = open_page(context, f"{server.url}/web/tiny/")
    check = """async ([signature, inputs]) => {
        const { validateInputs } = await import("./modelport.js");
        try { validateInputs(signature, inputs); return null; } catch (e) { return e.message; }
    }"""
    assert page.evaluate(check, [SIGNATURE, GOOD]) is None
    signature = Signature.from_dict(SIGNATURE)
    for inputs in BAD:
        with pytest.raises(modelport.InvalidInputError) as python:
            validate_inputs(signature, inputs)
        assert page.evaluate(check, [SIGNATURE, inputs]) == str(python.value), inputs
    # the page refuses them before anything runs, locally or on the service
    with pytest.raises(Exception, match="expected shape \\[\\?, 4\\], got \\[1, 3\\]"):
        page.evaluate(PREDICT, {"input": [[1, 2, 3]]})


def test_a_corrupted_model_falls_back_to_the_service_and_says_so(
    context: Any, server: RunningServer, repo: modelport.Repository
) -> None:
    def corrupt(route: Any) -> None:
        original = route.fetch()
        body = bytearray(original.body())
        body[len(body) // 2] ^= 0xFF
        route.fulfill(response=original, body=bytes(body))

    context.route("**/versions/*/model.onnx", corrupt)
    before = metric(server, 'modelport_edge_predictions_total{backend="wasm",event="failure"')
    page = open_page(context, f"{server.url}/web/tiny/?telemetry=1")
    x = [[0.5, -1.0, 2.0, 0.25]]
    answer = page.evaluate(PREDICT, {"input": x})
    assert answer["where"] == "service"
    assert "does not match its manifest" in answer["reason"]
    with repo.load("tiny") as model:
        want = model.predict(np.array(x, np.float32))["logits"]
    np.testing.assert_allclose(np.array(answer["outputs"]["logits"]["data"]), want.ravel(), 1e-6)
    page.click("#predict")
    page.wait_for_function("document.getElementById('where').textContent === 'service'")
    assert "does not match its manifest" in page.text_content("#reason")
    page.evaluate("window.modelportPage.model.flush()")
    after = metric(server, 'modelport_edge_predictions_total{backend="wasm",event="failure"')
    assert after == before + 1
    assert metric(server, 'modelport_edge_predictions_total{backend="service",event="fallback"')


def test_a_slow_device_uses_the_service(context: Any, server: RunningServer) -> None:
    page = open_page(context, f"{server.url}/web/tiny/?budget_ms=0.0001")
    answer = page.evaluate(PREDICT, {"input": [[1, 2, 3, 4]]})
    assert answer["where"] == "service"
    assert answer["reason"].startswith("too slow on this device")


def test_a_new_version_reaches_the_page_without_a_reload(
    context: Any, server: RunningServer, repo: modelport.Repository
) -> None:
    page = open_page(context, f"{server.url}/web/tiny/?update_s=0.5")
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    assert page.evaluate(PREDICT, {"input": x.tolist()})["version"] == 1
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=9))  # version 2, on disk
    try:
        page.wait_for_function("window.modelportPage.model.manifest.version === 2", timeout=15_000)
        answer = page.evaluate(PREDICT, {"input": x.tolist()})
        assert (answer["where"], answer["version"]) == ("local", 2)
        with repo.load("tiny:2") as model:
            want = model.predict(x)["logits"]
        np.testing.assert_allclose(answer["outputs"]["logits"]["data"], want.ravel(), atol=1e-4)
    finally:
        shutil.rmtree(repo.version_dir("tiny", 2))  # withdrawn: the pages go back to 1
    page.wait_for_function("window.modelportPage.model.manifest.version === 1", timeout=15_000)
    events = page.evaluate("window.modelportPage.model.events")
    assert events[-2]["type"] == "loaded"
    assert events[-2]["detail"]["cached"] is True  # from Cache Storage, not downloaded again
    assert page.evaluate(PREDICT, {"input": x.tolist()})["version"] == 1

    # an update whose file fails its check is not taken: the page keeps what it has
    context.route("**/versions/2/model.onnx", lambda route: route.fulfill(body=b"not a model"))
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=10))
    try:
        page.wait_for_function(
            "window.modelportPage.model.events.some(e => e.type === 'update-refused')",
            timeout=15_000,
        )
        answer = page.evaluate(PREDICT, {"input": x.tolist()})
        assert (answer["where"], answer["version"]) == ("local", 1)
    finally:
        shutil.rmtree(repo.version_dir("tiny", 2))


def test_telemetry_from_the_page_shows_in_metrics(context: Any, server: RunningServer) -> None:
    start = 'modelport_edge_predictions_total{backend="wasm",event="local",model="tiny"'
    before = metric(server, start)
    page = open_page(context, f"{server.url}/web/tiny/?telemetry=1")
    for _ in range(3):
        assert page.evaluate(PREDICT, {"input": [[1, 2, 3, 4]]})["where"] == "local"
    page.evaluate("window.modelportPage.model.flush()")
    assert metric(server, start) == before + 3
    latency = 'modelport_edge_latency_seconds_count{backend="wasm",model="tiny"'
    assert metric(server, latency) >= 3


@contextlib.contextmanager
def hosted(folder: Path) -> Iterator[str]:
    """``folder`` on a plain web server (Python's), knowing nothing of modelport."""

    class Files(http.server.SimpleHTTPRequestHandler):
        extensions_map: ClassVar[dict[str, str]] = {
            ".mjs": "text/javascript", ".wasm": "application/wasm", ".js": "text/javascript",
            ".json": "application/json",
        }  # fmt: skip

        def log_message(self, *_: Any) -> None:
            pass

    files = functools.partial(Files, directory=folder)
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), files)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{host.server_port}/"
    finally:
        host.shutdown()
        host.server_close()


def export(repo: modelport.Repository, ref: str, out: Path, *options: str | Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "export", "web", ref, "--repo", str(repo.root),
         "--out", str(out), *map(str, options)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture
def static_host(tmp_path: Path, repo: modelport.Repository) -> Iterator[tuple[str, Path]]:
    """The exported bundle of tiny:1 on a plain web server."""
    export(repo, "tiny:1", tmp_path / "site")
    with hosted(tmp_path / "site") as url:
        yield url, tmp_path / "site"


def test_the_static_bundle_runs_from_any_web_host(
    context: Any, static_host: tuple[str, Path], repo: modelport.Repository
) -> None:
    url, out = static_host
    page = open_page(context, url)
    x = np.array([[0.5, -1.0, 2.0, 0.25], [1, 1, 1, 1]], np.float32)
    answer = page.evaluate(PREDICT, {"input": x.tolist()})
    with repo.load("tiny:1") as model:
        want = model.predict(x)["logits"]
    np.testing.assert_allclose(answer["outputs"]["logits"]["data"], want.ravel(), atol=1e-4)

    model_file = out / "model.onnx"  # altered on the host: refused, and nothing to fall back on
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\x01")
    other = context.browser.new_context()  # its own Cache Storage: the file is fetched anew
    try:
        fresh = open_page(other, url)
        with pytest.raises(Exception, match=r"does not match its manifest.*no service to fall"):
            fresh.evaluate(PREDICT, {"input": x.tolist()})
    finally:
        other.close()


def _png(gray: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of ``gray`` (rows of uint8), no library needed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    height, width = gray.shape
    rows = b"".join(b"\0" + bytes(row) for row in gray.astype(np.uint8))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"IEND", b""))
    )


def test_the_demo_page_takes_an_image_for_an_image_model(
    context: Any, tmp_path: Path, repo: modelport.Repository, server: RunningServer
) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(3).standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["scores"])],
        "pixels", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 10])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    modelport.add_model(repo, "pixels", onnx_model.SerializeToString())
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    (tmp_path / "digit.png").write_bytes(_png(gray))

    page = open_page(context, f"{server.url}/web/pixels/")
    page.set_input_files("input[type=file]", str(tmp_path / "digit.png"))
    page.wait_for_function("document.getElementById('input-image').value.startsWith('[[[[')")
    page.click("#predict")
    page.wait_for_function("document.getElementById('where').textContent === 'local'")
    sent = np.array(json.loads(page.input_value("#input-image")), np.float32)
    np.testing.assert_allclose(sent, (gray / 255).reshape(1, 1, 8, 8), atol=1e-6)
    answer = page.evaluate(PREDICT, {"image": sent.tolist()})
    want = (gray / 255).reshape(1, 64).astype(np.float32) @ weights
    np.testing.assert_allclose(answer["outputs"]["scores"]["data"], want.ravel(), atol=1e-4)


def test_behind_a_token_the_page_asks_for_it(context: Any, repo: modelport.Repository) -> None:
    with run_server(repo.root, "--web", "--token", "edge-s3cret", "--no-access-log") as server:
        page = context.new_page()
        page.goto(f"{server.url}/web/tiny/")  # the page itself is public
        page.wait_for_function(READY, timeout=60_000)
        assert "401" in page.evaluate("window.modelportPage.error")  # its manifest is not
        assert page.text_content("#title") == "The model could not be opened"
        page.fill("#token", "edge-s3cret")
        page.dispatch_event("#token", "change")  # kept for the session, the page reloads
        page.wait_for_function("window.modelportPage && window.modelportPage.model", timeout=60_000)
        answer = page.evaluate(PREDICT, {"input": [[1, 2, 3, 4]]})
        assert (answer["where"], answer["version"]) == ("local", 1)
        forced = page.evaluate(
            "async (x) => await window.modelportPage.model.predictOnService("
            "{input: {values: x, shape: [1, 4]}}, 'asked')",
            [1, 2, 3, 4],
        )  # the service is called with the same token
        assert forced["where"] == "service"


@pytest.fixture(scope="module")
def onnxruntime_web() -> Path:
    """The onnxruntime-web package a user installs with npm, at the vendored version (kept
    between runs: 35 MB from the npm registry)."""
    version = web.runtime_version()
    folder = Path.home() / ".cache" / "modelport-tests" / f"onnxruntime-web-{version}"
    if not (folder / "package" / "dist" / web.WEBGPU_FILES[-1]).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "pack", "--silent", f"onnxruntime-web@{version}"], cwd=folder, check=True,
            capture_output=True, timeout=300,
        )  # fmt: skip
        subprocess.run(["tar", "xzf", f"onnxruntime-web-{version}.tgz"], cwd=folder, check=True)
    return folder / "package"


def test_a_webgpu_bundle_runs_on_webgpu_where_the_browser_has_it(
    context: Any, tmp_path: Path, repo: modelport.Repository, onnxruntime_web: Path,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:  # fmt: skip
    x = np.random.default_rng(5).normal(size=(16, 4)).astype(np.float32)
    with repo.load("tiny") as model:
        want = model.predict(x)["logits"]
    with run_server(repo.root, "--web", "--web-webgpu", str(onnxruntime_web)) as server:
        url = f"{server.url}/web/tiny/"
        answer = open_page(context, url).evaluate(PREDICT, {"input": x.tolist()})
        assert (answer["where"], answer["backend"]) == ("local", "webgpu")
        np.testing.assert_allclose(answer["outputs"]["logits"]["data"], want.ravel(), atol=1e-4)

        without = context.browser.new_context()  # a browser without WebGPU: the WASM build
        try:
            without.add_init_script("Object.defineProperty(navigator, 'gpu', {value: undefined})")
            answer = open_page(without, url).evaluate(PREDICT, {"input": x.tolist()})
            assert (answer["where"], answer["backend"]) == ("local", "wasm")
        finally:
            without.close()

    # Exported: the WebGPU build has no ai.onnx.ml operators (a scikit-learn pipeline's), so
    # WASM runs this one.
    export(repo, "digits:1", tmp_path / "digits", "--webgpu", onnxruntime_web)
    x = digits[0][:20]
    with repo.load("digits:1") as model:
        expected = model.predict(x)
    with hosted(tmp_path / "digits") as url:
        page = open_page(context, url)
        answer = page.evaluate(PREDICT, {"input": x.tolist()})
        assert (answer["where"], answer["backend"]) == ("local", "wasm")
        assert answer["outputs"]["label"]["data"] == expected["label"].tolist()
        events = page.evaluate("window.modelportPage.model.events.map((e) => e.type)")
        assert "webgpu-failed" in events


def test_webgpu_takes_only_the_pinned_runtime(
    tmp_path: Path, repo: modelport.Repository, onnxruntime_web: Path
) -> None:
    other = tmp_path / "onnxruntime-web"
    shutil.copytree(onnxruntime_web / "dist", other, ignore=shutil.ignore_patterns("*.map"))
    with (other / "ort.webgpu.min.mjs").open("a") as script:
        script.write("// changed\n")
    with pytest.raises(IntegrityError, match=r"ort.webgpu.min.mjs is not onnxruntime-web 1\."):
        web.export_web(repo, "tiny", tmp_path / "site", webgpu=other)
    (other / "ort.webgpu.min.mjs").unlink()
    with pytest.raises(ValueError, match=r"ort.webgpu.min.mjs is missing.*npm install onnxrunt"):
        web.export_web(repo, "tiny", tmp_path / "site", webgpu=other)
    assert not (tmp_path / "site").exists()


def test_serve_takes_webgpu_only_with_web(repo: modelport.Repository, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modelport.cli.serving import serve

    result = CliRunner().invoke(serve, [str(repo.root), "--web-webgpu", str(tmp_path)])
    assert result.exit_code == 2
    assert "--web-webgpu goes with --web" in result.output
