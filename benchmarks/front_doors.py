"""The front doors side by side: REST JSON, REST binary tensors (each also gzip-compressed,
as tritonclient's request_compression_algorithm sends them) and gRPC, on one server.

    .venv/bin/python benchmarks/front_doors.py
    .venv/bin/python benchmarks/front_doors.py --seconds 5 --rounds 5 --concurrency 16

One ``modelport serve`` (one worker, cache off, no access log) serves both doors, pinned to CPU
0; the load generator runs on CPU 1. Two models: ``image``, a conv + global-average-pool on a
3x224x224 FP32 image (588 KiB per request, built here), and the small ``digits`` demo model (64
floats). Every request carries one sample; bodies are encoded once up front (the cache is off,
so the server computes each one) and the client keeps its own work small: raw HTTP/1.1 on
keep-alive connections for REST, pre-serialized messages on grpc.aio for gRPC, one connection
per concurrent caller. Each door's answer is checked against onnxruntime before any load.
Rounds interleave the doors (ABC, CBA, ...); the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
SERVER_CPU, LOAD_CPU = 0, 1
DOORS = ("REST JSON", "REST JSON gzip", "REST binary", "REST binary gzip", "gRPC")


def image_model() -> bytes:
    """Conv 3->8 (3x3) + ReLU + global average pool: [-1, 3, 224, 224] -> [-1, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes, "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 224, 224])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 8])],
        [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


@dataclass
class Bodies:
    """One request, encoded once per door."""

    rest: dict[str, bytes]  # door -> HTTP request bytes, headers included
    grpc: bytes
    expected: np.ndarray


def encode(
    model: str, name: str, x: np.ndarray, output: str, expected: np.ndarray, port: int
) -> Bodies:
    """The request for ``model`` on ``x``, asking for ``output`` only (an FP32 tensor)."""
    import gzip

    import tritonclient.grpc as triton

    def http(body: bytes, extra: str = "") -> bytes:
        return (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        ).encode() + body

    shape = list(x.shape)
    as_json = json.dumps(
        {
            "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                        "data": x.ravel().tolist()}],
            "outputs": [{"name": output}],
        }
    ).encode()  # fmt: skip
    header = json.dumps(
        {
            "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    binary_header = f"Inference-Header-Content-Length: {len(header)}\r\n"
    squeezed = "Content-Encoding: gzip\r\n"
    rest = {
        "REST JSON": http(as_json),
        "REST JSON gzip": http(gzip.compress(as_json, 6), squeezed),
        "REST binary": http(header + x.tobytes(), binary_header),
        "REST binary gzip": http(gzip.compress(header + x.tobytes(), 6), binary_header + squeezed),
    }
    item = triton.InferInput(name, shape, "FP32")
    item.set_data_from_numpy(x)
    request = triton.service_pb2.ModelInferRequest(model_name=model)
    request.inputs.extend([item._get_tensor()])
    request.raw_input_contents.extend([item._get_content()])
    request.outputs.add(name=output)
    return Bodies(rest, request.SerializeToString(), expected)


# -- clients: small on purpose, so the server is what is measured ------------------------------


async def http_call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return head + body


def rest_outputs(response: bytes) -> np.ndarray:
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"inference-header-content-length")), None,
    )  # fmt: skip
    if length is None:
        (output,) = json.loads(body)["outputs"]
        return np.array(output["data"], np.float32).reshape(output["shape"])
    (output,) = json.loads(body[:length])["outputs"]
    return np.frombuffer(body[length:], "<f4").reshape(output["shape"])


async def load(
    door: str, port: int, grpc_port: int, bodies: Bodies, concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 in ms, from ``concurrency`` callers for ``seconds``."""
    import grpc

    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(call: Callable[[], Awaitable[object]]) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    closers: list[Callable[[], Awaitable[None]]] = []
    calls: list[Callable[[], Awaitable[object]]] = []
    for _ in range(concurrency):
        if door == "gRPC":
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            calls.append(lambda method=method: method(bodies.grpc))
            closers.append(channel.close)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = bodies.rest[door]
            calls.append(lambda r=reader, w=writer, q=request: http_call(r, w, q))

            async def close(w: asyncio.StreamWriter = writer) -> None:
                w.close()

            closers.append(close)
    started = time.perf_counter()
    await asyncio.gather(*(caller(call) for call in calls))
    elapsed = time.perf_counter() - started
    for close in closers:
        await close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return len(latencies) / elapsed, p50, p99


async def check(port: int, grpc_port: int, bodies: Bodies) -> None:
    import grpc
    import tritonclient.grpc as triton

    for door, request in bodies.rest.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = rest_outputs(await http_call(reader, writer, request))
        writer.close()
        np.testing.assert_allclose(got, bodies.expected, rtol=1e-4, atol=1e-5, err_msg=door)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        answer = await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            bodies.grpc
        )
    response = triton.service_pb2.ModelInferResponse.FromString(answer)
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(bodies.expected.shape)
    np.testing.assert_allclose(got, bodies.expected, rtol=1e-4, atol=1e-5, err_msg="gRPC")


def take_load_cpu() -> None:
    """Run this process (the load) on CPU 1; the server goes on CPU 0 (start_server)."""
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs taskset and 2 CPUs: the server runs on CPU 0, the load on CPU 1")
    os.sched_setaffinity(0, {LOAD_CPU})


def start_server(repo: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``modelport serve`` on CPU 0 (one worker, cache off, no access log), once ready."""
    import httpx

    process = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), str(BIN / "modelport"), "serve", str(repo),
         "--port", str(port), "--cache", "off", "--no-access-log", "--threads", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    sys.exit(f"the server did not become ready ({' '.join(extra)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per door per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    take_load_cpu()

    import onnxruntime as ort

    import modelport
    from modelport.demo import build_sklearn_digits
    from modelport.testing import free_port

    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        print("building the models ...", file=sys.stderr)
        build_sklearn_digits(repo)
        modelport.add_model(repo, "image", image_model())
        rng = np.random.default_rng(1)
        samples = {
            "image": ("image", rng.standard_normal((1, 3, 224, 224)).astype(np.float32)),
            "digits": (None, rng.uniform(0, 16, (1, 64)).astype(np.float32)),
        }
        port, grpc_port = free_port(), free_port()
        server = start_server(repo.root, port, "--grpc-port", str(grpc_port))
        try:
            rows = []
            for model, (name, x) in samples.items():
                session = ort.InferenceSession(str(next((repo.root / model).glob("*/*.onnx"))))
                name = name or session.get_inputs()[0].name
                output = next(o.name for o in session.get_outputs() if o.type == "tensor(float)")
                expected = session.run([output], {name: x})[0]
                bodies = encode(model, name, x, output, np.asarray(expected, np.float32), port)
                asyncio.run(check(port, grpc_port, bodies))
                results: dict[str, list[tuple[float, float, float]]] = {d: [] for d in DOORS}
                for i in range(args.rounds):
                    order = DOORS if i % 2 == 0 else tuple(reversed(DOORS))
                    for door in order:
                        results[door].append(asyncio.run(load(
                            door, port, grpc_port, bodies, args.concurrency, args.seconds
                        )))  # fmt: skip
                for door in DOORS:
                    rps, p50, p99 = (
                        statistics.median(r[k] for r in results[door]) for k in range(3)
                    )
                    size = f"{x.nbytes / 1024:.0f} KiB" if x.nbytes >= 1024 else f"{x.nbytes} B"
                    rows.append((model, size, door, rps, p50, p99))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    print(
        f"\nOne request = one sample; concurrency {args.concurrency}; medians of {args.rounds} "
        f"rounds of {args.seconds:g} s; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}.\n"
    )
    print(
        f"| {'model':8} | {'input':8} | {'door':16} | {'req/s':>8} | {'p50 ms':>7} "
        f"| {'p99 ms':>7} |"
    )
    print(f"|{'-' * 10}|{'-' * 10}|{'-' * 18}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for model, size, door, rps, p50, p99 in rows:
        print(f"| {model:8} | {size:8} | {door:16} | {rps:8.0f} | {p50:7.2f} | {p99:7.2f} |")


if __name__ == "__main__":
    main()
