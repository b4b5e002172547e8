"""The Open Inference Protocol over gRPC: the real server process, spoken to by tritonclient.

Typed contents are sent through tritonclient's own generated stubs (its client always sends raw
contents), which also shows that our messages are wire-compatible with Triton's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import server_models
from modelport.testing import RunningServer, free_port, run_server
from test_server import SAMPLES, reference

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], np.float32)
TYPED = {  # datatype -> the InferTensorContents field that carries it
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def echo_onnx(datatypes: list[str]) -> bytes:
    """One Identity per datatype: input in_<TYPE> [-1, 2] -> output out_<TYPE>."""
    from onnx import helper

    inputs, outputs, nodes = [], [], []
    for name in datatypes:
        code = server_models.V2_TYPES[name]
        inputs.append(helper.make_tensor_value_info(f"in_{name}", code, [None, 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", code, [None, 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import modelport

    root = server_models.build(tmp_path_factory.mktemp("grpc") / "models")
    # Every datatype that has a typed contents field (FP16 has none).
    modelport.add_model(modelport.Repository(root), "typed", echo_onnx(list(TYPED)))
    return root


@pytest.fixture(scope="module")
def server(repo: Path, grpc_port: int) -> Iterator[RunningServer]:
    with run_server(
        repo, "--trust-code", "--grpc-port", str(grpc_port), "--version-policy", "all",
        "--max-body-bytes", "1000000",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer, grpc_port: int) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
        yield c


@pytest.fixture(scope="module")
def stub(
    server: RunningServer, grpc_port: int
) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, values: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    item = triton.InferInput(name, list(values.shape), datatype)
    item.set_data_from_numpy(values)  # tritonclient sends raw_input_contents
    return item


def typed_request(
    model: str, values: dict[str, tuple[str, np.ndarray]], typed_outputs: bool = True
) -> Any:
    """A request with typed contents; unless ``typed_outputs`` is False it asks for typed
    outputs too (the parameter binary_data_output=false), the server answering raw otherwise."""
    request = service_pb2.ModelInferRequest(model_name=model)
    if typed_outputs:
        request.parameters["binary_data_output"].bool_param = False
    for name, (datatype, array) in values.items():
        entry = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        data = array.ravel().tolist()
        if datatype == "BYTES":
            data = [v.encode() for v in data]
        getattr(entry.contents, TYPED[datatype]).extend(data)
    return request


# -- every RPC ---------------------------------------------------------------------------------


def test_health_and_metadata_rpcs(client: triton.InferenceServerClient, grpc_port: int) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    server_meta = client.get_server_metadata(as_json=True)
    assert server_meta["name"] == "modelport"
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta == {
        "name": "tiny",
        "versions": ["1", "2"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": ["-1", "3"]}],
    }
    assert client.get_model_metadata("tiny", "1", as_json=True)["versions"] == ["1"]
    with pytest.raises(InferenceServerException, match="no model named 'nope'") as found:
        client.is_model_ready("nope")
    assert found.value.status() == "StatusCode.NOT_FOUND"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="other.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_infer_raw_per_version(client: triton.InferenceServerClient, repo: Path) -> None:
    for version in ("1", "2"):
        result = client.infer("tiny", [tensor("input", X)], model_version=version,
                              request_id="req-7")  # fmt: skip
        response = result.get_response()
        assert response.model_version == version
        assert response.id == "req-7"
        np.testing.assert_allclose(
            result.as_numpy("logits"), reference(repo, int(version), X), rtol=1e-6
        )


KSERVE_CLIENT = """
import asyncio, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def ask():
    client = InferenceGRPCClient(sys.argv[1])
    try:
        assert await client.is_server_ready()
        x = np.load(sys.argv[2])
        for raw in (True, False):  # raw_input_contents, then typed contents
            given = InferInput("input", list(x.shape), "FP32")
            given.set_data_from_numpy(x, binary_data=raw)
            request = InferRequest(model_name="tiny", infer_inputs=[given], model_version="1")
            answer = await client.infer(request)
            np.save(sys.argv[3 if raw else 4], answer.outputs[0].as_numpy())
    finally:
        await client.close()

asyncio.run(ask())
"""


def test_the_kserve_sdk_grpc_client_works_too(
    server: RunningServer, grpc_port: int, repo: Path, tmp_path: Path
) -> None:
    # A process of its own: the KServe SDK and tritonclient each register the same protobuf
    # message names globally, so one process cannot import both.
    np.save(tmp_path / "x.npy", X)
    outputs = [tmp_path / "raw.npy", tmp_path / "typed.npy"]
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT, f"127.0.0.1:{grpc_port}", tmp_path / "x.npy",
         *outputs], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path in outputs:
        np.testing.assert_allclose(np.load(path), reference(repo, 1, X), rtol=1e-6)


def test_infer_typed_contents_answers_raw_as_triton_does(stub: Any, repo: Path) -> None:
    response = stub.ModelInfer(typed_request("tiny", {"input": ("FP32", X)}, typed_outputs=False))
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("logits", "FP32", [2, 3])
    assert not output.HasField("contents")
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3)
    np.testing.assert_allclose(got, reference(repo, 2, X), rtol=1e-6)


def test_typed_outputs_when_the_request_asks(stub: Any, repo: Path) -> None:
    response = stub.ModelInfer(typed_request("tiny", {"input": ("FP32", X)}))
    (output,) = response.outputs
    assert not response.raw_output_contents
    got = np.array(output.contents.fp32_contents, np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, reference(repo, 2, X), rtol=1e-6)


def test_every_datatype_raw(client: triton.InferenceServerClient) -> None:
    inputs = [tensor(f"in_{t}", values, t) for t, values in SAMPLES.items()]
    outputs = [triton.InferRequestedOutput(f"out_{t}") for t in SAMPLES]
    result = client.infer("types", inputs, outputs=outputs)
    for datatype, values in SAMPLES.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":
            assert [v.decode() for v in got.ravel()] == values.ravel().tolist()
        else:
            np.testing.assert_array_equal(got, values)
            assert got.dtype == values.dtype


def test_every_typed_datatype(stub: Any) -> None:
    values = {f"in_{t}": (t, SAMPLES[t]) for t in TYPED}
    response = stub.ModelInfer(typed_request("typed", values))
    assert not response.raw_output_contents
    by_name = {o.name: o for o in response.outputs}
    for datatype, field in TYPED.items():
        output = by_name[f"out_{datatype}"]
        assert output.datatype == datatype
        got = list(getattr(output.contents, field))
        expected = SAMPLES[datatype].ravel().tolist()
        if datatype == "BYTES":
            got = [v.decode() for v in got]
        if datatype == "FP32":
            np.testing.assert_array_equal(np.array(got, np.float32), SAMPLES["FP32"].ravel())
        else:
            assert got == expected, datatype


def test_fp16_has_no_typed_contents(stub: Any) -> None:
    request = typed_request("types", {f"in_{t}": (t, SAMPLES[t]) for t in TYPED})
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 2])
    request.outputs.add(name="out_FP16")
    with pytest.raises(grpc.RpcError) as typed:
        stub.ModelInfer(request)
    assert typed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field; send it in raw_input_contents" in (
        typed.value.details()
    )


def test_requested_outputs_and_cache_control(client: triton.InferenceServerClient) -> None:
    inputs = [tensor(f"in_{t}", values, t) for t, values in SAMPLES.items()]
    wanted = [triton.InferRequestedOutput("out_INT8"), triton.InferRequestedOutput("out_FP16")]
    result = client.infer("types", inputs, outputs=wanted, headers={"cache-control": "no-cache"})
    assert [o.name for o in result.get_response().outputs] == ["out_INT8", "out_FP16"]
    np.testing.assert_array_equal(result.as_numpy("out_FP16"), SAMPLES["FP16"])


def test_field_numbers_match_tritons() -> None:
    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as ours

    def fields(descriptor: Any, out: dict[str, Any]) -> dict[str, Any]:
        out[descriptor.full_name] = {f.name: (f.number, f.type) for f in descriptor.fields}
        for nested in descriptor.nested_types:
            fields(nested, out)
        return out

    from tritonclient.grpc import model_config_pb2

    triton = {**model_config_pb2.DESCRIPTOR.message_types_by_name}
    triton.update(service_pb2.DESCRIPTOR.message_types_by_name)
    checked = 0
    for name, descriptor in ours.DESCRIPTOR.message_types_by_name.items():
        mine = fields(descriptor, {})
        theirs = fields(triton[name], {})
        for message, numbers in mine.items():
            assert {k: theirs[message][k] for k in numbers} == numbers, message
            checked += 1
    assert checked >= 30
    ours_types = ours.DESCRIPTOR.enum_types_by_name["DataType"].values_by_name
    theirs_types = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values_by_name
    assert {k: v.number for k, v in ours_types.items()} == {
        k: v.number for k, v in theirs_types.items()
    }
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelConfig", "ModelStatistics",
    }  # fmt: skip


# -- bad input: a clear status, and the server stays up --------------------------------------


def raw_request(model: str, name: str, datatype: str, shape: list[int], blob: bytes) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=[blob])
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


def _typed_count() -> Any:
    request = service_pb2.ModelInferRequest(model_name="tiny")
    entry = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    entry.contents.fp32_contents.extend([1.0] * 6)
    return request


def _mixed() -> Any:
    request = typed_request("tiny", {"input": ("FP32", X)})
    request.raw_input_contents.append(X.tobytes())
    return request


def _wrong_field() -> Any:
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.int_contents.extend(
        [1, 2, 3, 4]
    )
    return request


def _out_of_range() -> Any:
    request = typed_request("typed", {f"in_{t}": (t, SAMPLES[t]) for t in TYPED})
    request.inputs[5].contents.int_contents[0] = 300  # in_INT8
    return request


def _unknown_output() -> Any:
    request = typed_request("tiny", {"input": ("FP32", X)})
    request.outputs.add(name="nope")
    return request


def _versioned(version: str) -> Any:
    request = typed_request("tiny", {"input": ("FP32", X)})
    request.model_version = version
    return request


def _renamed(model: str) -> Any:
    request = typed_request("tiny", {"input": ("FP32", X)})
    request.model_name = model
    return request


BAD: list[tuple[str, Any, grpc.StatusCode, str]] = [
    ("datatype differs from the model's", typed_request("tiny", {"input": ("FP64", X)}),
     grpc.StatusCode.INVALID_ARGUMENT, "datatype FP64 does not match the model's FP32"),
    ("shape and raw contents disagree", raw_request("tiny", "input", "FP32", [3, 4], X.tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents[0] is 32 bytes but shape [3, 4] of FP32 needs 48"),
    ("shape and typed contents disagree", _typed_count(), grpc.StatusCode.INVALID_ARGUMENT,
     "contents.fp32_contents has 6 values but shape [2, 4] needs 8"),
    ("wrong fixed dim", typed_request("tiny", {"input": ("FP32", X[:, :3])}),
     grpc.StatusCode.INVALID_ARGUMENT, "expected shape [?, 4], got [2, 3]"),
    ("raw of the wrong byte length", raw_request("tiny", "input", "FP32", [2, 4], b"\0" * 31),
     grpc.StatusCode.INVALID_ARGUMENT, "is 31 bytes but shape [2, 4] of FP32 needs 32"),
    ("typed and raw mixed", _mixed(), grpc.StatusCode.INVALID_ARGUMENT,
     "sets 'contents' but the request also has raw_input_contents"),
    ("contents in the wrong field", _wrong_field(), grpc.StatusCode.INVALID_ARGUMENT,
     "datatype FP32 travels in contents.fp32_contents, but contents.int_contents is set"),
    ("INT8 out of range", _out_of_range(), grpc.StatusCode.INVALID_ARGUMENT,
     "values must be within [-128, 127] for INT8"),
    ("unknown datatype", raw_request("tiny", "input", "FP8", [2, 4], b""),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype 'FP8'"),
    ("huge dims", raw_request("tiny", "input", "FP32", [2**40, 2**40], b""),
     grpc.StatusCode.INVALID_ARGUMENT, "more elements than the limit"),
    ("NaN", raw_request("tiny", "input", "FP32", [1, 4],
                        np.array([1, np.nan, 2, 3], "<f4").tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "contains NaN or Infinity"),
    ("unknown output", _unknown_output(), grpc.StatusCode.INVALID_ARGUMENT,
     "unknown output 'nope'"),
    ("no inputs", service_pb2.ModelInferRequest(model_name="tiny"),
     grpc.StatusCode.INVALID_ARGUMENT, "'inputs' must list at least one tensor"),
    ("unknown model", _renamed("nope"), grpc.StatusCode.NOT_FOUND, "no model named 'nope'"),
    ("unknown version", _versioned("9"), grpc.StatusCode.NOT_FOUND, "has no version 9"),
    ("malformed version", _versioned("x"), grpc.StatusCode.INVALID_ARGUMENT,
     "invalid version 'x'"),
    ("malicious name", _renamed("../../etc"), grpc.StatusCode.INVALID_ARGUMENT,
     "invalid model name '../../etc'"),
    ("message over the limit",
     raw_request("tiny", "input", "FP32", [62_500, 4], b"\0" * 1_000_000),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_message", "code", "message"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_is_refused_clearly(
    stub: Any, request_message: Any, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request_message, timeout=30)
    assert refused.value.code() == code
    assert message in refused.value.details()
    assert "Traceback" not in refused.value.details()
    assert stub.ModelInfer(typed_request("tiny", {"input": ("FP32", X)}), timeout=30).outputs


def test_grpc_requests_are_counted_with_rest_ones(
    client: triton.InferenceServerClient, server: RunningServer
) -> None:
    client.infer("tiny", [tensor("input", X)], model_version="1")
    with pytest.raises(InferenceServerException):
        client.infer("tiny", [tensor("input", X[:, :3])], model_version="1")
    text = httpx.get(f"{server.url}/metrics").text
    ok = re.search(r'modelport_requests_total\{model="tiny",status="200",version="1"\} (\S+)', text)
    bad = re.search(
        r'modelport_requests_total\{model="tiny",status="400",version="1"\} (\S+)', text
    )
    assert ok is not None
    assert float(ok[1]) >= 1
    assert bad is not None
    assert float(bad[1]) >= 1
    grpc_lines = [line for line in server.access_log.splitlines() if '"method":"gRPC"' in line]
    assert any('"grpc_status":"INVALID_ARGUMENT"' in line for line in grpc_lines)


# -- limits, failures, security, workers and shutdown ----------------------------------------


def slow(seconds: float) -> Any:
    return typed_request("slow", {"seconds": ("FP32", np.array([seconds], np.float32))})


def call_in_background(port: int, request: Any) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []

    def call() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                results.append(stub.ModelInfer(request, timeout=30))
            except grpc.RpcError as exc:
                results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, results


@pytest.fixture(scope="module")
def limited(repo: Path) -> Iterator[tuple[RunningServer, Any, int]]:
    port = free_port()
    with run_server(
        repo, "--trust-code", "--grpc-port", str(port), "--max-queue", "1",
        "--request-timeout-s", "1.0", "--cache", "off",
    ) as server, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # fmt: skip
        yield server, service_pb2_grpc.GRPCInferenceServiceStub(channel), port


def test_a_full_queue_is_resource_exhausted(limited: Any) -> None:
    _, stub, port = limited
    started = [call_in_background(port, slow(0.4)) for _ in range(2)]  # one runs, one waits
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(slow(0))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue" in refused.value.details()
    for thread, results in started:
        thread.join()
        assert not isinstance(results[0], grpc.RpcError)
    assert stub.ModelInfer(slow(0)).outputs


def test_the_client_deadline_is_the_request_deadline(limited: Any) -> None:
    _, stub, _ = limited
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as late:
        stub.ModelInfer(slow(0.6), timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.5
    with pytest.raises(grpc.RpcError) as server_side:  # the server's own 1 s timeout
        stub.ModelInfer(slow(1.5), timeout=10)
    assert server_side.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in server_side.value.details()
    time.sleep(1.0)  # let the model finish the abandoned work
    assert stub.ModelInfer(slow(0), timeout=10).outputs


def test_a_model_that_raises_is_internal_without_internals(limited: Any) -> None:
    server, stub, _ = limited
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(slow(-1))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    details = failed.value.details()
    request_id = dict(failed.value.trailing_metadata())["x-request-id"]
    assert details == (
        "the model failed on this request; the server log has the details "
        f"(request id {request_id})"
    )
    assert "negative seconds" in server.log
    assert stub.ModelInfer(slow(0)).outputs


def test_a_token_guards_everything_but_health(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    port = free_port()
    with run_server(
        repo, "--trust-code", "--token-file", str(token_file), "--grpc-port", str(port)
    ):
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as anonymous:
            assert anonymous.is_server_live()
            assert anonymous.is_server_ready()
            for call in (
                lambda: anonymous.is_model_ready("tiny"),
                lambda: anonymous.get_model_metadata("tiny"),
                lambda: anonymous.infer("tiny", [tensor("input", X)]),
            ):
                with pytest.raises(InferenceServerException, match="access token") as refused:
                    call()
                assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException, match="access token"):
                anonymous.infer("tiny", [tensor("input", X)],
                                headers={"authorization": "Bearer nope"})  # fmt: skip
            good = anonymous.infer("tiny", [tensor("input", X)],
                                   headers={"authorization": "Bearer s3cret"})  # fmt: skip
            assert good.as_numpy("logits").shape == (2, 3)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_drains_grpc_calls_then_exits_zero(repo: Path) -> None:
    port = free_port()
    with run_server(repo, "--trust-code", "--grpc-port", str(port), "--cache", "off") as server:
        thread, results = call_in_background(port, slow(1.0))
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:  # new calls: refused
                stub.ModelInfer(slow(0), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        thread.join()
        assert not isinstance(results[0], grpc.RpcError), results[0]  # in flight: finished
        np.testing.assert_allclose(results[0].outputs[0].contents.fp32_contents, [2.0])
        assert server.process.wait(30) == 0
        log = server.log
    assert "gRPC stopped" in log
    assert "models unloaded" in log


def test_workers_each_serve_grpc_on_the_shared_port(repo: Path) -> None:
    port = free_port()
    pids = set()
    request = typed_request("whoami-live", {"x": ("FP32", np.zeros(1, np.float32))})
    with run_server(repo, "--trust-code", "--workers", "2", "--grpc-port", str(port)):
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            # A new channel is a new connection, which the kernel gives to either worker.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                response = stub.ModelInfer(request, timeout=10)
                pids.add(response.outputs[0].contents.int64_contents[0])
    assert len(pids) == 2


def test_a_grpc_port_in_use_is_a_clear_error(repo: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "modelport", "serve", str(repo), "--port", str(free_port()),
             "--grpc-port", str(port), "--trust-code"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.stderr


def test_loading_and_draining_are_unavailable(repo: Path) -> None:
    # In process, so that the server is caught between states rather than timed into them.
    import asyncio

    from modelport.config import ServerConfig
    from modelport.server.engine import Engine
    from modelport.server.grpc.service import GRPCDoor
    from modelport.server.registry import load_registry

    async def scenario() -> dict[str, Any]:
        config = ServerConfig(grpc_port=free_port(), trust_code=True)
        engine = Engine(config)
        door = GRPCDoor(engine, config)
        await door.start(share_port=False)
        seen: dict[str, Any] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)

                async def state(name: str) -> None:
                    seen[f"{name} ready"] = (await stub.ServerReady(
                        service_pb2.ServerReadyRequest())).ready  # fmt: skip
                    seen[f"{name} health"] = (await health.Check(
                        health_pb2.HealthCheckRequest())).status  # fmt: skip
                    seen[f"{name} model ready"] = (await stub.ModelReady(
                        service_pb2.ModelReadyRequest(name="slow"))).ready  # fmt: skip
                    try:
                        await stub.ModelInfer(slow(0))
                        seen[f"{name} infer"] = "OK"
                    except grpc.aio.AioRpcError as exc:
                        seen[f"{name} infer"] = (exc.code(), exc.details())

                await state("loading")
                engine.registry = await asyncio.to_thread(load_registry, repo, config)
                await state("serving")
                engine.begin_drain()
                await state("draining")
        finally:
            await door.stop(0)
            await engine.close()
        return seen

    seen = asyncio.run(scenario())
    unavailable = grpc.StatusCode.UNAVAILABLE
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    assert seen == {
        "loading ready": False, "loading health": not_serving, "loading model ready": False,
        "loading infer": (unavailable, "the models are still loading"),
        "serving ready": True, "serving health": serving, "serving model ready": True,
        "serving infer": "OK",
        "draining ready": False, "draining health": not_serving, "draining model ready": False,
        "draining infer": (unavailable, "the server is shutting down"),
    }  # fmt: skip
