"""The Ray Serve deployments: our Service inside every replica of a model, and the front.

A config file names the builders here (``import_path``); ``serve --ray`` binds the same
classes with the same arguments. Importing this module needs Ray Serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from ray import serve

from modelport.config import ServerConfig
from modelport.rayserve.plan import MODEL_APP, App
from modelport.repository import Repository, VersionPolicy, is_model_folder
from modelport.server import metrics
from modelport.server.lifecycle import config_from_json
from modelport.server.registry import Registry, load_registry, serve_version
from modelport.server.rest.http import Receive, Scope, Send
from modelport.server.service import Service

log = logging.getLogger("modelport.server")

# The parts of an HTTP scope a forwarded request keeps: plain data, the same in any process.
_SCOPE_KEYS = (
    "type", "http_version", "method", "scheme", "path", "raw_path", "query_string",
    "root_path", "headers", "client", "server",
)  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """An HTTP response as plain data, for the way back from a replica to the front."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def settings_config(settings: Mapping[str, Any]) -> ServerConfig:
    """The ServerConfig that plan.py's ``config_settings`` described."""
    raw = json.loads(json.dumps(dataclasses.asdict(ServerConfig())))
    raw.update(settings)
    return config_from_json(json.dumps({"source": "", "config": raw}))[1]


def load_one(source: Path, model: str, config: ServerConfig) -> Registry:
    """The versions of one model the policy keeps, loaded and warmed up (blocking); a single
    model file or folder as it is."""
    if source.is_file() or is_model_folder(source):
        return load_registry(source, config)
    repo = Repository.open(source)
    versions = repo.select(VersionPolicy.parse(config.version_policy)).get(model, [])
    served = []
    try:
        for version in versions:
            served.append(serve_version(repo, model, version, config))
    except BaseException:
        for item in served:
            item.runner.close()
        raise
    return Registry(served)


class _ModelReplica:
    """One replica of one model: the Service (REST routes, engine, batching, cache, metrics)
    over that model's versions, behind Ray Serve's HTTP proxy."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, source: str, model: str, settings: dict[str, Any]
    ) -> None:
        config = settings_config(settings)
        registry = await asyncio.to_thread(load_one, Path(source), model, config)
        self.service = Service(None, config, registry)
        log.info("replica of %s serving versions %s", model, registry.versions(model))

    def __serve_build_asgi_app__(self) -> Service:
        return self.service

    async def forward(self, scope: dict[str, Any], body: bytes) -> Answer:
        """Answer a request the front received (the /v1 routes, which no prefix can reach)."""
        return await call_asgi(self.service, scope, body)

    async def metrics(self) -> tuple[str, bytes]:
        """This replica's id (its actor's name) and its Prometheus metrics. A coroutine so that
        it runs on the replica's event loop, as its requests do: the metrics are kept without
        a lock for that loop's thread alone (Serve runs a plain method on another thread)."""
        replica = serve.get_replica_context().replica_id.to_full_id_str()
        return replica, metrics.render()[0]


class FrontApp:
    """The ASGI app at "/": health and server metadata (our Service, with no models), the /v1
    routes forwarded to the model's replicas, and 404s that name the models served."""

    def __init__(self, models: list[str], config: ServerConfig) -> None:
        self.models = models
        self.service = Service(None, config, Registry([]))
        self.limit = config.limits.max_body_bytes
        self._handles: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/v1/models/", "/v2/models/")):
            await self.service(scope, receive, send)
            return
        name = path.split("/")[3].partition(":")[0]
        if name not in self.models:
            served = ", ".join(self.models) or "-"
            await _error(send, 404, f"no model named {name!r} is served; served: {served}")
            return
        if path.startswith("/v2/"):  # the model's own application takes these when it runs
            await _error(send, 503, f"model {name!r} is not ready: its Ray Serve application "
                         "is not running (deploying, or failed: see 'serve status')")  # fmt: skip
            return
        body, too_long = await _read(receive, self.limit)
        if too_long:
            await _error(send, 413, f"request body is over the limit of {self.limit} bytes")
            return
        plain = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
        plain["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
        answer = await self._handle(name).forward.remote(plain, body)
        await _send(send, answer)

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = serve.get_deployment_handle(name, app_name=name)
        return handle


class _Front:
    """The front application's one deployment (see FrontApp)."""

    def __init__(self, models: list[str], settings: dict[str, Any]) -> None:
        # Not "self.app": Serve's ingress wrapper owns that name.
        self.front = FrontApp(models, settings_config(settings))

    def __serve_build_asgi_app__(self) -> FrontApp:
        return self.front


# Serve's deployments of the classes above (applied here, not as decorators: the types stay).
ModelReplica: Any = serve.deployment(serve.ingress()(_ModelReplica))
Front: Any = serve.deployment(serve.ingress()(_Front))


def model_app(args: dict[str, Any]) -> Any:
    """The application of one model (a config file's ``import_path``): ``args`` holds
    ``source``, ``model`` and ``settings`` (see plan.py)."""
    return ModelReplica.options(name=args["model"]).bind(
        args["source"], args["model"], args.get("settings", {})
    )


def front_app(args: dict[str, Any]) -> Any:
    """The front application (``import_path``): ``args`` holds ``models`` and ``settings``."""
    return Front.options(name="front").bind(args["models"], args.get("settings", {}))


def bind(app: App) -> Any:
    """``app`` as a Serve application, its deployment options applied as a config file's
    ``deployments`` entry would apply them."""
    if app.import_path == MODEL_APP:
        deployment = ModelReplica.options(**app.deployment)
        return deployment.bind(app.args["source"], app.args["model"], app.args["settings"])
    return Front.options(**app.deployment).bind(app.args["models"], app.args["settings"])


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes) -> Answer:
    """Run one HTTP request through an ASGI app in this process and collect its response."""
    request = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    status, headers, chunks = 500, [], []

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await done.wait()  # asked again: the client is "connected" until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return Answer(status, [(bytes(k), bytes(v)) for k, v in headers], b"".join(chunks))


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await _send(send, Answer(status, [(b"content-type", b"application/json")], body))


async def _send(send: Send, answer: Answer) -> None:
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
