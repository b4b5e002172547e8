"""Load on a running service, like Triton's perf_analyzer: concurrent clients back to back.

    point = drive("http://127.0.0.1:8000", "digits", 1, inputs, "rest-binary", concurrency=8)

Each of ``concurrency`` threads sends one request at a time for ``seconds`` (its own
connection; the request body is encoded once), so the service always has that many requests
in flight. Protocols: ``rest-json`` (Open Inference Protocol JSON), ``rest-binary`` (its binary
tensor extension, as tritonclient sends) and ``grpc`` (``ModelInfer`` with raw contents; the
``grpc`` extra). The load generator runs in this process: on a small machine, pin the service
and this command to different cores (taskset) so that they do not measure each other.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import OptimizationError, require
from modelport.signature import DATATYPES, dtype_name

PROTOCOLS = ("rest-json", "rest-binary", "grpc")
Sender = tuple[Callable[[], "str | None"], Callable[[], None]]  # send (an error or None), close


@dataclass(frozen=True)
class Remote:
    """A service to drive: its REST base URL and, for ``grpc``, the host:port of its gRPC
    port; the protocols, concurrency levels and seconds of each measurement."""

    url: str
    protocols: tuple[str, ...] = ("rest-binary",)
    concurrency: tuple[int, ...] = (1, 4, 16)
    seconds: float = 2.0
    token: str | None = None
    grpc_url: str | None = None

    def url_for(self, protocol: str) -> str:
        return (self.grpc_url or "") if protocol == "grpc" else self.url

    def __post_init__(self) -> None:
        if "grpc" in self.protocols and not self.grpc_url:
            raise OptimizationError(
                "the grpc protocol needs the service's gRPC address: --grpc-url HOST:PORT "
                "(the port given to serve --grpc-port)"
            )
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise OptimizationError(
                f"unknown protocol {unknown[0]!r}; expected {', '.join(PROTOCOLS)}"
            )
        if not self.concurrency or min(self.concurrency) < 1:
            raise OptimizationError("concurrency levels must be >= 1")


@dataclass(frozen=True)
class RemotePoint:
    model: str
    protocol: str
    concurrency: int
    batch: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float


def _tensors(inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [
        {"name": k, "shape": list(v.shape), "datatype": DATATYPES[dtype_name(v.dtype)]}
        for k, v in inputs.items()
    ]


def _rest_sender(url: str, path: str, inputs: dict[str, np.ndarray], binary: bool,
                 token: str | None) -> Callable[[], Sender]:  # fmt: skip
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tensors = _tensors(inputs)
    if binary:
        raw = [np.ascontiguousarray(v).tobytes() for v in inputs.values()]
        for tensor, part in zip(tensors, raw, strict=True):
            tensor["parameters"] = {"binary_data_size": len(part)}
        header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
        body = header.encode() + b"".join(raw)
        headers["Inference-Header-Content-Length"] = str(len(header.encode()))
        headers["Content-Type"] = "application/octet-stream"
    else:
        for tensor, array in zip(tensors, inputs.values(), strict=True):
            tensor["data"] = array.ravel().tolist()
        body = json.dumps({"inputs": tensors}).encode()
        headers["Content-Type"] = "application/json"

    def connect() -> Sender:
        client = httpx.Client(base_url=url, timeout=30)

        def send() -> str | None:
            response = client.post(path, content=body, headers=headers)
            if response.status_code == 200:
                return None
            return f"HTTP {response.status_code}: {response.text[:200]}"

        return send, client.close

    return connect


def _grpc_sender(url: str, name: str, version: int | None,
                 inputs: dict[str, np.ndarray]) -> Callable[[], Sender]:  # fmt: skip
    require("grpc", "grpc")
    import grpc

    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
    from modelport.server.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name=name, model_version=str(version or ""))
    for tensor, array in zip(_tensors(inputs), inputs.values(), strict=True):
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    target = url.split("://", 1)[-1]

    def connect() -> Sender:
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        def send() -> str | None:
            try:
                stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return None

        return send, channel.close

    return connect


def drive(
    url: str,
    name: str,
    version: int | None,
    inputs: dict[str, np.ndarray],
    protocol: str,
    concurrency: int,
    seconds: float = 2.0,
    token: str | None = None,
) -> RemotePoint:
    """Keep ``concurrency`` requests of ``inputs`` in flight for ``seconds``; OptimizationError
    when the service answers none of them (with its first error)."""
    Remote(url, (protocol,), (concurrency,), grpc_url=url)  # checks both
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    if protocol == "grpc":
        connect = _grpc_sender(url, name, version, inputs)
    else:
        connect = _rest_sender(url.rstrip("/"), path, inputs, protocol == "rest-binary", token)
    connections = [connect() for _ in range(concurrency)]
    try:
        durations, errors, elapsed = _run(url, path, protocol, connections, seconds)
    finally:
        for _, close in connections:
            close()
    ms = np.array([d for own in durations for d in own]) * 1000
    batch = len(next(iter(inputs.values())))
    done = len(ms) - sum(errors)
    return RemotePoint(
        f"{name}:{version}" if version else name,  # as bench labels the same version
        protocol,
        concurrency,
        batch,
        len(ms),
        sum(errors),
        float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        batch * done / elapsed,
    )


def _run(
    url: str, path: str, protocol: str, connections: list[Sender], seconds: float
) -> tuple[list[list[float]], list[int], float]:
    for send, _ in connections:  # a first call each: connections open, errors show at once
        error = send()
        if error is not None:
            where = url if protocol == "grpc" else f"{url.rstrip('/')}{path}"
            raise OptimizationError(f"{where} refused the benchmark's request: {error}")
    durations: list[list[float]] = [[] for _ in connections]
    errors = [0] * len(connections)
    start = time.perf_counter()
    deadline = start + seconds

    def worker(index: int) -> None:
        send, own = connections[index][0], durations[index]
        while (now := time.perf_counter()) < deadline:
            if send() is not None:
                errors[index] += 1
            own.append(time.perf_counter() - now)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(connections))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return durations, errors, time.perf_counter() - start
