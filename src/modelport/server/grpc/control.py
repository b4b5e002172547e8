"""The gRPC door's control RPCs: the repository extension, as tritonclient.grpc calls it.

    RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload   (inference.GRPCInferenceService)

Served only with ``--control`` (otherwise UNIMPLEMENTED, as for any unknown method). The same
rule as REST: the control token in the metadata ``authorization: Bearer <control token>`` when
the server has one, none on loopback without it. A load loads what the repository holds:
parameters that carry a configuration or files are refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelport.config import ServerConfig
from modelport.errors import (
    ConflictError,
    InvalidInputError,
    InvalidNameError,
    ModelLoadError,
    ModelNotFoundError,
)
from modelport.server.engine import Engine
from modelport.server.grpc.proto import grpc_repository_pb2 as pb
from modelport.server.requests import RequestRecord, bearer_ok, client_request_id
from modelport.server.versions import Versions

log = logging.getLogger("modelport.server")

Code = grpc.StatusCode
SERVICE = "inference.GRPCInferenceService"
STATUS: tuple[tuple[type[Exception], grpc.StatusCode, int], ...] = (
    (InvalidInputError, Code.INVALID_ARGUMENT, 400),
    (InvalidNameError, Code.INVALID_ARGUMENT, 400),
    (ModelNotFoundError, Code.NOT_FOUND, 404),
    (ConflictError, Code.ABORTED, 409),
    (ModelLoadError, Code.FAILED_PRECONDITION, 400),
)
_ALLOWED = {"RepositoryModelLoad": set(), "RepositoryModelUnload": {"unload_dependents"}}


class _Unauthenticated(Exception):
    pass


def control_handler(engine: Engine, config: ServerConfig, versions: Versions) -> Any:
    """A generic handler for the three RPCs, to add beside the inference service's own."""

    async def index(request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        Entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[Entry(**entry) for entry in versions.index(ready_only=request.ready)]
        )

    async def load(request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        _check_parameters("RepositoryModelLoad", request.parameters)
        await versions.load(request.model_name)
        log.info("control: %s loaded", request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def unload(request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        _check_parameters("RepositoryModelUnload", request.parameters)
        await versions.unload(request.model_name)
        log.info("control: %s unloaded", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    rpcs: dict[str, tuple[Callable[[Any], Awaitable[Any]], type[Any], type[Any]]] = {
        "RepositoryIndex": (index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": (
            load, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
        ),
        "RepositoryModelUnload": (
            unload, pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
        ),
    }  # fmt: skip
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            method: grpc.unary_unary_rpc_method_handler(
                _wrap(engine, config, method, function),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for method, (function, request, response) in rpcs.items()
        },
    )


def _check_parameters(method: str, parameters: Any) -> None:
    for key in parameters:
        if key == "config" or key.startswith("file:"):
            raise InvalidInputError(
                f"parameter {key[:40]!r}: this server loads only what its repository holds; "
                "no configuration or file comes from a request"
            )
        if key not in _ALLOWED[method]:
            raise InvalidInputError(f"unknown parameter {key[:40]!r}")


def _wrap(
    engine: Engine, config: ServerConfig, method: str, function: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    path = f"/{SERVICE}/{method}"

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id = client_request_id(metadata.get("x-request-id")) or engine.new_request_id()
        record = RequestRecord(request_id, time.monotonic())
        code, status = Code.OK, 200
        try:
            token = config.control_token
            if token is not None and not bearer_ok(metadata.get("authorization"), token):
                log.warning("refused a %s call from %s: missing or wrong control token",
                            method, context.peer())  # fmt: skip
                raise _Unauthenticated
            return await function(request)
        except _Unauthenticated:
            code, status = Code.UNAUTHENTICATED, 401
            message = (
                "missing or wrong control token: send the metadata 'authorization: Bearer "
                "<control token>' (the access token does not open the control API)"
            )
        except Exception as exc:
            for kind, code, status in STATUS:  # noqa: B007 (the match is kept)
                if isinstance(exc, kind):
                    message = str(exc)
                    break
            else:
                code, status = Code.INTERNAL, 500
                message = f"internal server error; the server log has the details ({request_id})"
                log.error("request %s failed: %s", request_id, exc, exc_info=exc)
        finally:
            if record.finish(status):
                record.log(status, {"method": "gRPC", "path": path, "grpc_status": code.name})
        await context.abort(code, message, (("x-request-id", request_id),))

    return call
