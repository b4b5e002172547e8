"""Denial of service through request parsing (issue 23), each attack sent to the real server.

Every attack must be answered fast (400 or INVALID_ARGUMENT naming the input), keep the
server's memory flat, and leave it serving another client normally meanwhile and afterwards.
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from modelport.config import ServerLimits
from modelport.demo import mlp_onnx
from modelport.errors import InvalidInputError
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.server.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.server.tensors import check_depth, parse_json
from modelport.testing import RunningServer, run_server

T = TypeVar("T")
X = [[1.0, 2.0, 3.0, 4.0]]
MiB = 2**20


def text_onnx() -> bytes:
    """Identity on one string input: text [-1, 2] -> out [-1, 2]."""
    from onnx import TensorProto, helper

    text = helper.make_tensor_value_info("text", TensorProto.STRING, [None, 2])
    out = helper.make_tensor_value_info("out", TensorProto.STRING, [None, 2])
    node = helper.make_node("Identity", ["text"], ["out"])
    graph = helper.make_graph([node], "text", [text], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, grpc_port: int) -> Iterator[RunningServer]:
    import modelport
    from modelport.batch import Store

    folder = tmp_path_factory.mktemp("security")
    repo = modelport.Repository.init(folder / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repo, "text", text_onnx())
    store = str(folder / "predictions.db")
    Store(store).close()  # an empty prediction store: lookups compute live from features
    # JSON as large as the body limit, so that the string budget is what refuses it.
    json_limit = ("--max-json-bytes", str(64 * MiB))
    with run_server(
        repo.root, "--grpc-port", str(grpc_port), "--store", store, "--no-access-log", *json_limit
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: RunningServer, grpc_port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# -- helpers: another client, memory, timing ----------------------------------------------------


def served_normally(server: RunningServer) -> float:
    """Seconds a bystander waits for health and a small inference; both must succeed."""
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X}]}
        answer = client.post("/v2/models/tiny/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [1, 3]
    return time.monotonic() - started


def during(server: RunningServer, attack: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``attack`` while a bystander keeps asking: its result, its seconds, and the
    bystander's longest wait (checked once more after the attack)."""
    done = threading.Event()
    waits: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(attack)
        future.add_done_callback(lambda _: done.set())
        time.sleep(0.05)  # the attack's bytes first
        while not done.is_set():
            waits.append(served_normally(server))
        result = future.result()
        took = time.monotonic() - started
    waits.append(served_normally(server))
    return result, took, max(waits)


def grpc_refusal(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> grpc.RpcError:
    """The error ModelInfer is refused with; a request that is answered fails the test."""
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=60)
    return refused.value


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_growth(server: RunningServer, attack: Callable[[], T]) -> tuple[T, int]:
    """``attack``'s result and how far the server's peak memory rose above its RSS before
    (Linux; 0 elsewhere)."""
    pid = server.process.pid
    if not Path(f"/proc/{pid}/clear_refs").exists():
        return attack(), 0
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status(pid, "VmRSS")
    result = attack()
    return result, _status(pid, "VmHWM") - before


# -- 1: the JSON depth pre-check is linear in the body -------------------------------------------


def depth_bombs(size: int) -> dict[str, bytes]:
    """Bodies over the bracket budget whose strings make a backtracking scanner quadratic,
    the brackets first (refused early) and last (every byte scanned)."""
    fillers = {
        "escaped quotes, unterminated": b'"' + b'\\"' * (size // 2),
        "escaped quotes, trailing backslash": b'"' + b'\\"' * (size // 2) + b"\\",
        "escaped quotes, terminated": b'"' + b'\\"' * (size // 2) + b'"',
        "quotes only": b'"' * size,
        "backslashes": b'"' + b"\\" * size,
        "many short strings": b'"a",' * (size // 4),
    }
    deep = b"[" * 101
    return {
        **{f"{what}, deep first": deep + filler for what, filler in fillers.items()},
        **{f"{what}, deep last": b"[" + filler + deep for what, filler in fillers.items()},
    }


def test_the_depth_check_is_linear_in_the_body_size() -> None:
    for size in (16 * 1024, 256 * 1024, 4 * MiB):
        for what, body in depth_bombs(size).items():
            started = time.perf_counter()
            with contextlib.suppress(InvalidInputError):  # too deep is fine, slow is not
                check_depth(body, 100)
            took = time.perf_counter() - started
            assert took < 0.05 + size / MiB * 0.25, f"{what}, {size} bytes: {took:.2f} s"


def test_the_depth_check_still_counts_brackets_outside_strings_only() -> None:
    check_depth(b'{"a": "' + b"[" * 500 + b'\\"' + b"[" * 500 + b'"}', 100)
    check_depth(b'["\\\\", ' * 50 + b"1" + b"]" * 50, 100)
    with pytest.raises(InvalidInputError, match="nested deeper than the limit of 100"):
        check_depth(b'["\\\\", ' * 101 + b"1" + b"]" * 101, 100)
    with pytest.raises(InvalidInputError, match="nested deeper than the limit of 100"):
        check_depth(b'["\\"]", ' + b"[" * 101 + b"]" * 101 + b"]", 100)


def test_the_non_finite_hint_is_linear_too() -> None:
    for size in (256 * 1024, 4 * MiB):
        body = b"[" + b"NaNa" * (size // 4)  # malformed: the hint's regex scans all of it
        started = time.perf_counter()
        with pytest.raises(InvalidInputError, match="malformed JSON"):
            parse_json(body, ServerLimits())
        assert time.perf_counter() - started < 0.05 + size / MiB * 0.25


QUADRATIC = b"[" * 101 + b'"' + b'\\"' * 12_000  # ~24 KB: seconds with a backtracking scan


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/tiny/infer", QUADRATIC),
        ("/v1/models/tiny:predict", QUADRATIC),
        ("/v2/models/tiny/predictions", QUADRATIC),
        ("/graphql", QUADRATIC),
        ("/graphql", json.dumps({"query": QUADRATIC.decode()}).encode()),
    ],
    ids=["v2", "v1", "lookups", "graphql body", "graphql query text"],
)
def test_a_depth_bomb_is_refused_at_once(
    server: RunningServer, http: httpx.Client, path: str, body: bytes
) -> None:
    answer, took, waited = during(server, lambda: http.post(path, content=body))
    assert answer.status_code == 400, answer.text
    assert "nested deeper than the limit of 100" in answer.text
    assert took < 1.0, f"the attack took {took:.2f} s"
    assert waited < 1.0, f"another client waited {waited:.2f} s"


# -- 2: strings never make numpy allocate N x longest ----------------------------------------------

LONG_AMONG_EMPTY = ["x" * MiB] + [""] * 500_000


def _v2(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                        "data": LONG_AMONG_EMPTY}]}  # fmt: skip


def _graphql(name: str, shape: list[int] | None) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "data": LONG_AMONG_EMPTY}
    if shape is not None:
        tensor["shape"] = shape
    query = (
        'mutation P($inputs: [TensorInput!]!) { predict(model: "tiny", inputs: $inputs) '
        "{ outputs { name } } }"
    )
    return {"query": query, "variables": {"inputs": [tensor]}}


STRING_BOMBS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("v2 numeric", "/v2/models/tiny/infer", _v2("input", "FP32", [500_001, 1]),
     "input", "numbers"),
    ("v2 bytes, wrong count", "/v2/models/text/infer", _v2("text", "BYTES", [2, 2]),
     "text", "values but shape"),
    # Half a million strings are over the string budget (64 bytes each besides their text).
    ("v1 numeric", "/v1/models/tiny:predict", {"instances": LONG_AMONG_EMPTY}, "input",
     "max_string_bytes"),
    ("v1 bytes", "/v1/models/text:predict", {"instances": LONG_AMONG_EMPTY}, "text",
     "max_string_bytes"),
    ("v1 bytes, as objects", "/v1/models/text:predict",
     {"instances": [{"text": s} for s in LONG_AMONG_EMPTY[:50_000]]}, "text",
     "expected rank 2"),
    ("lookups features", "/v2/models/tiny/predictions",
     {"keys": ["k"], "inputs": {"k": {"input": LONG_AMONG_EMPTY}}}, "input",
     "expected dtype float32, got text"),
    ("graphql with shape", "/graphql", _graphql("input", [500_001, 1]), "input",
     "max_string_bytes"),
    ("graphql without shape", "/graphql", _graphql("input", None), "input",
     "max_string_bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "name", "message"),
    [case[1:] for case in STRING_BOMBS],
    ids=[case[0] for case in STRING_BOMBS],
)
def test_one_long_string_among_many_empty_ones_is_refused_cheaply(
    server: RunningServer, http: httpx.Client, path: str, body: dict[str, Any], name: str,
    message: str,
) -> None:  # fmt: skip
    content = json.dumps(body).encode()
    started = time.monotonic()
    answer, grew = memory_growth(server, lambda: http.post(path, content=content))
    took = time.monotonic() - started
    if path == "/graphql":
        assert answer.status_code == 200, answer.text
        (error,) = answer.json()["errors"]
        assert error["extensions"]["code"] == "INVALID_INPUT", error
        text = error["message"]
    else:
        assert answer.status_code == 400, answer.text[:2000]
        text = answer.json()["error"]
    assert f"input {name!r}" in text
    assert message in text
    assert took < 5.0, f"answered in {took:.2f} s"
    assert grew < 64 * MiB, f"the server grew by {grew / MiB:.0f} MiB"
    assert served_normally(server) < 5.0


STRING_LIMIT = 16 * MiB  # ServerLimits.max_string_bytes by default


def _limit_text() -> str:
    return f"more than the limit of {STRING_LIMIT} bytes"


def test_the_strings_of_a_request_are_bounded(
    server: RunningServer, http: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    half = "y" * (STRING_LIMIT // 2)
    json_body = {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES",
                             "data": [half, half + "z"]}]}  # fmt: skip
    answer = http.post("/v2/models/text/infer", json=json_body)
    assert answer.status_code == 400, answer.text[:500]
    assert "input 'text'" in answer.json()["error"]
    assert _limit_text() in answer.json()["error"]

    blob = b"".join(struct.pack("<I", len(s)) + s.encode() for s in (half, half + "z"))
    answer = http.post("/v2/models/text/infer", **binary_text([1, 2], blob))
    assert answer.status_code == 400, answer.text[:500]
    assert _limit_text() in answer.json()["error"]

    items = [half.encode(), half.encode() + b"z"]
    for request in (_grpc_text(items, [1, 2], raw=False), _grpc_text(items, [1, 2], raw=True)):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _limit_text() in str(refused.value.details())

    within = {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES",
                          "data": [half[:1000], "é" * 1000]}]}  # fmt: skip
    assert http.post("/v2/models/text/infer", json=within).status_code == 200
    assert served_normally(server) < 5.0


# -- 12: BYTES stop at the declared count; big gRPC messages parse off the event loop --------------


def binary_text(shape: list[int], blob: bytes) -> dict[str, Any]:
    """httpx arguments for a binary request with ``blob`` as the BYTES input 'text'."""
    tensor = {"name": "text", "shape": shape, "datatype": "BYTES",
              "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    return {
        "content": header + blob,
        "headers": {"Inference-Header-Content-Length": str(len(header))},
    }


def _grpc_text(items: list[bytes], shape: list[int], raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="text")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=shape)
    if raw:
        request.raw_input_contents.append(
            b"".join(struct.pack("<I", len(item)) + item for item in items)
        )
    else:
        tensor.contents.bytes_contents.extend(items)
    return request


MANY_EMPTY = b"\x00\x00\x00\x00" * 4_000_000  # 4 M empty BYTES elements in 16 MB


def test_binary_bytes_beyond_the_declared_count_are_not_decoded(
    server: RunningServer, http: httpx.Client
) -> None:
    request = binary_text([2, 2], MANY_EMPTY)
    answer, took, waited = during(server, lambda: http.post("/v2/models/text/infer", **request))
    assert answer.status_code == 400, answer.text
    assert took < 2.0, f"the attack took {took:.2f} s"
    assert waited < 1.0, f"another client waited {waited:.2f} s"
    assert "input 'text': data has more than 4 values but shape [2, 2] needs 4" in answer.text


def test_grpc_raw_bytes_beyond_the_declared_count_are_not_decoded(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[2, 2])
    request.raw_input_contents.append(MANY_EMPTY)
    error, took, waited = during(server, lambda: grpc_refusal(stub, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert took < 2.0, f"the attack took {took:.2f} s"
    assert waited < 1.0, f"another client waited {waited:.2f} s"
    assert "input 'text': data has more than 4 values" in str(error.details())


def test_a_big_raw_grpc_request_is_parsed_off_the_event_loop(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # A second or more of decoding BYTES elements, refused only after (the model wants rank 2);
    # 200k of them are within the string budget (64 bytes each besides their text).
    request = _grpc_text([b"ab"] * 200_000, [200_000], raw=True)
    error, _, waited = during(server, lambda: grpc_refusal(stub, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'text': expected rank 2" in str(error.details())
    assert waited < 0.5, f"another client waited {waited:.2f} s"


# -- 13: every dimension is bounded, zero or not ---------------------------------------------------

HUGE_SHAPES = [[0, 2**63], [0, 2**64 - 1], [0, 2**62, 4], [2**40, 0], [0] * 31 + [2**63 - 1]]


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=str)
def test_a_zero_dimension_does_not_hide_a_huge_one_over_rest(
    server: RunningServer, http: httpx.Client, shape: list[int]
) -> None:
    tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": []}
    answer = http.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
    assert answer.status_code == 400, answer.text
    assert "input 'input'" in answer.json()["error"]
    assert "more elements than the limit" in answer.json()["error"]

    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": 0}}]})  # fmt: skip
    answer = http.post(
        "/v2/models/tiny/infer", content=header.encode(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert "input 'input'" in answer.json()["error"]
    assert "more elements than the limit" in answer.json()["error"]
    assert served_normally(server) < 5.0


@pytest.mark.parametrize(
    "shape", [[0, 2**63 - 1], [0, 2**62, 2**62], [2**40, 0], [0] * 31 + [2**62]], ids=str
)
@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_a_zero_dimension_does_not_hide_a_huge_one_over_grpc(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub, shape: list[int], raw: bool
) -> None:
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=shape)
    if raw:
        request.raw_input_contents.append(b"")
    else:
        tensor.contents.SetInParent()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "input 'input'" in str(refused.value.details())
    assert "more elements than the limit" in str(refused.value.details())
    assert served_normally(server) < 5.0
