"""OpenTelemetry traces of requests (``serve --otlp-endpoint URL``), off by default.

    start("http://collector:4318", workers=1)     # in each process, at startup
    span = request_span("POST /v2/models/{name}/infer", traceparent, tracestate)
    phase(span, "queue", start_ns, end_ns, attributes)   # children, timed after the fact
    finish(span, status, model, version)

A request's span continues the caller's trace when it sends a W3C ``traceparent`` (REST
header, gRPC metadata). Its children are the prediction cache's lookup, the wait in the queue
and the model's run, made from the times the engine and the runner already take, so nothing
is measured twice; a batch of several requests is one span of its own, linked to each request
it served. Model name and version are attributes of every span. Spans go to an OTLP/HTTP
collector in batches from a background thread (the SDK's BatchSpanProcessor).

Tracing off, every hook is one ``is None`` check: the SDK is not even imported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer once started
_provider: Any = None
_FLUSH_MS = 500  # how often spans are exported: soon enough for a person watching a trace


def start(endpoint: str) -> None:
    """Export spans to the OTLP/HTTP collector at ``endpoint`` (``.../v1/traces`` or its base)."""
    global _tracer, _provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from modelport import __version__

    url = (
        endpoint
        if endpoint.rstrip("/").endswith("/v1/traces")
        else f"{endpoint.rstrip('/')}/v1/traces"
    )
    resource = Resource.create({"service.name": "modelport", "service.version": __version__})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=_FLUSH_MS)
    )
    _tracer = _provider.get_tracer("modelport", __version__)


def stop() -> None:
    """Export what is left (at shutdown)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def on() -> bool:
    return _tracer is not None


def request_span(name: str, traceparent: str | None, tracestate: str | None = None) -> Any:
    """A server span for one request, the child of the caller's span when it sent one."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {}
    if traceparent:
        carrier["traceparent"] = traceparent
        if tracestate:
            carrier["tracestate"] = tracestate
    return _tracer.start_span(name, context=extract(carrier), kind=SpanKind.SERVER)


def phase(parent: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
    """A finished child span of ``parent``, from times already taken."""
    from opentelemetry import trace

    context = trace.set_span_in_context(parent)
    span = _tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)


def batch(requests: Iterable[Any], start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
    """One model run that served several requests: a span linked to each request's span."""
    from opentelemetry.trace import Link

    links = [Link(span.get_span_context()) for span in requests if span is not None]
    if not links:
        return
    span = _tracer.start_span("batch", start_time=start_ns, attributes=attributes, links=links)
    span.end(end_time=end_ns)


def finish(span: Any, status: int, model: str | None, version: str | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if model is not None:
        span.set_attribute("modelport.model", model)
        span.set_attribute("modelport.version", version or "")
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def now_ns() -> int:
    return time.time_ns()


def seconds_ago_ns(seconds: float) -> int:
    """The wall-clock time ``seconds`` before now, for spans timed by time.monotonic()."""
    return time.time_ns() - int(seconds * 1e9)
