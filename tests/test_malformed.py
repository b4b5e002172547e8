"""The malformed-input catalogue, door by door, against one real server: each case is refused
with a 4xx (or gRPC INVALID_ARGUMENT) whose message names the field at fault, and the server
goes on serving everyone else. The model is `tiny`: input `input`, FP32, shape [-1, 4]."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

import server_models
from modelport.batch import Store
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.testing import RunningServer, free_port, run_server

ROW = [1.0, 2.0, 3.0, 4.0]


def tensor(**changes: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW} | changes


def infer(*tensors: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(tensors)}).encode()


def binary(header: dict[str, Any], blob: bytes, length: str | None = None) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + blob, str(len(head)) if length is None else length


FOUR = struct.pack("<4f", *ROW)
BIN_INPUT = {"name": "input", "shape": [1, 4], "datatype": "FP32"}

# door -> [(case id, body, the words the refusal must contain)]
REST_JSON: list[tuple[str, bytes, str]] = [
    ("truncated", b'{"inputs": [', "JSON"),
    ("not-an-object", b"[]", "object"),
    ("no-inputs", b"{}", "inputs"),
    ("inputs-not-a-list", b'{"inputs": 3}', "inputs"),
    ("tensor-not-an-object", b'{"inputs": [3]}', "inputs[0]"),
    ("no-name", infer({k: v for k, v in tensor().items() if k != "name"}), "name"),
    ("unknown-input", infer(tensor(name="x")), "'x'"),
    ("duplicate-input", infer(tensor(), tensor()), "'input'"),
    ("unknown-datatype", infer(tensor(datatype="FLOAT")), "datatype"),
    ("wrong-datatype", infer(tensor(datatype="INT8", data=[1, 2, 3, 4])), "'input'"),
    ("shape-not-a-list", infer(tensor(shape="1,4")), "shape"),
    ("negative-dim", infer(tensor(shape=[-1, 4])), "shape"),
    ("wrong-rank", infer(tensor(shape=[4])), "'input'"),
    ("wrong-fixed-dim", infer(tensor(shape=[1, 5], data=[*ROW, 5.0])), "'input'"),
    ("too-few-values", infer(tensor(data=ROW[:3])), "'input'"),
    ("huge-shape-tiny-data", infer(tensor(shape=[2**40, 4])), "'input'"),
    ("string-for-number", infer(tensor(data=["a", "b", "c", "d"])), "'input'"),
    ("null-data", infer(tensor(data=None)), "'input'"),
    (
        "nan",
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
        b'"data": [NaN, 1, 2, 3]}]}',
        "NaN",
    ),
    ("infinity", infer(tensor(data=[1e999, 1, 2, 3])), "Infinity"),
    ("deep-nesting", b'{"inputs": ' + b"[" * 200 + b"]" * 200 + b"}", "deep"),
    (
        "bad-utf8",
        b'{"inputs": [{"name": "\xff\xfe", "shape": [1], "datatype": "FP32", "data": [1]}]}',
        "UTF-8",
    ),
    ("outputs-not-a-list", json.dumps({"inputs": [tensor()], "outputs": 1}).encode(), "outputs"),
    (
        "unknown-output",
        json.dumps({"inputs": [tensor()], "outputs": [{"name": "z"}]}).encode(),
        "'z'",
    ),
]
REST_BINARY: list[tuple[str, tuple[bytes, str], str]] = [
    ("length-not-a-number", binary({"inputs": []}, b"", "ten"), "Inference-Header-Content-Length"),
    ("length-beyond-body", binary({"inputs": []}, b"", "9999"), "Inference-Header-Content-Length"),
    (
        "too-few-bytes",
        binary({"inputs": [BIN_INPUT | {"parameters": {"binary_data_size": 16}}]}, FOUR[:8]),
        "input",
    ),
    (
        "size-mismatch",
        binary({"inputs": [BIN_INPUT | {"parameters": {"binary_data_size": 12}}]}, FOUR[:12]),
        "'input'",
    ),
    (
        "negative-size",
        binary({"inputs": [BIN_INPUT | {"parameters": {"binary_data_size": -4}}]}, FOUR),
        "binary_data_size",
    ),
    (
        "data-and-binary",
        binary(
            {"inputs": [BIN_INPUT | {"data": ROW, "parameters": {"binary_data_size": 16}}]}, FOUR
        ),
        "'input'",
    ),
    (
        "extra-bytes",
        binary({"inputs": [BIN_INPUT | {"parameters": {"binary_data_size": 16}}]}, FOUR + b"xx"),
        "bytes",
    ),
]
V1: list[tuple[str, bytes, str]] = [
    ("no-instances", b"{}", "instances"),
    ("empty-instances", b'{"instances": []}', "instances"),
    ("ragged", b'{"instances": [[1, 2], [1, 2, 3, 4]]}', "'input'"),
    ("strings", b'{"instances": [["a", "b", "c", "d"]]}', "'input'"),
    ("wrong-key", b'{"instances": [{"x": [1, 2, 3, 4]}]}', "'input'"),
    ("truncated", b'{"instances": [[1, 2', "JSON"),
]
GRAPHQL: list[tuple[str, bytes, str]] = [
    ("not-json", b"query { models { name } }", "JSON"),
    ("no-query", b'{"variables": {}}', "query"),
    ("syntax", b'{"query": "{ models { name "}', "Syntax"),
    ("unknown-field", b'{"query": "{ modelz { name } }"}', "modelz"),
    ("variables-not-an-object", b'{"query": "{ models { name } }", "variables": 3}', "variables"),
    (
        "wrong-input",
        json.dumps(
            {
                "query": 'mutation { predict(model: "tiny", inputs: '
                '[{name: "x", data: [[1, 2, 3, 4]]}]) { version } }'
            }
        ).encode(),
        "'x'",
    ),
]
LOOKUPS: list[tuple[str, bytes, str]] = [
    ("no-keys", b"{}", "keys"),
    ("keys-not-a-list", b'{"keys": "k"}', "keys"),
    ("key-too-long", json.dumps({"keys": ["k" * 600]}).encode(), "600 characters"),
    (
        "inputs-wrong-shape",
        json.dumps({"keys": ["k"], "inputs": {"k": {"input": [1, 2]}}}).encode(),
        "'input'",
    ),
]


def grpc_cases() -> list[tuple[str, pb.ModelInferRequest, str]]:
    def request(**fields: Any) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(model_name="tiny", **fields)

    def typed(
        name: str = "input",
        datatype: str = "FP32",
        shape: list[int] | None = None,
        values: list[float] | None = None,
    ) -> pb.ModelInferRequest.InferInputTensor:
        entry = pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=[1, 4] if shape is None else shape
        )
        entry.contents.fp32_contents.extend(ROW if values is None else values)
        return entry

    raw = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])
    wrong_field = typed()
    wrong_field.contents.int_contents.extend([1, 2, 3, 4])
    return [
        ("no-inputs", request(), "inputs"),
        ("no-name", request(inputs=[typed(name="")]), "name"),
        ("unknown-input", request(inputs=[typed(name="x")]), "'x'"),
        ("duplicate-input", request(inputs=[typed(), typed()]), "'input'"),
        ("unknown-datatype", request(inputs=[typed(datatype="FLOAT")]), "datatype"),
        ("too-few-values", request(inputs=[typed(values=ROW[:3])]), "'input'"),
        ("huge-shape", request(inputs=[typed(shape=[2**40, 4])]), "'input'"),
        ("negative-dim", request(inputs=[typed(shape=[-1, 4])]), "'input'"),
        ("two-typed-fields", request(inputs=[wrong_field]), "int_contents"),
        ("raw-count", request(inputs=[raw, raw], raw_input_contents=[FOUR]), "raw_input_contents"),
        ("raw-too-short", request(inputs=[raw], raw_input_contents=[FOUR[:8]]), "'input'"),
        ("unknown-model", pb.ModelInferRequest(model_name="../etc", inputs=[typed()]), "name"),
    ]


GRPC = grpc_cases()


@pytest.fixture(scope="module")
def ports() -> tuple[int]:
    return (free_port(),)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ports: tuple[int]) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("malformed")
    repo = server_models.build(root / "models")
    Store(str(root / "store.db")).close()
    with run_server(
        repo,
        "--trust-code",
        "--grpc-port",
        str(ports[0]),
        "--store",
        str(root / "store.db"),
        "--max-json-depth",
        "100",
    ) as running:
        yield running


def refused(response: httpx.Response, words: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    payload = response.json()
    message = payload["error"] if "error" in payload else payload["errors"][0]["message"]
    assert words in message, message


def served(url: str) -> None:
    answer = httpx.post(f"{url}/v2/models/tiny/infer", content=infer(tensor()))
    assert answer.status_code == 200


@pytest.mark.parametrize(("case", "body", "words"), REST_JSON, ids=[c[0] for c in REST_JSON])
def test_rest_json(server: RunningServer, case: str, body: bytes, words: str) -> None:
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", content=body)
    refused(response, words)
    served(server.url)


@pytest.mark.parametrize(("case", "message", "words"), REST_BINARY, ids=[c[0] for c in REST_BINARY])
def test_rest_binary(
    server: RunningServer, case: str, message: tuple[bytes, str], words: str
) -> None:
    body, length = message
    headers = {
        "inference-header-content-length": length,
        "content-type": "application/octet-stream",
    }
    refused(httpx.post(f"{server.url}/v2/models/tiny/infer", content=body, headers=headers), words)
    served(server.url)


@pytest.mark.parametrize(("case", "body", "words"), V1, ids=[c[0] for c in V1])
def test_v1(server: RunningServer, case: str, body: bytes, words: str) -> None:
    refused(httpx.post(f"{server.url}/v1/models/tiny:predict", content=body), words)
    served(server.url)


@pytest.mark.parametrize(("case", "body", "words"), GRAPHQL, ids=[c[0] for c in GRAPHQL])
def test_graphql(server: RunningServer, case: str, body: bytes, words: str) -> None:
    response = httpx.post(
        f"{server.url}/graphql", content=body, headers={"content-type": "application/json"}
    )
    if response.status_code == 200:  # a field error: GraphQL answers 200 with errors
        assert words in response.json()["errors"][0]["message"]
    else:
        refused(response, words)
    served(server.url)


@pytest.mark.parametrize(("case", "body", "words"), LOOKUPS, ids=[c[0] for c in LOOKUPS])
def test_lookups(server: RunningServer, case: str, body: bytes, words: str) -> None:
    refused(httpx.post(f"{server.url}/v2/models/tiny/predictions", content=body), words)
    served(server.url)


@pytest.mark.parametrize(("case", "request_", "words"), GRPC, ids=[c[0] for c in GRPC])
def test_grpc(
    server: RunningServer, ports: tuple[int], case: str, request_: Any, words: str
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
        infer_rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as error:
            infer_rpc(request_, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert words in (error.value.details() or "")
    served(server.url)


def test_the_catalogue_size() -> None:
    sizes = {
        "REST JSON": len(REST_JSON),
        "REST binary": len(REST_BINARY),
        "V1": len(V1),
        "GraphQL": len(GRAPHQL),
        "lookups": len(LOOKUPS),
        "gRPC": len(GRPC),
    }
    assert sum(sizes.values()) >= 55, sizes
