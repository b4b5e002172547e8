"""The REST door: Open Inference Protocol routes, the :predict form, stored predictions,
GraphQL, metrics and docs, as one raw ASGI app over the shared Engine.

    app = RestApp(engine, config)   # the Service hands it HTTP requests
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from modelport import __version__
from modelport.config import ServerConfig, url_host
from modelport.errors import (
    InvalidInputError,
    MissingDependencyError,
    PredictionError,
    installed,
)
from modelport.repository import is_number
from modelport.runtimes import PLATFORMS
from modelport.server import metrics, tracing
from modelport.server.engine import Engine
from modelport.server.extensions import EXTENSIONS, model_config, model_statistics
from modelport.server.lookups import Lookups, parse_lookup
from modelport.server.registry import Registry, Served
from modelport.server.requests import RequestRecord, cache_wanted, client_request_id
from modelport.server.rest import edge
from modelport.server.rest.answers import KeptAnswers
from modelport.server.rest.control import HANDLERS as CONTROL_HANDLERS
from modelport.server.rest.control import ControlRoutes
from modelport.server.rest.gate import Gate
from modelport.server.rest.http import (
    BODY_DEADLINE,
    Deadline,
    HTTPError,
    Receive,
    Response,
    Scope,
    Send,
    decoded,
    error_response,
    header,
    headers,
    json_response,
    read_body,
    send_response,
)
from modelport.server.rest.protocol import (
    encode_infer_response,
    parse_infer_request,
    parse_v1_request,
)
from modelport.server.rest.routes import Endpoint, checked, route
from modelport.server.routing import ROUTING_KEY
from modelport.server.telemetry import EdgeTelemetry
from modelport.server.tensors import parse_json
from modelport.server.web import WebBundles
from modelport.signature import Signature

log = logging.getLogger("modelport.server")

# A GraphQL executor: (engine, body, use_cache) -> (HTTP status, GraphQL response).
GraphQL = Callable[[Engine, bytes, bool], Awaitable[tuple[int, dict[str, Any]]]]

_JSON_HINT = (
    " for a body of JSON (--max-json-bytes): send large tensors as binary data (the binary "
    "tensor extension, tritonclient's default) or raise the limit"
)
# GraphQL answers a refusal in its own error shape; control calls need the control token
_SELF_AUTHORIZED = {"graphql", *CONTROL_HANDLERS}
_INLINE_PARSE_BYTES = 256 * 1024
_ROUTE_CACHE_SIZE = 4096  # request lines already routed: the regexes run once per path
_ROUTE_CACHE_PATH = 256  # longer paths are routed anew each time rather than kept
_ARRIVED = "modelport.arrived"  # scope key: time.monotonic() when the request reached the app
_ROUTING_KEY = ROUTING_KEY.encode()


def _tensor_metadata(signature: Signature) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]
        for kind, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs))
    }


class RestApp:
    """HTTP requests in, answers out; ``lookups`` is set once the service has a store."""

    def __init__(self, engine: Engine, config: ServerConfig, graphql: GraphQL) -> None:
        self.engine = engine
        self.config = config
        self.lookups: Lookups | None = None
        self.web: WebBundles | None = None  # serve --web: bundles and edge telemetry
        self.telemetry: EdgeTelemetry | None = None
        self._graphql_executor = graphql
        self._answers = KeptAnswers(config)
        self._openapi_spec: dict[str, Any] | None = None
        self._docs_page: bytes | None = None
        self._handlers: dict[str, Callable[..., Awaitable[Response]]] = {}
        self._routes: dict[tuple[str, bytes], tuple[Endpoint, dict[str, Any]]] = {}
        self._gate = Gate(config)
        self.control = ControlRoutes(engine, config, self._body)  # versions: set by the Service
        self._extensions = EXTENSIONS + self.control.extensions
        self._handlers.update(self.control.handlers())

    def models_changed(self) -> None:
        """The served versions changed (a reload): what was built from them is built anew."""
        self._openapi_spec = None
        self._docs_page = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = scope[_ARRIVED] = time.monotonic()
        given = headers(scope).get(b"x-request-id")
        request_id = client_request_id(given.decode("latin-1")) if given is not None else None
        if request_id is None:
            request_id = self.engine.new_request_id()
        record = RequestRecord(request_id, started)
        if tracing.on():
            record.span = tracing.request_span(
                f"{scope['method']} {scope['path']}", header(scope, b"traceparent"),
                header(scope, b"tracestate"),
            )  # fmt: skip
        try:
            response = await self._dispatch(scope, receive, record)
        except ConnectionAbortedError:
            record.release()
            return
        except Exception as exc:
            response = error_response(exc, request_id)
            if response.status == 500:
                log.error("request %s failed: %s", request_id, exc, exc_info=exc)
        await send_response(send, response, [(b"x-request-id", request_id.encode())])
        if record.finish(response.status):
            client = (scope.get("client") or ["", 0])[0]
            method, path, size = scope["method"], scope["path"], len(response.body)
            fields = {"method": method, "path": path, "bytes_out": size, "client": client}
            record.log(response.status, fields)

    async def _dispatch(self, scope: Scope, receive: Receive, record: RequestRecord) -> Response:
        # Route on the raw path so that an encoded '/' (%2F) stays inside one segment.
        raw = scope.get("raw_path") or scope["path"].encode()
        method = scope["method"]
        routed = self._routes.get((method, raw))
        fresh = routed is None
        if routed is None:
            line = bytes(raw).decode("latin-1").split("?", 1)[0]
            endpoint, found = route(method, line, scope["path"])
        else:
            endpoint, params = routed
        if endpoint.handler not in _SELF_AUTHORIZED and (
            self._gate.local_only or (self.config.token is not None and not endpoint.open)
        ):
            self._gate.check(scope)
        if fresh:
            params = checked(found)
            # Kept only once authorized, and only short paths: the regexes run once per path,
            # and a client sending random paths can neither fill the table nor grow it.
            if len(raw) <= _ROUTE_CACHE_PATH and len(self._routes) < _ROUTE_CACHE_SIZE:
                self._routes[(method, raw)] = endpoint, params
        handler = self._handlers.get(endpoint.handler)
        if handler is None:
            handler = self._handlers[endpoint.handler] = getattr(self, f"_{endpoint.handler}")
        return await handler(scope, receive, record, **params)

    def _authorize(self, scope: Scope) -> None:
        self._gate.check(scope)

    def _registry(self) -> Registry:
        return self.engine.models()

    # -- health and metadata ------------------------------------------------------------------

    async def _live(self, *_: Any) -> Response:
        return json_response({"live": True})

    async def _ready(self, *_: Any) -> Response:
        return json_response({"ready": self.engine.ready}, 200 if self.engine.ready else 503)

    async def _server_metadata(self, *_: Any) -> Response:
        return json_response(
            {"name": "modelport", "version": __version__, "extensions": self._extensions}
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
        return json_response(
            {"name": name, "ready": self.engine.ready}, 200 if self.engine.ready else 503
        )

    async def _model_stats(
        self, *_: Any, name: str | None = None, version: int | None = None
    ) -> Response:
        stats = model_statistics(self._registry(), name, version)
        return json_response({"model_stats": stats})

    async def _model_config(self, *_: Any, name: str, version: int | None = None) -> Response:
        return json_response(model_config(self._registry().get(name, version)))

    async def _metrics(self, *_: Any) -> Response:
        if self.lookups is not None:
            await asyncio.to_thread(self.lookups.refresh_ages)
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    async def _openapi(self, *_: Any) -> Response:
        return json_response(self._spec())

    async def _docs(self, *_: Any) -> Response:
        from modelport.server.rest.openapi import docs_html

        if self._docs_page is None:
            host = self.config.host
            if host in ("0.0.0.0", "::", ""):  # every address: this machine's own will do
                host = "localhost"
            base = f"http://{url_host(host)}:{self.config.port}"
            page = docs_html(self._spec(), base, token=self.config.token is not None)
            self._docs_page = page.encode()
        return Response(200, self._docs_page, "text/html; charset=utf-8")

    def _spec(self) -> dict[str, Any]:
        from modelport.server.rest.openapi import openapi_spec

        if self._openapi_spec is None:  # the models are fixed once loaded: build it once
            self._openapi_spec = self.control.document(openapi_spec(
                __version__,
                self._catalog(self._registry()),
                lookups=self.lookups is not None,
                graphql=installed("graphql"),
                web=self.web is not None,
                token=self.config.token is not None,
            ))  # fmt: skip
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
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str,
        version: int | None = None,
    ) -> Response:  # fmt: skip
        served, body = await self._admit(scope, receive, name, version, record)
        length = header(scope, b"inference-header-content-length")
        use_cache = _cache_wanted(scope)
        key = self._answers.key(served, use_cache, "v2", body, length)
        if key is not None and (kept := self._answers.get(served, key, record)) is not None:
            return kept
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
        # Once the body is read, the next ASGI message can only say the client went away.
        outputs = await self.engine.predict(
            served, request.inputs, record, receive, use_cache, arrived=scope.get(_ARRIVED)
        )
        payload, json_length = encode_infer_response(name, served.version, request, outputs)
        made_by = {"model-version": served.label}  # which version answered (splits, reloads)
        if json_length is None:
            answer = Response(200, payload, headers=made_by)
        else:
            answer = Response(
                200,
                payload,
                "application/octet-stream",
                {"inference-header-content-length": str(json_length), **made_by},
            )
        return self._keep(record, key, answer)

    async def _predict_v1(
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str,
        version: int | None = None,
    ) -> Response:  # fmt: skip
        served, body = await self._admit(scope, receive, name, version, record)
        use_cache = _cache_wanted(scope)
        key = self._answers.key(served, use_cache, "v1", body)
        if key is not None and (kept := self._answers.get(served, key, record)) is not None:
            return kept
        signature, limits = served.model.signature, self.config.limits
        if len(body) > _INLINE_PARSE_BYTES:  # big bodies parse off the event loop
            count, inputs = await asyncio.to_thread(parse_v1_request, body, signature, limits)
        else:
            count, inputs = parse_v1_request(body, signature, limits)
        outputs = await self.engine.predict(
            served, inputs, record, receive, use_cache, arrived=scope.get(_ARRIVED)
        )
        names = list(outputs)
        if any(len(outputs[n]) != count for n in names):
            raise PredictionError(
                "the model's outputs do not have one row per instance; use the V2 endpoint"
            )
        if len(names) == 1:
            predictions: Any = _json_rows(outputs[names[0]])
        else:
            columns = {n: _json_rows(outputs[n]) for n in names}
            predictions = [{n: columns[n][i] for n in names} for i in range(count)]
        made_by = {"model-version": served.label}  # which version answered
        return self._keep(record, key, json_response({"predictions": predictions}, headers=made_by))

    async def _admit(
        self, scope: Scope, receive: Receive, name: str, version: int | None,
        record: RequestRecord,
    ) -> tuple[Served, bytes]:  # fmt: skip
        # Before reading a body there is no room for.
        key = headers(scope).get(_ROUTING_KEY)
        served = self.engine.admit(
            name, version, record, None if key is None else key.decode("latin-1")
        )
        body = await self._body(scope, receive)
        served.measured.body.observe(len(body))
        return served, body

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, decompressed when it came compressed; the limit is on both."""
        table = headers(scope)
        length = table.get(b"content-length")
        limits = self.config.limits
        declared = int(length) if length and length.isdigit() else None
        limit, hint = limits.max_body_bytes, ""
        if table.get(b"inference-header-content-length") is None:  # all JSON
            limit, hint = min(limit, limits.max_json_bytes), _JSON_HINT
        timeout = limits.request_timeout_s
        deadline_extension = scope.get("extensions", {}).get(BODY_DEADLINE)
        if deadline_extension is not None:  # our HTTP/1.1 protocol times only a real wait
            deadline_extension["at"] = time.monotonic() + timeout
            try:
                body = await read_body(receive, declared, limit, hint)
            except TimeoutError:
                raise _body_too_late(timeout) from None
        else:
            with Deadline(timeout) as deadline:
                try:
                    body = await read_body(receive, declared, limit, hint)
                except asyncio.CancelledError:
                    if not deadline.expired:
                        raise
                    raise _body_too_late(timeout) from None
        encoding = table.get(b"content-encoding")
        if encoding is None:
            return body
        return await decoded(body, encoding.decode("latin-1"), limit, hint)

    def _keep(self, record: RequestRecord, key: Any, answer: Response) -> Response:
        """Keep an answer for identical requests, unless a fallback guards its model."""
        if record.guard is None:
            if key is not None:
                self._answers.keep(key, answer)
        else:
            answer.headers.update(record.guard)
        return answer

    # -- stored predictions -------------------------------------------------------------------

    def _store(self) -> Lookups:
        if self.lookups is None:
            raise HTTPError(404, "this server has no prediction store; start it with --store URL")
        return self.lookups

    async def _prediction(
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str, key: str
    ) -> Response:
        return json_response({"model_name": name, **await self._store().get(name, key, record)})

    async def _predictions(
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str
    ) -> Response:
        lookups = self._store()
        keys, features = parse_lookup(
            parse_json(await self._body(scope, receive), self.config.limits)
        )
        answers = await lookups.lookup(name, keys, features, record)
        return json_response({"model_name": name, "predictions": answers})

    # -- the edge: serve --web (edge.py) -------------------------------------------------------

    async def _web(
        self, scope: Scope, _: Receive, __: Any, name: str, file: str | None = None
    ) -> Response:
        return await edge.web_page(self.web, lambda: self._authorize(scope), name, file)

    async def _web_manifest(self, *_: Any, name: str) -> Response:
        return await edge.web_manifest(self.web, name)

    async def _web_model(self, *_: Any, name: str, version: int | None = None) -> Response:
        return await edge.web_model(self.web, name, version)

    async def _telemetry(self, scope: Scope, receive: Receive, *_: Any) -> Response:
        return await edge.telemetry(self.telemetry, lambda: self._body(scope, receive), self.config)

    async def _graphql(self, scope: Scope, receive: Receive, *_: Any) -> Response:
        try:
            self._authorize(scope)
            body = await self._body(scope, receive)
            use_cache = _cache_wanted(scope)
            status, payload = await self._graphql_executor(self.engine, body, use_cache)
        except HTTPError as exc:  # in GraphQL's own error shape, for GraphQL clients
            return json_response({"errors": [{"message": str(exc)}]}, exc.status, exc.headers)
        except MissingDependencyError as exc:
            return json_response({"errors": [{"message": str(exc)}]}, 501)
        return json_response(payload, status)


def _json_rows(array: np.ndarray) -> Any:
    # float32 stays numpy, which orjson writes as float32; the rest as Python values (orjson
    # has no numpy.longlong, which onnxruntime's int64 outputs are).
    return list(array) if array.dtype == np.float32 else array.tolist()


def _cache_wanted(scope: Scope) -> bool:
    control = headers(scope).get(b"cache-control")
    return control is None or cache_wanted(control.decode("latin-1"))


def _body_too_late(timeout_s: float) -> HTTPError:
    return HTTPError(408, f"the request body did not arrive within {timeout_s} s")
