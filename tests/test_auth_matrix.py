"""Who may call what: every REST route and every gRPC method, taken from the route table and
the service's own descriptor (a route or RPC added later is in the matrix without editing it),
times no token, a wrong token and the right one, on loopback and beyond it (this machine's
other address). Health stays open; nothing else answers 2xx without the token."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import server_models
from modelport.batch import Store
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.server.rest.routes import ENDPOINTS, Endpoint
from modelport.testing import RunningServer, free_port, run_server

TOKEN = "s3cret-matrix"
ROW = [[1.0, 2.0, 3.0, 4.0]]
BODIES: dict[str, Any] = {  # a valid body per handler that takes one
    "infer": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
    "predict_v1": {"instances": ROW},
    "predictions": {"keys": ["k"]},
    "graphql": {"query": "{ models { name } }"},
}
GRPC_REQUESTS: dict[str, Any] = {  # method -> a valid request
    "ServerLive": pb.ServerLiveRequest(),
    "ServerReady": pb.ServerReadyRequest(),
    "ModelReady": pb.ModelReadyRequest(name="tiny"),
    "ServerMetadata": pb.ServerMetadataRequest(),
    "ModelMetadata": pb.ModelMetadataRequest(name="tiny"),
    "ModelConfig": pb.ModelConfigRequest(name="tiny"),
    "ModelStatistics": pb.ModelStatisticsRequest(name="tiny"),
}
OPEN_RPCS = {"ServerLive", "ServerReady"}


def other_address() -> str | None:
    """This machine's address beyond loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def requests_of(endpoint: Endpoint) -> Iterator[tuple[str, str, Any]]:
    """Concrete (method, path, body) for an endpoint: with and without a version."""
    path = endpoint.path.replace("{model_name}", "tiny").replace("{key}", "k")
    path = path.replace("{file}", "index.html")  # serve --web: the page, open to all
    versions = ("", "/versions/1") if "*" in path else ("",)
    for version in versions:
        yield endpoint.method.upper(), path.replace("*", version), BODIES.get(endpoint.handler)


CASES = [(e, m, p, b) for e in ENDPOINTS for m, p, b in requests_of(e)]
CASE_IDS = [f"{method} {path}" for _, method, path, _ in CASES]
CASE = ("endpoint", "method", "path", "body")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("matrix") / "models")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("store") / "predictions.db"
    Store(str(path)).close()
    return str(path)


@pytest.fixture(scope="module")
def exposed(repo: Path, store: str) -> Iterator[tuple[RunningServer, int]]:
    """Every door, on every address, with a token."""
    grpc_port = free_port()
    with run_server(
        repo, "--trust-code", "--host", "0.0.0.0", "--token", TOKEN, "--store", store,
        "--grpc-port", str(grpc_port), "--web",
    ) as server:  # fmt: skip
        yield server, grpc_port


@pytest.fixture(scope="module")
def local(repo: Path, store: str) -> Iterator[tuple[RunningServer, int]]:
    """Every door on loopback without a token, as `modelport serve` starts by default."""
    grpc_port = free_port()
    with run_server(
        repo, "--trust-code", "--store", store, "--grpc-port", str(grpc_port), "--web"
    ) as server:
        yield server, grpc_port


def addresses() -> list[str]:
    beyond = other_address()
    return ["127.0.0.1"] + ([beyond] if beyond else [])


def call(address: str, port: int, method: str, path: str, body: Any, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"http://{address}:{port}{path}"
    return httpx.request(method, url, json=body, headers=headers, timeout=30).status_code


@pytest.mark.parametrize("address", addresses())
@pytest.mark.parametrize(
    ("endpoint", "method", "path", "body"), CASES, ids=[c[2] + " " + c[1] for c in CASES]
)
def test_rest_with_a_token(
    exposed: tuple[RunningServer, int], address: str, endpoint: Endpoint, method: str,
    path: str, body: Any,
) -> None:  # fmt: skip
    port = exposed[0].port
    statuses = {t: call(address, port, method, path, body, t) for t in (None, "wrong", TOKEN)}
    if endpoint.open:
        assert set(statuses.values()) == {200}, statuses
        return
    assert statuses[None] == 401, statuses
    assert statuses["wrong"] == 401, statuses
    assert statuses[TOKEN] not in (401, 403), statuses
    assert statuses[TOKEN] < 500, statuses


@pytest.mark.parametrize(
    ("endpoint", "method", "path", "body"), CASES, ids=[c[2] + " " + c[1] for c in CASES]
)
def test_rest_on_loopback_without_a_token(
    local: tuple[RunningServer, int], endpoint: Endpoint, method: str, path: str, body: Any
) -> None:
    status = call("127.0.0.1", local[0].port, method, path, body, None)
    assert status not in (401, 403), status
    assert status < 500, status


def grpc_status(address: str, port: int, method: str, token: str | None) -> grpc.StatusCode:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    request = GRPC_REQUESTS[method]
    response = type(request).__name__.replace("Request", "Response")
    with grpc.insecure_channel(f"{address}:{port}") as channel:
        rpc = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=getattr(pb, response).FromString,
        )
        try:
            rpc(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
RPCS = [m.name for m in SERVICE.methods if m.name != "ModelInfer"]  # ModelInfer: below


def test_every_rpc_is_in_the_matrix() -> None:
    assert set(RPCS) == set(GRPC_REQUESTS)


@pytest.mark.parametrize("address", addresses())
@pytest.mark.parametrize("method", RPCS)
def test_grpc_with_a_token(exposed: tuple[RunningServer, int], address: str, method: str) -> None:
    port = exposed[1]
    codes = {t: grpc_status(address, port, method, t) for t in (None, "wrong", TOKEN)}
    if method in OPEN_RPCS:
        assert set(codes.values()) == {grpc.StatusCode.OK}, codes
        return
    assert codes[None] == codes["wrong"] == grpc.StatusCode.UNAUTHENTICATED, codes
    assert codes[TOKEN] == grpc.StatusCode.OK, codes


@pytest.mark.parametrize("address", addresses())
def test_grpc_inference_and_health_with_a_token(
    exposed: tuple[RunningServer, int], address: str
) -> None:
    target = f"{address}:{exposed[1]}"
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW[0])
    with grpc.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert infer(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # open, for probes


def test_the_matrix_covers_every_route_and_both_addresses() -> None:
    assert len(CASES) >= 20
    assert len(addresses()) == 2, "this machine has no address beyond loopback to test from"
