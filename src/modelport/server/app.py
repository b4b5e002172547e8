"""The model service as one ASGI app: routes, handlers, auth, request ids and access log.

app = create_app(Path("demo-models"), ServerConfig())   # any ASGI server can run it
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson

from modelport import __version__
from modelport.config import ServerConfig
from modelport.errors import InvalidInputError, PredictionError
from modelport.repository import check_name, check_version, is_number
from modelport.runtimes import PLATFORMS
from modelport.server import metrics
from modelport.server.engine import Engine
from modelport.server.http import (
    Deadline,
    HTTPError,
    Receive,
    Response,
    Scope,
    Send,
    error_response,
    header,
    json_response,
    read_body,
    send_response,
    url_host,
)
from modelport.server.http1 import BODY_DEADLINE
from modelport.server.lookups import Lookups, parse_lookup
from modelport.server.protocol import encode_infer_response, parse_infer_request, parse_json
from modelport.server.registry import Registry, Served, load_registry
from modelport.signature import Signature

access_log = logging.getLogger("modelport.access")
log = logging.getLogger("modelport.server")

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/v2/health/live"), "live"),
    ("GET", re.compile(r"/v2/health/ready"), "ready"),
    ("GET", re.compile(r"/v2/?"), "server_metadata"),
    ("GET", re.compile(_MODEL), "model_metadata"),
    ("GET", re.compile(_MODEL + "/ready"), "model_ready"),
    ("POST", re.compile(_MODEL + "/infer"), "infer"),
    ("POST", re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?:predict"),
     "predict_v1"),
    ("GET", re.compile(r"/metrics"), "metrics"),
    ("GET", re.compile(r"/openapi\.json"), "openapi"),
    ("GET", re.compile(r"/docs/?"), "docs"),
    ("POST", re.compile(r"/graphql"), "graphql"),
    ("GET", re.compile(r"/v2/models/(?P<name>[^/]+)/predictions/(?P<key>[^/]+)"), "prediction"),
    ("POST", re.compile(r"/v2/models/(?P<name>[^/]+)/predictions"), "predictions"),
]  # fmt: skip
_OPEN = {"live", "ready"}  # probes need no token
_SELF_AUTHORIZED = {"graphql"}  # answers a refusal in its own error shape
_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")
_INLINE_PARSE_BYTES = 256 * 1024
_ROUTE_CACHE_SIZE = 4096  # request lines already routed: the regexes run once per path
_ARRIVED = "modelport.arrived"  # scope key: time.monotonic() when the request reached the app


def _tensor_metadata(signature: Signature) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]
        for kind, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs))
    }


class ModelService:
    """ASGI app serving every model of a Registry; loads them at startup, unloads at shutdown."""

    def __init__(self, source: Path | None, config: ServerConfig, registry: Registry | None = None):
        self.source = source
        self.config = config
        self.engine = Engine(config)  # shared with the gRPC door
        self.engine.registry = registry
        self.load_error: Exception | None = None
        self._loading: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs
        self._grpc: Any = None  # a GRPCDoor when config.grpc_port is set
        self._lookups: Lookups | None = None  # with config.lookups (serve --store)
        self._openapi_spec: dict[str, Any] | None = None
        self._docs_page: bytes | None = None
        self._handlers: dict[str, Callable[..., Awaitable[Response]]] = {
            name: getattr(self, f"_{name}") for _, _, name in _ROUTES
        }
        self._routes: dict[tuple[str, bytes], tuple[str, dict[str, Any]]] = {}

    @property
    def registry(self) -> Registry | None:
        return self.engine.registry

    @registry.setter
    def registry(self, registry: Registry | None) -> None:
        self.engine.registry = registry

    @property
    def ready(self) -> bool:
        return self.engine.ready

    def begin_drain(self) -> None:
        """Readiness turns false and new inference is refused; work in flight goes on."""
        self.engine.begin_drain()
        if self._grpc is not None:
            self._grpc.begin_stop(self.engine.grace_left_s())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.registry is None and self.source is not None:
                    if self.config.workers == 1:
                        # Listen at once: /v2/health/live answers and readiness says "not
                        # yet" while the models load in a thread.
                        self._loading = asyncio.create_task(self._load(self.source))
                    else:
                        # One of several workers on a shared socket: it takes connections
                        # only once loaded, so no request meets a worker still loading.
                        await self._load(self.source)
                try:
                    if self.config.lookups is not None:
                        self._lookups = Lookups(self.config.lookups, self.engine)
                    await self._start_grpc()
                except Exception as exc:
                    log.error("%s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.begin_drain()
                if self._grpc is not None:  # stopping since the signal, alongside REST
                    await self._grpc.stop(self.engine.grace_left_s())
                await self.engine.close()
                if self._lookups is not None:
                    self._lookups.close()
                metrics.forget_process()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_grpc(self) -> None:
        if self.config.grpc_port is None:
            return
        from modelport.errors import require

        require("grpc", "grpc")
        require("grpc_health", "grpc")
        from modelport.server.grpc import GRPCDoor

        self._grpc = GRPCDoor(self.engine, self.config)
        await self._grpc.start(share_port=self.config.workers > 1)

    async def _load(self, source: Path) -> None:
        try:
            self.registry = await asyncio.to_thread(load_registry, source, self.config)
        except Exception as exc:
            self.load_error = exc
            log.error("could not load the models: %s; stopping", exc)
            signal.raise_signal(signal.SIGTERM)  # the ordered shutdown; serve() exits 1
            return
        log.info("serving %s", ", ".join(self.registry.names()) or "no models")
        # Everything loaded so far lives as long as the server: out of the collector's sight,
        # a full collection scans only what requests create (25 ms pauses -> under 2 ms).
        gc.collect()
        gc.freeze()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = scope[_ARRIVED] = time.monotonic()
        request_id = header(scope, b"x-request-id")
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = self.engine.new_request_id()
        info: dict[str, Any] = {}
        try:
            response = await self._dispatch(scope, receive, info)
        except ConnectionAbortedError:
            return
        except Exception as exc:
            response = error_response(exc, request_id)
            if response.status == 500:
                log.error("request %s failed: %s", request_id, exc, exc_info=exc)
        await send_response(send, response, [(b"x-request-id", request_id.encode())])
        if "model" in info:
            metrics.for_model(info["model"], info["version"]).finished(
                response.status, time.monotonic() - started
            )
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                orjson.dumps(
                    {
                        "ts": time.time(),
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": response.status,
                        "duration_ms": round((time.monotonic() - started) * 1000, 3),
                        "bytes_out": len(response.body),
                        "client": (scope.get("client") or ["", 0])[0],
                        "pid": os.getpid(),
                        **info,
                    }
                ).decode()
            )

    async def _dispatch(self, scope: Scope, receive: Receive, info: dict[str, Any]) -> Response:
        # Route on the raw path so that an encoded '/' (%2F) stays inside one segment.
        raw = scope.get("raw_path") or scope["path"].encode()
        method = scope["method"]
        route = self._routes.get((method, raw))
        if route is None:
            route = _route(method, bytes(raw).decode("latin-1").split("?", 1)[0], scope["path"])
            if len(self._routes) < _ROUTE_CACHE_SIZE:  # a client sending random paths
                self._routes[(method, raw)] = route  # cannot grow it without bound
        name, params = route
        if self.config.token is not None and name not in _OPEN and name not in _SELF_AUTHORIZED:
            self._authorize(scope)
        return await self._handlers[name](scope, receive, info, **params)

    def _authorize(self, scope: Scope) -> None:
        token = self.config.token
        if token is None:
            return
        given = header(scope, b"authorization") or ""
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.encode(), token.encode()
        ):
            raise HTTPError(
                401,
                "missing or wrong access token: send 'Authorization: Bearer <token>'",
                {"www-authenticate": "Bearer"},
            )

    def _registry(self) -> Registry:
        return self.engine.models()

    # -- health and metadata ------------------------------------------------------------------

    async def _live(self, *_: Any) -> Response:
        return json_response({"live": True})

    async def _ready(self, *_: Any) -> Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def _server_metadata(self, *_: Any) -> Response:
        return json_response(
            {"name": "modelport", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def _model_metadata(self, *_: Any, name: str, version: int | None = None) -> Response:
        registry = self._registry()
        served = registry.get(name, version)
        versions = [version] if version is not None else registry.versions(name)
        return json_response(
            {
                "name": name,
                "versions": [str(v) for v in versions],
                "platform": PLATFORMS[str(served.model.metadata.get("runtime", "onnx"))],
                **_tensor_metadata(served.model.signature),
            }
        )

    async def _model_ready(self, *_: Any, name: str, version: int | None = None) -> Response:
        self._registry().get(name, version)
        return json_response({"name": name, "ready": self.ready}, 200 if self.ready else 503)

    async def _metrics(self, *_: Any) -> Response:
        if self._lookups is not None:
            await asyncio.to_thread(self._lookups.refresh_ages)
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    async def _openapi(self, *_: Any) -> Response:
        return json_response(self._spec())

    async def _docs(self, *_: Any) -> Response:
        from modelport.server.openapi import docs_html

        if self._docs_page is None:
            host = self.config.host
            if host in ("0.0.0.0", "::", ""):  # every address: this machine's own will do
                host = "localhost"
            base = f"http://{url_host(host)}:{self.config.port}"
            page = docs_html(self._spec(), base, token=self.config.token is not None)
            self._docs_page = page.encode()
        return Response(200, self._docs_page, "text/html; charset=utf-8")

    def _spec(self) -> dict[str, Any]:
        from modelport.server.openapi import openapi_spec

        if self._openapi_spec is None:  # the models are fixed once loaded: build it once
            self._openapi_spec = openapi_spec(
                __version__, self._catalog(self._registry()), lookups=self._lookups is not None
            )
        return self._openapi_spec

    @staticmethod
    def _catalog(registry: Registry) -> dict[str, dict[str, Any]]:
        catalog = {}
        for name in registry.names():
            served = registry.get(name)
            catalog[name] = {
                "versions": registry.versions(name),
                "platform": PLATFORMS[str(served.model.metadata.get("runtime", "onnx"))],
                **_tensor_metadata(served.model.signature),
            }
        return catalog

    # -- inference ----------------------------------------------------------------------------

    async def _infer(
        self, scope: Scope, receive: Receive, info: dict[str, Any], name: str,
        version: int | None = None,
    ) -> Response:  # fmt: skip
        served, body = await self._admit(scope, receive, name, version, info)
        length = header(scope, b"inference-header-content-length")
        use_cache = _cache_wanted(scope)
        key = self.engine.answer_key(served, use_cache, "v2", body, length)
        answer: Response | None = self.engine.answered(served, key, info)
        if answer is not None:
            return answer
        if length is not None and not is_number(length):
            raise InvalidInputError("Inference-Header-Content-Length must be a number of bytes")
        header_length = int(length) if length is not None else None
        if len(body) > _INLINE_PARSE_BYTES:  # big bodies parse off the event loop
            request = await asyncio.to_thread(
                parse_infer_request, body, header_length, self.config.limits
            )
        else:
            request = parse_infer_request(body, header_length, self.config.limits)
        requested = [o.name for o in request.outputs] if request.outputs is not None else None
        self.engine.check_request(served, request.datatypes, requested)
        outputs = await self._run(scope, receive, served, request.inputs, info, use_cache)
        payload, json_length = encode_infer_response(name, served.version, request, outputs)
        if json_length is None:
            answer = Response(200, payload)
        else:
            answer = Response(
                200,
                payload,
                "application/octet-stream",
                {"inference-header-content-length": str(json_length)},
            )
        self.engine.remember(key, answer, len(payload))
        return answer

    async def _predict_v1(
        self, scope: Scope, receive: Receive, info: dict[str, Any], name: str,
        version: int | None = None,
    ) -> Response:  # fmt: skip
        served, body = await self._admit(scope, receive, name, version, info)
        use_cache = _cache_wanted(scope)
        key = self.engine.answer_key(served, use_cache, "v1", body)
        answer: Response | None = self.engine.answered(served, key, info)
        if answer is not None:
            return answer
        message = parse_json(body, self.config.limits)
        instances = message.get("instances") if isinstance(message, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidInputError('the body must be {"instances": [...]}, a non-empty list')
        signature = served.model.signature
        if all(isinstance(i, dict) for i in instances):
            names = signature.input_names
            if any(sorted(i) != sorted(names) for i in instances):
                raise InvalidInputError(
                    f"each instance needs exactly the inputs {', '.join(map(repr, names))}"
                )
            inputs: Any = {n: [i[n] for i in instances] for n in names}
        else:
            inputs = instances
        outputs = await self._run(scope, receive, served, inputs, info, use_cache)
        names = list(outputs)
        if any(len(outputs[n]) != len(instances) for n in names):
            raise PredictionError(
                "the model's outputs do not have one row per instance; use the V2 endpoint"
            )
        if len(names) == 1:
            predictions: list[Any] = outputs[names[0]].tolist()
        else:
            columns = {n: outputs[n].tolist() for n in names}
            predictions = [{n: columns[n][i] for n in names} for i in range(len(instances))]
        answer = json_response({"predictions": predictions})
        self.engine.remember(key, answer, len(answer.body))
        return answer

    async def _admit(
        self, scope: Scope, receive: Receive, name: str, version: int | None,
        info: dict[str, Any],
    ) -> tuple[Served, bytes]:  # fmt: skip
        # Before reading a body there is no room for.
        served = self.engine.admit(name, version, info)
        body = await self._body(scope, receive)
        served.measured.body.observe(len(body))
        return served, body

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        length = header(scope, b"content-length")
        limits = self.config.limits
        declared = int(length) if length and is_number(length) else None
        timeout = limits.request_timeout_s
        deadline_extension = scope.get("extensions", {}).get(BODY_DEADLINE)
        if deadline_extension is not None:  # our HTTP/1.1 protocol times only a real wait
            deadline_extension["at"] = time.monotonic() + timeout
            try:
                return await read_body(receive, declared, limits.max_body_bytes)
            except TimeoutError:
                raise _body_too_late(timeout) from None
        with Deadline(timeout) as deadline:
            try:
                return await read_body(receive, declared, limits.max_body_bytes)
            except asyncio.CancelledError:
                if not deadline.expired:
                    raise
                raise _body_too_late(timeout) from None

    async def _run(
        self, scope: Scope, receive: Receive, served: Served, inputs: Any, info: dict[str, Any],
        use_cache: bool,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        # Once the body is read, the next ASGI message can only say the client went away.
        return await self.engine.predict(
            served, inputs, info, receive, use_cache, arrived=scope.get(_ARRIVED)
        )

    # -- stored predictions -------------------------------------------------------------------

    def _store(self) -> Lookups:
        if self._lookups is None:
            raise HTTPError(404, "this server has no prediction store; start it with --store URL")
        return self._lookups

    async def _prediction(
        self, scope: Scope, receive: Receive, info: dict[str, Any], name: str, key: str
    ) -> Response:
        return json_response({"model_name": name, **await self._store().get(name, key, info)})

    async def _predictions(
        self, scope: Scope, receive: Receive, info: dict[str, Any], name: str
    ) -> Response:
        lookups = self._store()
        keys, features = parse_lookup(
            parse_json(await self._body(scope, receive), self.config.limits)
        )
        answers = await lookups.lookup(name, keys, features, info)
        return json_response({"model_name": name, "predictions": answers})

    async def _graphql(self, scope: Scope, receive: Receive, *_: Any) -> Response:
        try:
            self._authorize(scope)
            body = await self._body(scope, receive)
            try:
                from modelport.server.graphql import execute
            except ModuleNotFoundError as exc:
                if exc.name != "graphql":
                    raise
                raise HTTPError(
                    501,
                    "GraphQL is not installed on this server; install it with: pip install "
                    '"modelport[graphql]"',
                ) from None
        except HTTPError as exc:  # in GraphQL's own error shape, for GraphQL clients
            return json_response({"errors": [{"message": str(exc)}]}, exc.status, exc.headers)
        status, payload = await execute(self.engine, body, _cache_wanted(scope))
        return json_response(payload, status)


def _route(method: str, path: str, shown: str) -> tuple[str, dict[str, Any]]:
    """The handler and checked parameters for a request line, or the HTTP error to answer."""
    allowed = []
    for verb, pattern, name in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if verb != method:
            allowed.append(verb)
            continue
        groups = match.groupdict().items()
        params: dict[str, Any] = {k: unquote(v) for k, v in groups if v is not None}
        if "name" in params:
            check_name(params["name"])
        if "version" in params:
            params["version"] = check_version(params["version"])
        return name, params
    if allowed:
        raise HTTPError(405, f"{method} is not allowed here; use {', '.join(allowed)}")
    raise HTTPError(404, f"no such endpoint: {method} {shown}")


def _body_too_late(timeout_s: float) -> HTTPError:
    return HTTPError(408, f"the request body did not arrive within {timeout_s} s")


def _cache_wanted(scope: Scope) -> bool:
    """``Cache-Control: no-cache`` (or ``no-store``) asks for a fresh computation."""
    control = header(scope, b"cache-control")
    return control is None or not (
        {"no-cache", "no-store"} & set(control.replace(",", " ").split())
    )


def create_app(source: Path, config: ServerConfig = ServerConfig()) -> ModelService:
    """The service for a repository or a single model; models load at ASGI startup."""
    return ModelService(source, config)
