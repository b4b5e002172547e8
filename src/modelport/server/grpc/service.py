"""The Open Inference Protocol over gRPC, served beside REST by the same process.

GRPCDoor(engine, config) listens on ``config.grpc_port`` with grpc.aio on the event loop that
runs REST, so both doors share one Engine: the models, the queue and batching, the cache and
the metrics. Besides ``inference.GRPCInferenceService`` it serves the standard
``grpc.health.v1.Health`` service for Kubernetes gRPC probes. The access token, when set, is
expected as the metadata ``authorization: Bearer <token>``; health and liveness stay open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from modelport import __version__
from modelport.config import ServerConfig, url_host
from modelport.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidNameError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PredictionError,
)
from modelport.repository import check_name, check_version
from modelport.runtimes import PLATFORMS
from modelport.server import tracing
from modelport.server.engine import Engine
from modelport.server.extensions import EXTENSIONS, model_config, model_statistics
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.server.grpc.protocol import encode_infer_response, parse_infer_request
from modelport.server.requests import RequestRecord, bearer_ok, cache_wanted, client_request_id
from modelport.server.routing import ROUTING_KEY

log = logging.getLogger("modelport.server")

Code = grpc.StatusCode
SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"

# Domain errors -> gRPC status: the only place that knows both. NotReadyError before its
# parent: not ready (loading, draining) is UNAVAILABLE, a full queue RESOURCE_EXHAUSTED.
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInputError, Code.INVALID_ARGUMENT),
    (InvalidNameError, Code.INVALID_ARGUMENT),
    (ModelNotFoundError, Code.NOT_FOUND),
    (NotReadyError, Code.UNAVAILABLE),
    (OverloadedError, Code.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, Code.DEADLINE_EXCEEDED),
    (PredictionError, Code.INTERNAL),
)
# The metrics' status label is the HTTP status REST answers in the same case, so that one
# query counts both doors (for example status=~"5.." for server-side failures).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    Code.OK: 200,
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.NOT_FOUND: 404,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
_INLINE_PARSE_BYTES = 256 * 1024
_INLINE_ENCODE_ELEMENTS = 64 * 1024


class _Refused(Exception):
    """A refusal that already knows its status (authentication)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[
    [Any, grpc.aio.ServicerContext[Any, Any], RequestRecord, dict[str, str]], Awaitable[Any]
]
Call = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class GRPCDoor:
    """The gRPC server of one process; start() inside the running loop, stop() at shutdown."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.versions: Any = None  # a repository's Versions: the control RPCs (--control)

    @property
    def address(self) -> str:
        return f"{url_host(self.config.host)}:{self.config.grpc_port}"

    async def start(self, share_port: bool) -> None:
        """Listen; with ``share_port`` (several workers) the port is shared with SO_REUSEPORT.

        Without it a port already in use is an error rather than silently shared. With
        ``config.tls_cert`` and ``tls_key`` the port speaks TLS only.
        """
        limit = self.config.limits.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if share_port else 0),
            ]
        )
        handlers = [self._inference_handler(), self._health_handler()]
        if self.config.control and self.versions is not None:
            from modelport.server.grpc.control import control_handler

            handlers.append(control_handler(self.engine, self.config, self.versions))
        server.add_generic_rpc_handlers(tuple(handlers))
        cert, key = self.config.tls_cert, self.config.tls_key
        try:
            if cert is None or key is None:
                server.add_insecure_port(self.address)
            else:
                with open(cert, "rb") as c, open(key, "rb") as k:
                    pair = (k.read(), c.read())
                server.add_secure_port(self.address, grpc.ssl_server_credentials([pair]))
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for gRPC on {self.address}: {exc}; is the port in use?"
            ) from None
        await server.start()
        self._server = server
        self._loop = asyncio.get_running_loop()
        log.info("gRPC listening on %s%s", self.address, "" if cert is None else " (TLS)")

    def begin_stop(self, grace_s: float) -> None:
        """Refuse new calls from now on (safe in a signal handler); see ``stop``.

        Stopping at the signal rather than once REST has drained: a call that came while
        gRPC's stop began was cancelled (CANCELLED) rather than refused (UNAVAILABLE).
        """
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_once, grace_s)

    def _stop_once(self, grace_s: float) -> asyncio.Future[None]:
        if self._stopping is None:
            assert self._server is not None
            self._stopping = asyncio.ensure_future(self._server.stop(grace_s))
        return self._stopping

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish within ``grace_s``, cancel the rest."""
        if self._server is not None:
            await self._stop_once(grace_s)
            log.info("gRPC stopped")

    # -- plumbing: one wrapper gives every call auth, errors, metrics and the access log ------

    def _inference_handler(self) -> grpc.GenericRpcHandler:
        rpcs: dict[str, tuple[Handler, type[Any], type[Any], bool]] = {
            "ServerLive": (self._server_live, pb.ServerLiveRequest, pb.ServerLiveResponse, True),
            "ServerReady": (
                self._server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse, True
            ),
            "ModelReady": (self._model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse, False),
            "ServerMetadata": (
                self._server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse, False
            ),
            "ModelMetadata": (
                self._model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse, False
            ),
            "ModelInfer": (self._model_infer, pb.ModelInferRequest, pb.ModelInferResponse, False),
            "ModelConfig": (
                self._model_config, pb.ModelConfigRequest, pb.ModelConfigResponse, False
            ),
            "ModelStatistics": (
                self._model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse,
                False,
            ),
        }  # fmt: skip
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self._wrap(method, function, open_),
                    request_deserializer=request.FromString,
                    response_serializer=response.SerializeToString,
                )
                for method, (function, request, response, open_) in rpcs.items()
            },
        )

    def _health_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            HEALTH,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._wrap("Check", self._health_check, True),
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                )
            },
        )

    def _wrap(self, method: str, function: Handler, open_: bool) -> Call:
        path = f"/{SERVICE}/{method}"

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.monotonic()
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            request_id = client_request_id(metadata.get("x-request-id"))
            if request_id is None:
                request_id = self.engine.new_request_id()
            record = RequestRecord(request_id, started)
            if tracing.on():
                record.span = tracing.request_span(
                    path, metadata.get("traceparent"), metadata.get("tracestate")
                )
            code = Code.CANCELLED  # unless set below: the client left or its deadline passed
            try:
                token = self.config.token
                if (
                    not open_
                    and token is not None
                    and not bearer_ok(metadata.get("authorization"), token)
                ):
                    raise _Refused(
                        Code.UNAUTHENTICATED,
                        "missing or wrong access token: send the metadata "
                        "'authorization: Bearer <token>'",
                    )
                response = await function(request, context, record, metadata)
                code = Code.OK
                trailers = [("x-request-id", request_id)]
                if record.version is not None:  # which version answered (splits, reloads)
                    trailers.append(("model-version", record.version))
                if record.guard is not None:  # a fallback's breaker, and whether it answered
                    trailers.extend(record.guard.items())
                context.set_trailing_metadata(tuple(trailers))
                return response
            except Exception as exc:
                code, message = self._status(exc, request_id)
                if code is Code.INTERNAL:
                    log.error("request %s failed: %s", request_id, exc, exc_info=exc)
                await context.abort(code, message, (("x-request-id", request_id),))
            finally:
                remaining = context.time_remaining()
                if code is Code.CANCELLED and remaining is not None and remaining <= 0:
                    code = Code.DEADLINE_EXCEEDED
                status = HTTP_STATUS.get(code, 500)
                if record.finish(status):
                    fields = {"method": "gRPC", "path": path, "grpc_status": code.name}
                    record.log(status, fields)

        return call

    @staticmethod
    def _status(exc: Exception, request_id: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, _Refused):
            return exc.code, str(exc)
        for kind, code in STATUS:
            if isinstance(exc, kind):
                if code is Code.INTERNAL:  # the model's own words may hold paths or secrets
                    break
                return code, str(exc)
        return Code.INTERNAL, (
            "the model failed on this request; the server log has the details "
            f"(request id {request_id})"
            if isinstance(exc, PredictionError)
            else f"internal server error; the server log has the details (request id {request_id})"
        )

    # -- the RPCs ------------------------------------------------------------------------------

    async def _server_live(self, *_: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, *_: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def _health_check(self, request: Any, *_: Any) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            raise _Refused(Code.NOT_FOUND, f"unknown service {request.service!r}; ask for ''")
        status = health_pb2.HealthCheckResponse.SERVING
        if not self.engine.ready:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def _model_ready(self, request: pb.ModelReadyRequest, *_: Any) -> pb.ModelReadyResponse:
        name, version = _model_ref(request.name, request.version)
        if self.engine.registry is None:  # still loading: nothing is ready yet
            return pb.ModelReadyResponse(ready=False)
        self.engine.registry.get(name, version)
        return pb.ModelReadyResponse(ready=self.engine.ready)

    async def _server_metadata(self, *_: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="modelport", version=__version__,
            extensions=EXTENSIONS + (["model_repository"] if self.config.control else []),
        )  # fmt: skip

    async def _model_config(
        self, request: pb.ModelConfigRequest, *_: Any
    ) -> pb.ModelConfigResponse:
        name, version = _model_ref(request.name, request.version)
        config = model_config(self.engine.models().get(name, version))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def _model_statistics(
        self, request: pb.ModelStatisticsRequest, *_: Any
    ) -> pb.ModelStatisticsResponse:
        name = check_name(request.name) if request.name else None
        version = check_version(request.version) if request.version else None
        if name is None and version is not None:
            raise InvalidInputError("a version needs a model name")
        stats = model_statistics(self.engine.models(), name, version)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def _model_metadata(
        self, request: pb.ModelMetadataRequest, *_: Any
    ) -> pb.ModelMetadataResponse:
        name, version = _model_ref(request.name, request.version)
        registry = self.engine.models()
        served = registry.get(name, version)
        versions = [version] if version is not None else registry.versions(name)
        signature = served.model.signature

        def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=t.shape
                )
                for t in specs
            ]

        return pb.ModelMetadataResponse(
            name=name,
            versions=[str(v) for v in versions],
            platform=PLATFORMS[str(served.model.metadata.get("runtime", "onnx"))],
            inputs=tensors(signature.inputs),
            outputs=tensors(signature.outputs),
        )

    async def _model_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any],
        record: RequestRecord, metadata: dict[str, str],
    ) -> pb.ModelInferResponse:  # fmt: skip
        name, version = _model_ref(request.model_name, request.model_version)
        served = self.engine.admit(name, version, record, metadata.get(ROUTING_KEY))
        size = request.ByteSize()
        served.measured.body.observe(size)
        limits = self.config.limits
        if size > _INLINE_PARSE_BYTES:  # raw too: BYTES elements decode one by one
            parsed = await asyncio.to_thread(parse_infer_request, request, limits)
        else:
            parsed = parse_infer_request(request, limits)
        requested = [o.name for o in parsed.outputs] if parsed.outputs else None
        self.engine.check_request(served, parsed.datatypes, requested)
        outputs = await self.engine.predict(
            served, parsed.inputs, record, None, cache_wanted(metadata.get("cache-control")),
            context.time_remaining(), record.started,
        )  # fmt: skip
        # Typed contents cost per element, and so does BYTES packed raw: those off the loop.
        costly = [a for a in outputs.values() if not parsed.binary_output or a.dtype.kind in "OUS"]
        if sum(a.size for a in costly) > _INLINE_ENCODE_ELEMENTS:
            return await asyncio.to_thread(
                encode_infer_response, name, served.version, parsed, outputs
            )
        return encode_infer_response(name, served.version, parsed, outputs)


def _model_ref(name: str, version: str) -> tuple[str, int | None]:
    return check_name(name), check_version(version) if version else None
