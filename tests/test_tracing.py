"""OpenTelemetry traces from the real server, received as a collector receives them: a small
OTLP/HTTP receiver here decodes the exports with the opentelemetry-proto package."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import modelport
import server_models
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.testing import RunningServer, run_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROW = [1.0, 2.0, 3.0, 4.0]


class Collector:
    """Spans received over OTLP/HTTP (protobuf), flattened with their resource."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.services: set[str] = set()
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                export = ExportTraceServiceRequest.FromString(body)
                with collector._lock:
                    for resource in export.resource_spans:
                        for attribute in resource.resource.attributes:
                            if attribute.key == "service.name":
                                collector.services.add(attribute.value.string_value)
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, count: int, timeout_s: float = 15.0) -> list[Any]:
        """The spans of ``trace_id``, once at least ``count`` have come."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = value.string_value or value.int_value
    return values


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("tracing") / "models")


@pytest.fixture(scope="module")
def server(repo: Path, collector: Collector, grpc_port: int) -> Iterator[RunningServer]:
    with run_server(
        repo, "--trust-code", "--otlp-endpoint", collector.url, "--grpc-port", str(grpc_port),
        "--max-batch-size", "8", "--max-delay-ms", "50",
    ) as running:  # fmt: skip
        yield running


def by_name(spans: list[Any]) -> dict[str, Any]:
    return {s.name: s for s in spans}


def test_a_rest_request_continues_the_callers_trace(
    server: RunningServer, collector: Collector
) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    answer = httpx.post(
        f"{server.url}/v2/models/tiny/infer", json=body,
        headers={"traceparent": TRACEPARENT, "cache-control": "max-age=0"},
    )  # fmt: skip
    assert answer.status_code == 200
    spans = by_name(collector.trace(TRACE_ID, 4))
    request = spans["POST /v2/models/tiny/infer"]
    assert request.parent_span_id.hex() == PARENT_ID  # the caller's span is its parent
    assert attributes(request)["http.response.status_code"] == 200
    assert attributes(request)["modelport.model"] == "tiny"
    assert attributes(request)["modelport.version"] == "2"
    for phase in ("cache", "queue", "inference"):
        child = spans[phase]
        assert child.parent_span_id == request.span_id, phase
        assert attributes(child)["modelport.model"] == "tiny"
        assert request.start_time_unix_nano <= child.start_time_unix_nano, phase
        assert child.end_time_unix_nano <= request.end_time_unix_nano, phase
    assert spans["queue"].end_time_unix_nano <= spans["inference"].start_time_unix_nano + 1000
    assert attributes(spans["cache"])["modelport.cache"] == "miss"
    assert "modelport" in collector.services


def test_a_grpc_request_takes_traceparent_from_its_metadata(
    server: RunningServer, collector: Collector, grpc_port: int
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    request = pb.ModelInferRequest(model_name="tiny", model_version="2")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        traceparent = f"00-{trace_id}-b7ad6b7169203331-01"
        infer(request, metadata=(("traceparent", traceparent), ("cache-control", "no-cache")))
    spans = by_name(collector.trace(trace_id, 3))
    served = spans["/inference.GRPCInferenceService/ModelInfer"]
    assert served.parent_span_id.hex() == "b7ad6b7169203331"
    assert attributes(served)["modelport.version"] == "2"
    assert spans["inference"].parent_span_id == served.span_id


def test_a_batch_is_one_span_linked_to_every_request_it_served(
    server: RunningServer, collector: Collector
) -> None:
    trace_ids = [f"{i:032x}" for i in range(0xA1, 0xA7)]

    def call(trace_id: str) -> None:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": [float(int(trace_id, 16)), 1.0, 2.0, 3.0]}]}  # fmt: skip
        traceparent = f"00-{trace_id}-{'1' * 16}-01"
        httpx.post(f"{server.url}/v2/models/tiny/infer", json=body,
                   headers={"traceparent": traceparent}, timeout=30)  # fmt: skip

    threads = [threading.Thread(target=call, args=(t,)) for t in trace_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = {t: by_name(collector.trace(t, 3)) for t in trace_ids}
    request_ids = {r["POST /v2/models/tiny/infer"].span_id for r in requests.values()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a batch's span ends after its requests' spans began
        batches = [s for s in list(collector.spans) if s.name == "batch"]
        ours = [b for b in batches if {link.span_id for link in b.links} & request_ids]
        if ours:
            break
        time.sleep(0.1)
    assert ours, "six requests at once, batched in up to 50 ms: at least one batch of several"
    for batch in ours:  # (a request that ran alone has its inference span, and no batch)
        assert len(batch.links) >= 2
        assert {link.span_id for link in batch.links} <= request_ids
        assert attributes(batch)["modelport.batch_rows"] == len(batch.links)  # a row each
        assert attributes(batch)["modelport.model"] == "tiny"


def test_the_client_passes_the_applications_trace_on(
    server: RunningServer, collector: Collector
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("the-app")
    with tracer.start_as_current_span("checkout") as span:
        with modelport.Client(server.url) as client:
            client.predict("tiny", np.array([ROW], np.float32))
        trace_id = format(span.get_span_context().trace_id, "032x")
        parent = format(span.get_span_context().span_id, "016x")
    assert trace.get_current_span() is not span
    spans = by_name(collector.trace(trace_id, 2))
    served = next(s for name, s in spans.items() if name.startswith("POST /v"))
    assert served.parent_span_id.hex() == parent
