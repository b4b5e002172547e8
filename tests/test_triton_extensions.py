"""Code written for Triton, unchanged: statistics and model configuration, compressed requests,
raw gRPC outputs — tritonclient's HTTP and gRPC clients, sync and asyncio, against the demo
models served by a real server process."""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.demo import build_demo
from modelport.testing import RunningServer, run_server

DEMO = {  # model -> (first input, its datatype, its dims as Triton writes them, max_batch_size)
    "digits": ("input", "TYPE_FP32", [-1, 64], 0),
    "digits-cnn": ("input", "TYPE_FP32", [-1, 1, 8, 8], 0),
    "mlp-large": ("input", "TYPE_FP32", [1024], 32),  # batched: no batch dimension
    "digits-code": ("image", "TYPE_UINT8", [-1, 8, 8], 0),
}
X = np.random.default_rng(0).random((3, 64), np.float32) * 16


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton") / "models"
    build_demo(root, log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def server(demo: Path, grpc_port: int) -> Iterator[RunningServer]:
    with run_server(demo, "--trust-code", "--grpc-port", str(grpc_port)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer, grpc_port: int) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")


def digits_input(module: Any, binary: bool = True) -> Any:
    given = module.InferInput("input", list(X.shape), "FP32")
    if module is triton_http:
        given.set_data_from_numpy(X, binary_data=binary)
    else:
        given.set_data_from_numpy(X)
    return given


def stats_of(answer: dict[str, Any]) -> dict[str, Any]:
    (only,) = answer["model_stats"]
    return only


# -- statistics ----------------------------------------------------------------------------------


def test_statistics_move_with_inference(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    before = stats_of(http.get_inference_statistics("digits"))
    for _ in range(3):  # no-cache: each one runs the model
        http.infer("digits", [digits_input(triton_http)], headers={"cache-control": "no-cache"})
    after = stats_of(http.get_inference_statistics("digits"))
    assert (after["name"], after["version"]) == ("digits", "1")
    assert after["inference_count"] == before["inference_count"] + 3 * len(X)  # rows
    assert after["execution_count"] == before["execution_count"] + 3
    assert after["last_inference"] > 0
    counted = after["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        moved = counted[phase]["count"] - before["inference_stats"][phase]["count"]
        assert moved == 3, phase
        assert counted[phase]["ns"] > before["inference_stats"][phase]["ns"], phase
    sizes = {b["batch_size"]: b for b in after["batch_stats"]}
    assert sizes[3]["compute_infer"]["count"] >= 3
    assert sizes[3]["compute_infer"]["ns"] > 0

    # The same counters over gRPC, where uint64 fields come as text in JSON.
    over_grpc = grpc_client.get_inference_statistics("digits", "1", as_json=True)
    assert int(stats_of(over_grpc)["inference_count"]) == after["inference_count"]


def test_failures_and_cache_hits_are_counted(http: triton_http.InferenceServerClient) -> None:
    before = stats_of(http.get_inference_statistics("digits"))["inference_stats"]
    wrong = triton_http.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("digits", [wrong])
    http.infer("digits", [digits_input(triton_http)])
    http.infer("digits", [digits_input(triton_http)])  # the same inputs: the cache answers
    after = stats_of(http.get_inference_statistics("digits"))["inference_stats"]
    assert after["fail"]["count"] == before["fail"]["count"] + 1
    assert after["fail"]["ns"] > before["fail"]["ns"]
    assert after["cache_hit"]["count"] > before["cache_hit"]["count"]


def test_statistics_of_every_model_and_of_one_version(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    every = http.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == set(DEMO)
    assert stats_of(http.get_inference_statistics("mlp-large", "1"))["version"] == "1"
    response = grpc_client.get_inference_statistics()
    assert {s.name for s in response.model_stats} == set(DEMO)


def test_statistics_and_config_of_an_unknown_model_are_refused(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient,
    server: RunningServer,
) -> None:  # fmt: skip
    for call in (http.get_inference_statistics, http.get_model_config):
        with pytest.raises(InferenceServerException) as refused:
            call("nope")
        assert refused.value.status() == "404"
    assert httpx.get(f"{server.url}/v2/models/digits/versions/9/stats").status_code == 404
    for call in (grpc_client.get_inference_statistics, grpc_client.get_model_config):
        with pytest.raises(InferenceServerException) as refused:
            call("nope")
        assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_the_asyncio_clients_read_statistics_and_config(
    server: RunningServer, grpc_port: int
) -> None:
    async def ask() -> None:
        http = triton_http_aio.InferenceServerClient(server.url.removeprefix("http://"))
        over_grpc = triton_grpc_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            await http.infer("digits", [digits_input(triton_http_aio)])
            stats = stats_of(await http.get_inference_statistics("digits"))
            assert stats["inference_count"] > 0
            config = await over_grpc.get_model_config("digits", as_json=True)
            assert config["config"]["input"][0]["data_type"] == "TYPE_FP32"
            grpc_stats = await over_grpc.get_inference_statistics("digits", as_json=True)
            assert int(stats_of(grpc_stats)["execution_count"]) > 0
            assert (await http.get_model_config("mlp-large"))["max_batch_size"] == 32
        finally:
            await http.close()
            await over_grpc.close()

    asyncio.run(ask())


# -- model configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(DEMO))
def test_config_of_every_demo_model(
    model: str,
    http: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
) -> None:
    name, datatype, dims, max_batch_size = DEMO[model]
    config = http.get_model_config(model)
    assert config["name"] == model
    assert config["max_batch_size"] == max_batch_size
    assert config["input"][0] == {"name": name, "data_type": datatype, "dims": dims}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] >= 1
    assert ("dynamic_batching" in config) == (max_batch_size > 0)

    over_grpc = grpc_client.get_model_config(model).config
    assert over_grpc.name == model
    assert over_grpc.max_batch_size == max_batch_size
    assert [list(i.dims) for i in over_grpc.input] == [i["dims"] for i in config["input"]]
    assert over_grpc.backend == config["backend"]


def test_server_metadata_lists_the_extensions(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    wanted = {"statistics", "model_configuration", "binary_tensor_data"}
    assert wanted <= set(http.get_server_metadata()["extensions"])
    assert wanted <= set(grpc_client.get_server_metadata().extensions)


# -- compressed requests ------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    http: triton_http.InferenceServerClient, algorithm: str, binary: bool
) -> None:
    plain = http.infer("digits", [digits_input(triton_http, binary)])
    for cached in ("no-cache", "max-age=0"):
        squeezed = http.infer(
            "digits", [digits_input(triton_http, binary)],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
            headers={"cache-control": cached},
        )  # fmt: skip
        np.testing.assert_array_equal(squeezed.as_numpy("label"), plain.as_numpy("label"))
        np.testing.assert_allclose(
            squeezed.as_numpy("probabilities"), plain.as_numpy("probabilities"), rtol=1e-6
        )


def test_compressed_requests_from_the_asyncio_client(server: RunningServer) -> None:
    async def ask() -> np.ndarray:
        client = triton_http_aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            answer = await client.infer(
                "digits", [digits_input(triton_http_aio)], request_compression_algorithm="gzip"
            )
            return answer.as_numpy("label")
        finally:
            await client.close()

    expected = httpx.post(
        f"{server.url}/v1/models/digits:predict", json={"instances": X.tolist()}
    ).json()["predictions"]
    assert asyncio.run(ask()).tolist() == [p["label"] for p in expected]


def test_compression_that_is_unknown_or_broken_is_refused(server: RunningServer) -> None:
    body = b'{"inputs": []}'
    url = f"{server.url}/v2/models/digits/infer"
    unknown = httpx.post(url, content=body, headers={"content-encoding": "br"})
    assert unknown.status_code == 415
    assert "'br'" in unknown.json()["error"]
    broken = httpx.post(url, content=gzip.compress(body)[:-6], headers={"content-encoding": "gzip"})
    assert broken.status_code == 400
    assert "gzip" in broken.json()["error"]
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    squeezed = raw_deflate.compress(b'{"instances": [[0.0]]}') + raw_deflate.flush()
    answer = httpx.post(
        f"{server.url}/v1/models/digits:predict", content=squeezed,
        headers={"content-encoding": "deflate"},
    )  # fmt: skip
    assert answer.status_code == 400  # decoded (raw deflate is tried too), then judged: 1 of 64
    assert "64" in answer.json()["error"]


def test_a_decompression_bomb_is_refused_while_others_are_served(server: RunningServer) -> None:
    bomb = gzip.compress(b"0" * (256 << 20), compresslevel=9)  # 256 MiB in about 250 KB
    answers: list[int] = []

    def others() -> None:  # a client of its own: tritonclient's HTTP client is per thread
        client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        while len(answers) < 40:
            client.infer(
                "digits", [digits_input(triton_http)], headers={"cache-control": "no-cache"}
            )
            answers.append(200)

    thread = threading.Thread(target=others)
    thread.start()
    headers = {"content-encoding": "gzip", "inference-header-content-length": "10"}
    for limit_kind in ({}, headers):  # JSON's limit, then binary's
        refused = httpx.post(
            f"{server.url}/v2/models/digits/infer", content=bomb,
            headers={"content-encoding": "gzip", **limit_kind}, timeout=30,
        )  # fmt: skip
        assert refused.status_code == 413, refused.text
        assert "decompresses to over the limit" in refused.json()["error"]
    thread.join(60)
    assert len(answers) == 40
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


# -- raw gRPC outputs ---------------------------------------------------------------------------


def test_grpc_answers_raw_outputs_for_typed_requests(grpc_port: int) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        raw = stub.ModelInfer(request)
        request.parameters["binary_data_output"].bool_param = False
        typed = stub.ModelInfer(request)
    names = [o.name for o in raw.outputs]
    assert names == ["label", "probabilities"]
    assert len(raw.raw_output_contents) == 2
    assert not any(o.HasField("contents") for o in raw.outputs)
    labels = np.frombuffer(raw.raw_output_contents[0], "<i8")
    assert labels.tolist() == list(typed.outputs[0].contents.int64_contents)
    assert not typed.raw_output_contents
