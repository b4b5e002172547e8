"""Hostile requests against a real `modelport serve`, each at the largest size the default
limits allow, with a well-behaved client watching.

    .venv/bin/python benchmarks/attacks.py
    .venv/bin/python benchmarks/attacks.py --only graphql-aliases,json-quotes

One server (no token, on loopback, the default limits, gRPC on), a numeric model (`tiny`, an
MLP) and a string model (`text`, Identity on a string tensor). Per attack it prints the
status (or gRPC code), the server's CPU time while it ran (all its threads; per request for
an attack of many), the size of the body sent, the server's peak RSS growth (VmHWM, reset
before each attack), and the slowest answer that a client in another process got from
/v2/health/ready and a small inference meanwhile. The targets (issue 23): an answer in
the 4xx range within 100 ms of server time, under 64 MB of RSS growth, and no concurrent
request past 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import modelport
from modelport.demo import mlp_onnx
from modelport.testing import free_port, run_server

MIB = 2**20
Send = Callable[[], str]  # sends a prepared attack, returns what came back
Prepared = tuple[Send, int]  # and the bytes of the body it sends, which the server must hold
BODY_LIMIT = 64 * MIB  # `modelport serve`'s default --max-body-bytes; --max-body-mb sets it
JSON_LIMIT = 4 * MIB  # its default --max-json-bytes (a body of JSON only); --max-json-mb
TINY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def text_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("text", TensorProto.STRING, [-1])
    y = helper.make_tensor_value_info("same", TensorProto.STRING, [-1])
    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


# -- what is measured ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, to the nanosecond (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS


class Watcher:
    """A well-behaved client in a process of its own (the attacker's work cannot delay it):
    readiness and a small inference, back to back, timed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst_ms = 0.0
        self.failures = 0
        self._stop = multiprocessing.Event()
        self._results: multiprocessing.Queue[tuple[float, int]] = multiprocessing.Queue()
        self._process = multiprocessing.Process(target=self._run, daemon=True)

    def _run(self) -> None:
        worst, failures = 0.0, 0
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                for call in (
                    lambda: client.get("/v2/health/ready"),
                    lambda: client.post("/v2/models/tiny/infer", json=TINY),
                ):
                    started = time.perf_counter()
                    try:
                        ok = call().status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    worst = max(worst, (time.perf_counter() - started) * 1000)
                    failures += not ok
                time.sleep(0.005)
        self._results.put((worst, failures))

    def __enter__(self) -> Watcher:
        self._process.start()
        time.sleep(0.3)  # its first requests pay for the connection, not for the attack
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.worst_ms, self.failures = self._results.get(timeout=30)
        self._process.join()


# -- the attacks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    port: int
    grpc_port: int


def raw(port: int, data: bytes, read_s: float = 15.0) -> str:
    """Send raw bytes; the first status line answered, or what the connection did."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as conn:
        try:
            conn.sendall(data)
            answer = conn.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "no answer"
    return answer.split(b"\r\n", 1)[0].split(b" ", 2)[1].decode() if answer else "closed"


def post(url: str, path: str, body: bytes, **headers: str) -> str:
    answer = httpx.post(url + path, content=body, headers=headers, timeout=120)
    return str(answer.status_code)


def json_quotes(t: Target) -> Prepared:
    body = b"[" * 100 + b'"' + b'\\"' * ((JSON_LIMIT - 1024) // 2) + b'"' + b"]" * 100
    return (lambda: post(t.url, "/v2/models/tiny/infer", body)), len(body)


def long_and_empty_strings(t: Target) -> Prepared:
    data = ["x" * MIB] + [""] * ((JSON_LIMIT - 2 * MIB) // 4)  # '"", ' is 4 bytes
    tensor = {"name": "input", "shape": [1, len(data)], "datatype": "FP32", "data": data}
    body = json.dumps({"inputs": [tensor]}).encode()
    return (lambda: post(t.url, "/v2/models/tiny/infer", body)), len(body)


def v1_long_and_empty_strings(t: Target) -> Prepared:
    instances = ["x" * MIB] + [""] * ((JSON_LIMIT - 2 * MIB) // 4)
    body = json.dumps({"instances": instances}).encode()
    return (lambda: post(t.url, "/v1/models/text:predict", body)), len(body)


def graphql_aliases(t: Target) -> Prepared:
    one = 'p{i}: predict(model: "tiny", inputs: [{{name: "input", data: [[1,2,3,4]]}}]) '
    # As many aliased predicts as fit under the token limit: parsed, then refused.
    query = "mutation { " + " ".join((one + "{{ version }}").format(i=i) for i in range(90))
    body = json.dumps({"query": query + " }"}).encode()
    return (lambda: post(t.url, "/graphql", body)), len(body)


def graphql_huge_query(t: Target) -> Prepared:
    query = "{ models { " + "name " * ((JSON_LIMIT - MIB) // 5) + "} }"
    body = json.dumps({"query": query}).encode()
    return (lambda: post(t.url, "/graphql", body)), len(body)


def bytes_count(t: Target) -> Prepared:
    blob = struct.pack("<I", 0) * ((BODY_LIMIT - 4096) // 4)
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES"}
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor]}).encode()
    length = {"Inference-Header-Content-Length": str(len(header))}
    body = header + blob
    return (lambda: post(t.url, "/v2/models/text/infer", body, **length)), len(body)


def zero_then_huge_dim(t: Target) -> str:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [0, 2**63 + 5], "datatype": "FP32", "data": []}]}
    ).encode()
    return post(t.url, "/v2/models/tiny/infer", body)


def unique_long_paths(t: Target) -> str:
    statuses = set()
    with httpx.Client(base_url=t.url, timeout=10) as client:
        for i in range(20_000):
            path = f"/v2/models/{'m' * 60}{i}/versions/1/ready"
            statuses.add(client.get(path).status_code)
    return ",".join(map(str, sorted(statuses)))


def prediction_key(t: Target) -> str:
    return str(httpx.get(f"{t.url}/v2/models/tiny/predictions/{'k' * 60_000}").status_code)


def cross_site_post(t: Target) -> str:
    body = json.dumps(TINY).encode()
    return post(t.url, "/v2/models/tiny/infer", body, origin="http://evil.example",
                **{"content-type": "text/plain"})  # fmt: skip


def rebound_host(t: Target) -> str:
    return str(httpx.get(f"{t.url}/v2/health/ready", headers={"host": "evil.example"}).status_code)


def pipelined_not_read(t: Target) -> str:
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            for _ in range(200):
                conn.sendall(request * 500)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            return "closed by server"
    return "all sent"


def unterminated_trailer(t: Target) -> str:
    head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Long: "
    return raw(t.port, head + b"a" * (128 * 1024))  # twice the head limit


def huge_head(t: Target) -> str:
    return raw(t.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: " + b"a" * (128 * 1024))


def grpc_call(t: Target, method: str, request: Any, metadata: tuple[Any, ...] = ()) -> Any:
    """Call ``method`` of the inference service; the gRPC call object's ``with_call`` result."""
    import grpc

    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{t.grpc_port}") as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=getattr(pb, f"{method}Response").FromString,
        )
        return call.with_call(request, timeout=30, metadata=metadata)


def grpc_request_id(t: Target) -> str:
    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb

    too_long = (("x-request-id", "x" * 6000),)
    _, state = grpc_call(t, "ServerLive", pb.ServerLiveRequest(), too_long)
    ids = dict(state.trailing_metadata() or ())
    return "OK, id replaced" if len(ids.get("x-request-id", "")) == 32 else "OK, id kept"


def grpc_zero_dim(t: Target) -> str:
    import grpc

    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[0, 2**63 - 1]
    )
    try:
        grpc_call(t, "ModelInfer", pb.ModelInferRequest(model_name="tiny", inputs=[tensor]))
        return "OK"
    except grpc.RpcError as exc:
        return str(exc.code().name)


def now(attack: Callable[[Target], str]) -> Callable[[Target], Prepared]:
    """An attack with nothing to prepare and no large body."""
    return lambda target: ((lambda: attack(target)), 0)


ATTACKS: dict[str, Callable[[Target], Prepared]] = {
    "json-quotes": json_quotes,
    "v2-long-and-empty-strings": long_and_empty_strings,
    "v1-long-and-empty-strings": v1_long_and_empty_strings,
    "graphql-aliases": graphql_aliases,
    "graphql-huge-query": graphql_huge_query,
    "bytes-count": bytes_count,
    "zero-then-huge-dim": now(zero_then_huge_dim),
    "grpc-zero-then-huge-dim": now(grpc_zero_dim),
    "unique-long-paths-x20k": now(unique_long_paths),
    "long-prediction-key": now(prediction_key),
    "cross-site-post": now(cross_site_post),
    "rebound-host": now(rebound_host),
    "pipelined-not-read": now(pipelined_not_read),
    "unterminated-trailer": now(unterminated_trailer),
    "huge-head": now(huge_head),
    "grpc-long-request-id": now(grpc_request_id),
}


REQUESTS = {"unique-long-paths-x20k": 20_000}  # attacks of many requests: time per request


@dataclass
class Outcome:
    name: str
    status: str
    server_ms: float  # per request
    body_mb: float
    rss_mb: float
    worst_ms: float
    failures: int

    def row(self) -> str:
        ok = self.server_ms <= 100 and self.rss_mb < 64 and self.worst_ms <= 50
        return (
            f"{self.name:>28} {self.status:>18} {self.server_ms:>10.1f} {self.body_mb:>8.1f} "
            f"{self.rss_mb:>8.1f} {self.worst_ms:>10.1f} {self.failures:>5}  "
            f"{'yes' if ok else 'NO'}"
        )


def attack(name: str, pid: int, target: Target) -> Outcome:
    send, body = ATTACKS[name](target)  # payloads are built before anything is measured
    reset_peak(pid)
    time.sleep(0.2)
    rss, cpu = peak_rss_mb(pid), cpu_s(pid)
    with Watcher(target.url) as watcher:
        cpu = cpu_s(pid)  # from here: the watcher's own requests cost a fraction of a ms each
        try:
            status = send()
        except Exception as exc:  # the attack's own failure is a result too
            status = type(exc).__name__
        time.sleep(0.1)
    server_ms = (cpu_s(pid) - cpu) * 1000 / REQUESTS.get(name, 1)
    return Outcome(
        name, status, server_ms, body / MIB, peak_rss_mb(pid) - rss, watcher.worst_ms,
        watcher.failures,
    )  # fmt: skip


def warm_up(url: str, grpc_port: int) -> None:
    """What a server does once (GraphQL's first import, gRPC's first call) is not an attack's."""
    httpx.post(f"{url}/graphql", json={"query": "{ models { name } }"}, timeout=30)
    grpc_request_id(Target(url, 0, grpc_port))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated attack names (default: all)")
    parser.add_argument(
        "--max-body-mb", type=float, default=64, help="the server's --max-body-bytes, in MiB"
    )
    parser.add_argument(
        "--max-json-mb", type=float, default=4, help="the server's --max-json-bytes, in MiB"
    )
    args = parser.parse_args()
    global BODY_LIMIT, JSON_LIMIT
    BODY_LIMIT, JSON_LIMIT = int(args.max_body_mb * MIB), int(args.max_json_mb * MIB)
    names = args.only.split(",") if args.only else list(ATTACKS)
    work = Path(tempfile.mkdtemp(prefix="modelport-attacks-"))
    repo = modelport.Repository.init(work / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=1))
    modelport.add_model(repo, "text", text_model())
    grpc_port = free_port()
    print(f"body limit {BODY_LIMIT / MIB:g} MiB, of which JSON {JSON_LIMIT / MIB:g} MiB")
    print(f"{'attack':>28} {'answer':>18} {'server ms':>10} {'body MB':>8} {'RSS MB':>8} "
          f"{'others ms':>10} {'fail':>5}  targets met")  # fmt: skip
    options = ["--grpc-port", str(grpc_port), "--no-access-log"]
    options += ["--max-body-bytes", str(BODY_LIMIT), "--max-json-bytes", str(JSON_LIMIT)]
    with run_server(repo.root, *options) as server:
        warm_up(server.url, grpc_port)
        for name in names:
            target = Target(server.url, server.port, grpc_port)
            print(attack(name, server.process.pid, target).row(), flush=True)
        if server.process.poll() is not None:
            sys.exit("the server died")
    print("server still up after every attack")


if __name__ == "__main__":
    main()
