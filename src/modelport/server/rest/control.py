"""The REST door's control endpoints: the repository extension and the shadow report.

    POST /v2/repository/index                 [{"name", "version", "state", "reason"}, ...]
    POST /v2/repository/models/{name}/load    {} (or tritonclient's {"parameters": {}})
    POST /v2/repository/models/{name}/unload
    GET  /v2/shadow                           agreement counts and the last disagreements

Off unless the server runs with ``--control`` (404, as for an unknown endpoint, once the caller
has passed what every endpoint asks); the shadow report exists when a shadow does. Who may
call: the control token when there is one (never the access token: whoever may predict must
not load and unload); without one, on loopback, this machine's programs only (the Host and
Origin checks of gate.py). Nothing in a request names a path or a file: a load loads what the
repository holds, and ``config`` or ``file:`` parameters are refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelport.config import ServerConfig, is_loopback
from modelport.errors import ConflictError, InvalidInputError, ModelLoadError
from modelport.server.engine import Engine
from modelport.server.requests import RequestRecord, bearer_ok
from modelport.server.rest.gate import Gate
from modelport.server.rest.http import HTTPError, Receive, Response, Scope, header, json_response
from modelport.server.rest.routes import ENDPOINTS
from modelport.server.tensors import parse_json
from modelport.server.versions import Versions

log = logging.getLogger("modelport.server")

Body = Callable[[Scope, Receive], Awaitable[bytes]]
_MORE_ERRORS = {  # documented here: openapi.py's table has the statuses every endpoint may have
    "403": "Refused from beyond this machine without a control token, or a page of another site",
    "409": "Another load or unload of this model is running",
}
HANDLERS = ("repository_index", "repository_load", "repository_unload", "shadow_report")
_ALLOWED = {"load": set(), "unload": {"unload_dependents"}}


class ControlRoutes:
    """The control handlers of one RestApp; ``versions`` is set once the repository opens."""

    def __init__(self, engine: Engine, config: ServerConfig, body: Body) -> None:
        self.engine = engine
        self.config = config
        self.versions: Versions | None = None
        self._body = body
        # The loopback checks alone (Host, Origin), whatever the access token.
        self._local = Gate(dataclasses.replace(config, token=None))
        self._gate = Gate(config)  # what every other endpoint asks

    def handlers(self) -> dict[str, Callable[..., Awaitable[Response]]]:
        return {name: getattr(self, name) for name in HANDLERS}

    @property
    def extensions(self) -> list[str]:
        """The protocol extensions these endpoints add to the server metadata's."""
        return ["model_repository"] if self.config.control else []

    def document(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` (openapi.py's document) with the endpoints this server has of these."""
        from modelport.server.rest import openapi

        served = {"control": self.config.control, "shadow": bool(self.config.shadows)}
        for endpoint in ENDPOINTS:
            if not served.get(endpoint.needs):
                continue
            codes = endpoint.errors.split(",")
            known = ",".join(c for c in codes if c not in _MORE_ERRORS)
            op = openapi._operation(dataclasses.replace(endpoint, errors=known), endpoint.path, {})
            for code in (c for c in codes if c in _MORE_ERRORS):
                error = {"application/json": {"schema": openapi._type("Error")}}
                op["responses"][code] = {"description": _MORE_ERRORS[code], "content": error}
            spec["paths"].setdefault(endpoint.path, {})[endpoint.method] = op
        if any(served.values()):
            spec["tags"].append({"name": "control"})
            spec["components"]["schemas"].update(
                RepositoryIndex={"type": "array", "items": openapi._schema(
                    "name! version! state! reason", description="reason: why not READY"
                )},
                ShadowReport=openapi._schema("shadows!:[]any targets!:any disagreements!:[]any"),
            )  # fmt: skip
        return spec

    def _authorize(self, scope: Scope, what: str) -> None:
        token = self.config.control_token
        if token is not None:
            if not bearer_ok(header(scope, b"authorization"), token):
                client = (scope.get("client") or ["?"])[0]
                log.warning("refused a %s call from %s: missing or wrong control token",
                            what, client)  # fmt: skip
                raise HTTPError(
                    401,
                    "missing or wrong control token: send 'Authorization: Bearer <control "
                    "token>' (the access token does not open the control API)",
                    {"www-authenticate": "Bearer"},
                )
        elif is_loopback(self.config.host):
            self._local.check(scope)
        else:
            raise HTTPError(403, f"{what} beyond loopback needs --control-token")

    def _absent(self, scope: Scope, message: str) -> HTTPError:
        """Not served here: 404, once the caller has passed what any endpoint asks (a caller
        without the access token learns nothing, not even that)."""
        self._gate.check(scope)
        return HTTPError(404, message)

    def _control(self, scope: Scope, what: str) -> Versions:
        if not self.config.control or self.versions is None:
            raise self._absent(scope, f"no such endpoint: {what} (start the server with --control)")
        self._authorize(scope, what)
        return self.versions

    async def _parameters(self, scope: Scope, receive: Receive, action: str) -> dict[str, Any]:
        body = await self._body(scope, receive)
        if not body.strip():
            return {}
        message = parse_json(body, self.config.limits)
        if not isinstance(message, dict):
            raise InvalidInputError("the body must be a JSON object")
        parameters = message.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInputError("'parameters' must be an object")
        for key in parameters:
            if key == "config" or key.startswith("file:"):
                raise InvalidInputError(
                    f"parameter {key[:40]!r}: this server loads only what its repository "
                    "holds; no configuration or file comes from a request"
                )
            if action in _ALLOWED and key not in _ALLOWED[action]:
                raise InvalidInputError(f"unknown {action} parameter {key[:40]!r}")
        return message

    async def repository_index(self, scope: Scope, receive: Receive, *_: Any) -> Response:
        versions = self._control(scope, "the repository index")
        message = await self._parameters(scope, receive, "index")
        ready = message.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInputError("'ready' must be true or false")
        return json_response(versions.index(ready_only=ready))

    async def repository_load(
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str
    ) -> Response:
        versions = self._control(scope, "load")
        await self._parameters(scope, receive, "load")
        try:
            await versions.load(name)
        except ConflictError as exc:
            raise HTTPError(409, str(exc)) from None
        except ModelLoadError as exc:
            raise HTTPError(400, str(exc)) from None
        log.info("control: %s loaded", name)
        return Response(200, b"")

    async def repository_unload(
        self, scope: Scope, receive: Receive, record: RequestRecord, name: str
    ) -> Response:
        versions = self._control(scope, "unload")
        await self._parameters(scope, receive, "unload")
        try:
            await versions.unload(name)
        except ConflictError as exc:
            raise HTTPError(409, str(exc)) from None
        log.info("control: %s unloaded", name)
        return Response(200, b"")

    async def shadow_report(self, scope: Scope, *_: Any) -> Response:
        shadows = self.engine.shadows
        if shadows is None:
            raise self._absent(scope, "no shadow here (start the server with --shadow MODEL=V)")
        self._authorize(scope, "the shadow report")
        return json_response(shadows.report())
