"""The model service spoken to over HTTP: in process (``http``) for what the app answers, and
as a real process (``server``, ``wire``) for the wire, standard clients and the access log."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import server_models
from modelport.config import ServerConfig, ServerLimits
from modelport.testing import RunningServer, run_server

X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("server") / "models")


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with run_server(
        repo, "--trust-code", "--version-policy", "all", "--max-body-bytes", "1000000"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(repo: Path) -> Iterator[httpx.Client]:
    """The service in this process, configured as ``server`` is: no socket, no process."""
    limits = ServerLimits(max_body_bytes=1_000_000)
    config = ServerConfig(trust_code=True, version_policy="all", limits=limits)
    with server_models.in_process(repo, config) as client:
        yield client


def infer_body(data: Any = X, **extra: Any) -> dict[str, Any]:
    shape = list(np.shape(data))
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}],
            **extra}  # fmt: skip


def reference(repo: Path, version: int, x: Any) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "tiny" / str(version) / "model.onnx"))
    return session.run(None, {"input": np.asarray(x, np.float32)})[0]


# -- endpoints ---------------------------------------------------------------------------------


def test_health_and_server_metadata(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "modelport"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness(http: httpx.Client) -> None:
    meta = http.get("/v2/models/tiny").json()
    assert meta == {
        "name": "tiny",
        "versions": ["1", "2"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert http.get("/v2/models/tiny/versions/1").json()["versions"] == ["1"]
    assert http.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert http.get("/v2/models/tiny/versions/2/ready").status_code == 200
    assert http.get("/v2/models/slow").json()["platform"] == "python"


def test_infer_json_per_version(http: httpx.Client, repo: Path) -> None:
    for path, version in (("/v2/models/tiny/infer", 2), ("/v2/models/tiny/versions/1/infer", 1)):
        response = http.post(path, json=infer_body(id="req-7", parameters={"a": 1}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == "tiny"
        assert body["model_version"] == str(version)
        assert body["id"] == "req-7"
        (output,) = body["outputs"]
        assert output["name"] == "logits"
        assert output["datatype"] == "FP32"
        assert output["shape"] == [2, 3]
        got = np.array(output["data"], np.float32).reshape(2, 3)
        np.testing.assert_allclose(got, reference(repo, version, X), rtol=1e-6)


def test_flat_and_nested_data_are_the_same(http: httpx.Client) -> None:
    flat = infer_body()
    flat["inputs"][0]["data"] = [v for row in X for v in row]
    assert (
        http.post("/v2/models/tiny/infer", json=flat).json()["outputs"]
        == http.post("/v2/models/tiny/infer", json=infer_body()).json()["outputs"]
    )


def test_simple_predict_form(http: httpx.Client, repo: Path) -> None:
    response = http.post("/v1/models/tiny:predict", json={"instances": X})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["predictions"], reference(repo, 2, X), rtol=1e-6)
    versioned = http.post("/v1/models/tiny/versions/1:predict", json={"instances": X})
    np.testing.assert_allclose(versioned.json()["predictions"], reference(repo, 1, X), rtol=1e-6)


def test_request_id_is_taken_or_made(wire: httpx.Client, server: RunningServer) -> None:
    given = wire.get("/v2/health/live", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = wire.post("/v2/models/tiny/infer", json=infer_body())
    request_id = made.headers["x-request-id"]
    assert len(request_id) == 32
    entry = server.access_entry(request_id)
    assert entry["path"] == "/v2/models/tiny/infer"
    assert entry["status"] == 200
    assert entry["model"] == "tiny"
    assert entry["duration_ms"] > 0


def test_metrics(http: httpx.Client) -> None:
    http.post("/v2/models/tiny/versions/1/infer", json=infer_body())
    http.post("/v2/models/tiny/versions/1/infer", json={"inputs": []})
    text = http.get("/metrics").text
    assert 'modelport_requests_total{model="tiny",status="200",version="1"}' in text
    assert 'modelport_requests_total{model="tiny",status="400",version="1"}' in text
    for phase in ("queue", "inference", "total"):
        assert f'phase="{phase}"' in text
    assert "modelport_requests_in_flight" in text
    assert "modelport_request_size_bytes_bucket" in text


def test_openapi_and_docs(wire: httpx.Client, server: RunningServer) -> None:
    spec = wire.get("/openapi.json").json()
    assert "/v2/models/{model_name}/infer" in spec["paths"]
    page = wire.get("/docs")
    assert page.headers["content-type"].startswith("text/html")
    assert "tiny" in page.text
    # Its curl examples call this server, with no token header when it wants none.
    assert f"curl -s http://127.0.0.1:{server.port}/v2" in page.text
    assert "Authorization" not in page.text.split("Try it")[1].split("Models")[0]


# -- every datatype, in JSON and in binary, with tritonclient -------------------------------

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 2]], np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], np.uint32),
    "UINT64": np.array([[0, 2**63], [1, 2]], np.uint64),
    "INT8": np.array([[-128, 127], [1, 2]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1], [1, 2]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [1, 2]], np.int32),
    "INT64": np.array([[-(2**62), 2**62], [1, 2]], np.int64),
    "FP16": np.array([[0.5, -2.0], [1e-3, 6e4]], np.float16),
    "FP32": np.array([[0.1, -2.5], [1e-30, 3e38]], np.float32),
    "FP64": np.array([[0.1, -2.5], [1e-300, 1e300]], np.float64),
    "BYTES": np.array([["héllo", ""], ["a b", "[{]"]], object),
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_every_datatype(server: RunningServer, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("types")
    assert client.get_model_metadata("types")["platform"] == "onnx_onnxv1"
    inputs, outputs = [], []
    for datatype, values in SAMPLES.items():
        tensor = triton.InferInput(f"in_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
        outputs.append(triton.InferRequestedOutput(f"out_{datatype}", binary_data=binary))
    result = client.infer("types", inputs, outputs=outputs, request_id="all-types")
    assert result.get_response()["id"] == "all-types"
    for datatype, values in SAMPLES.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":
            got = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v)(got)
        if datatype == "FP16" and not binary:
            np.testing.assert_allclose(got.astype(np.float16), values)
        else:
            np.testing.assert_array_equal(got, values)
            assert got.dtype == values.dtype or datatype == "BYTES"


def test_tritonclient_default_binary_round_trip(server: RunningServer, repo: Path) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    tensor = triton.InferInput("input", [5, 4], "FP32")
    tensor.set_data_from_numpy(x)  # binary by default
    result = client.infer("tiny", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("logits"), reference(repo, 1, x), rtol=1e-6)
    with pytest.raises(triton.InferenceServerException, match="no model named 'nope'"):
        client.infer("nope", [tensor])


def test_binary_outputs_requested_for_the_whole_request(http: httpx.Client, repo: Path) -> None:
    response = http.post(
        "/v2/models/tiny/infer", json=infer_body(parameters={"binary_data_output": True})
    )
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    (output,) = header["outputs"]
    assert output["parameters"]["binary_data_size"] == 2 * 3 * 4
    got = np.frombuffer(response.content[length:], "<f4").reshape(2, 3)
    np.testing.assert_allclose(got, reference(repo, 2, X), rtol=1e-6)


def test_requested_output_subset(http: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": f"in_{t}", "shape": [1, 2], "datatype": t, "data": [1, 0]}
            for t in SAMPLES if t != "BYTES"
        ] + [{"name": "in_BYTES", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
        "outputs": [{"name": "out_INT8"}, {"name": "out_BYTES"}],
    }  # fmt: skip
    body["inputs"][0]["data"] = [True, False]
    response = http.post("/v2/models/types/infer", json=body)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["out_INT8", "out_BYTES"]
    assert response.json()["outputs"][1]["data"] == ["a", "b"]


# -- bad input: a clear 4xx, and the server stays up ----------------------------------------


def binary_request(header: dict[str, Any], blob: bytes, header_length: int | None = None) -> Any:
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return {
        "content": head + blob,
        "headers": {"Inference-Header-Content-Length": str(length)},
    }


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed JSON", {"content": b'{"inputs": [', "headers": {}}, 400, "malformed JSON"),
    ("JSON not in UTF-8", {"content": b'{"inputs": "\xff"}', "headers": {}}, 400,
     "the body is not UTF-8 text"),
    ("deep JSON", {"content": b"[" * 10_000 + b"]" * 10_000}, 400, "nested deeper than"),
    ("unknown datatype",
     {"json": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP8", "data": [1] * 4}]}},
     400, "unknown datatype 'FP8'"),
    ("length vs shape",
     {"json": {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                           "data": [1] * 5}]}},
     400, "data has 5 values but shape [2, 4] needs 8"),
    ("negative dim",
     {"json": {"inputs": [{"name": "input", "shape": [-1, 4], "datatype": "FP32",
                           "data": [1] * 4}]}},
     400, "negative dimension"),
    ("huge dims",
     {"json": {"inputs": [{"name": "input", "shape": [2**40, 2**40], "datatype": "FP32",
                           "data": [1]}]}},
     400, "more elements than the limit"),
    ("body over the limit", {"content": b" " * 1_000_001}, 413, "over the limit of 1000000"),
    ("NaN in binary",
     binary_request({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 16}}]},
                    np.array([1, np.nan, 2, 3], "<f4").tobytes()),
     400, "contains NaN or Infinity"),
    ("Infinity in JSON", {"content": b'{"inputs": [{"name": "input", "shape": [1, 4], '
                                     b'"datatype": "FP32", "data": [1, Infinity, 2, 3]}]}'},
     400, "NaN and Infinity are not JSON numbers"),
    ("NaN in JSON", {"content": b'{"inputs": [{"name": "input", "shape": [1, 4], '
                                b'"datatype": "FP32", "data": [1, NaN, 2, 3]}]}'},
     400, "NaN and Infinity are not JSON numbers"),
    ("FP32 overflow", {"json": infer_body([[1e39, 0, 0, 0]])}, 400, "too large for float32"),
    ("datatype differs from the model's",
     {"json": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                           "data": [1, 2, 3, 4]}]}},
     400, "datatype FP64 does not match the model's FP32"),
    ("too many dims",
     {"json": {"inputs": [{"name": "input", "shape": [2**63 - 1] * 20_000, "datatype": "FP32",
                           "data": [1]}]}},
     400, "dimensions, over 32"),
    ("binary flag not a bool", {"json": infer_body(parameters={"binary_data_output": "false"})},
     400, "'binary_data_output' must be true or false"),
    ("binary sizes do not add up",
     binary_request({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 16}}]}, b"\x00" * 20),
     400, "binary_data_size values must add up"),
    ("binary size vs shape",
     binary_request({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 12}}]}, b"\x00" * 12),
     400, "needs 16"),
    ("header length outside the body",
     binary_request({"inputs": []}, b"", header_length=10_000), 400, "must be within the body"),
    ("unknown output", {"json": infer_body(outputs=[{"name": "nope"}])}, 400,
     "unknown output 'nope'"),
    ("duplicate outputs", {"json": infer_body(outputs=[{"name": "logits"}, {"name": "logits"}])},
     400, "output 'logits' is requested more than once"),
    ("duplicate inputs",
     {"json": {"inputs": [infer_body()["inputs"][0], infer_body()["inputs"][0]]}}, 400,
     "appears more than once"),
    ("unknown input", {"json": {"inputs": [{**infer_body()["inputs"][0], "name": "x"}]}}, 400,
     "unknown input 'x'"),
    ("wrong fixed dim",
     {"json": {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                           "data": [1] * 3}]}},
     400, "expected shape [?, 4], got [1, 3]"),
    ("float to int datatype",
     {"json": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32",
                           "data": [1.5, 2, 3, 4]}]}},
     400, "must be integers for datatype INT32"),
    ("deep brackets inside a string",
     {"json": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                           "data": [1, 2, 3, 4]}], "id": "[" * 5000}},
     200, ""),
    ("ragged data",
     {"json": {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
                           "data": [[1, 2], [3]]}]}},
     400, "ragged"),
]  # fmt: skip


# In process the suite's warnings-as-errors reach the app: numpy warns as signature._cast turns
# 1e39 into float32 infinity, which the finiteness check after it refuses (a real server only
# prints the warning). The filter lets the check answer, as it does in production.
OVERFLOW_WARNS = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@OVERFLOW_WARNS
@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_is_refused_clearly(
    http: httpx.Client, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = http.post("/v2/models/tiny/infer", **request_kwargs)
    assert response.status_code == status, response.text
    if status != 200:
        assert message in response.json()["error"]
    assert "Traceback" not in response.text
    assert http.post("/v2/models/tiny/infer", json=infer_body()).status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope/infer", 404, "no model named 'nope'"),
        ("/v2/models/tiny/versions/9/infer", 404, "has no version 9"),
        ("/v2/models/tiny/versions/x/infer", 400, "invalid version 'x'"),
        ("/v2/models/..%2F..%2Fetc/infer", 400, "invalid model name '../../etc'"),
        ("/v2/models/%2e%2e/infer", 400, "invalid model name '..'"),
        ("/v2/models/..%252F/infer", 400, "invalid model name '..%2F'"),
        ("/v2/models/tiny/infer/extra", 404, "no such endpoint"),
        ("/v2/models/tiny/versions/%C2%B2/infer", 400, "invalid version '²'"),
    ],
)
def test_unknown_and_malicious_names(
    http: httpx.Client, path: str, status: int, message: str
) -> None:
    response = http.post(path, json=infer_body())
    assert response.status_code == status
    assert message in response.json()["error"]


def test_plain_dot_dot_paths_do_not_escape(server: RunningServer) -> None:
    # httpx normalizes '..' away; a raw request line keeps it, as an attacker would send it.
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /v2/models/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = conn.recv(4096).decode()
    assert reply.split()[1] in ("400", "404")
    assert "root:" not in reply


@OVERFLOW_WARNS
def test_the_simple_form_refuses_non_finite_values(http: httpx.Client) -> None:
    response = http.post("/v1/models/tiny:predict", json={"instances": [[1e39, 0, 0, 0]]})
    assert response.status_code == 400
    assert "NaN or Infinity" in response.json()["error"]


def test_an_odd_header_length_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v2/models/tiny/infer", json=infer_body(),
        headers={"Inference-Header-Content-Length": "\u00b2".encode()},
    )  # fmt: skip
    assert response.status_code == 400
    assert "must be a number of bytes" in response.json()["error"]


def test_wrong_method(http: httpx.Client) -> None:
    response = http.get("/v2/models/tiny/infer")
    assert response.status_code == 405
    assert "use POST" in response.json()["error"]
    assert response.headers["allow"] == "POST"  # RFC 9110 asks for it with a 405


def test_binary_bytes_elements_are_checked(http: httpx.Client) -> None:
    blob = struct.pack("<I", 50) + b"short"
    inputs = [
        {"name": f"in_{t}", "shape": [1, 2], "datatype": t, "data": [1, 0]}
        for t in SAMPLES if t not in ("BYTES", "BOOL")
    ] + [{"name": "in_BOOL", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
         {"name": "in_BYTES", "shape": [1, 2], "datatype": "BYTES",
          "parameters": {"binary_data_size": len(blob)}}]  # fmt: skip
    response = http.post("/v2/models/types/infer", **binary_request({"inputs": inputs}, blob))
    assert response.status_code == 400
    assert "runs past its binary data" in response.json()["error"]


# -- our own client against the real server -----------------------------------------------------


def test_client_against_the_real_server(server: RunningServer, repo: Path) -> None:
    import modelport

    x = np.asarray(X, np.float32)
    with modelport.Client(server.url, timeout_s=10) as client:
        assert client.live()
        assert client.ready()
        assert client.metadata("tiny")["versions"] == ["1", "2"]
        outputs = client.predict("tiny", x, version=1)
        np.testing.assert_allclose(outputs["logits"], reference(repo, 1, x), rtol=1e-6)
        with pytest.raises(modelport.InvalidInputError, match=r"expected shape \[\?, 4\]"):
            client.predict("tiny", np.ones((1, 3), np.float32))
        with pytest.raises(modelport.ModelNotFoundError, match="no model named 'nope'"):
            client.predict("nope", x)


def test_async_client_against_the_real_server(server: RunningServer) -> None:
    import asyncio

    import modelport

    async def call() -> dict[str, np.ndarray]:
        async with modelport.AsyncClient(server.url, timeout_s=10) as client:
            return await client.predict("types", {f"in_{t}": v for t, v in SAMPLES.items()})

    outputs = asyncio.run(call())
    np.testing.assert_array_equal(outputs["out_INT64"], SAMPLES["INT64"])
    assert outputs["out_BYTES"].tolist() == SAMPLES["BYTES"].tolist()
