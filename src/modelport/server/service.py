"""The model service of one process: the shared Engine and the lifecycle of every door.

    app = create_app(Path("demo-models"), ServerConfig())   # any ASGI server can run it

It is the ASGI app a server runs: the lifespan starts the doors (loading the models, the
prediction store, gRPC) and stops them in order; HTTP requests go to the REST door.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path
from typing import Any

from modelport.config import ServerConfig
from modelport.errors import MissingDependencyError, ModelportError, require
from modelport.repository import is_model_folder
from modelport.server import metrics, tracing
from modelport.server.engine import Engine
from modelport.server.lookups import Lookups
from modelport.server.registry import Registry, load_registry
from modelport.server.rest.app import RestApp
from modelport.server.rest.http import Receive, Scope, Send
from modelport.server.telemetry import EdgeTelemetry
from modelport.server.versions import Versions
from modelport.server.web import WebBundles

log = logging.getLogger("modelport.server")


class Service:
    """Every door of one process over one Engine; loads the models at startup."""

    def __init__(self, source: Path | None, config: ServerConfig, registry: Registry | None = None):
        self.source = source
        self.config = config
        self.engine = Engine(config)
        self.engine.registry = registry
        self.rest = RestApp(self.engine, config, _graphql)
        self.load_error: Exception | None = None
        self._loading: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs
        self._grpc: Any = None  # a GRPCDoor when config.grpc_port is set
        self.versions: Versions | None = None  # a repository's: reloads, control, splits
        if source is not None and registry is None and _repository(source):
            self.versions = Versions(source, config, self.engine)
            self.versions.on_change = self.rest.models_changed
            self.rest.control.versions = self.versions
        self._watching: asyncio.Task[None] | None = None

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
        if scope["type"] == "http":
            await self.rest(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.error("%s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Load the models, open the prediction store and start gRPC."""
        if self.registry is None and self.source is not None:
            if self.config.workers == 1:
                # Listen at once: /v2/health/live answers and readiness says "not yet" while
                # the models load in a thread.
                self._loading = asyncio.create_task(self._load(self.source))
            else:
                # One of several workers on a shared socket: it takes connections only once
                # loaded, so no request meets a worker still loading.
                await self._load(self.source)
        if self.config.lookups is not None:
            self.rest.lookups = Lookups(self.config.lookups, self.engine)
        if self.config.web and self.source is not None:  # serve --web
            self.rest.web = WebBundles(self.source, self.config)
            self.rest.telemetry = EdgeTelemetry(self.rest.web.known_versions)
        if self.config.otlp_endpoint is not None:
            require("opentelemetry.sdk", "otel")
            require("opentelemetry.exporter.otlp.proto.http", "otel")
            tracing.start(self.config.otlp_endpoint)
        if self.config.prediction_log is not None:
            require("sqlalchemy", "batch")
            from modelport.server.prediction_log import PredictionLog

            predictions = PredictionLog(self.config.prediction_log)
            await asyncio.to_thread(predictions.start)
            self.engine.predictions = predictions
        if self.config.grpc_port is not None:
            require("grpc", "grpc")
            require("grpc_health", "grpc")
            from modelport.server.grpc.service import GRPCDoor

            self._grpc = GRPCDoor(self.engine, self.config)
            self._grpc.versions = self.versions
            await self._grpc.start(share_port=self.config.workers > 1)

    async def stop(self) -> None:
        """Drain every door within the grace period, then unload the models."""
        self.begin_drain()
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        if self._grpc is not None:  # stopping since the signal, alongside REST
            await self._grpc.stop(self.engine.grace_left_s())
        if self.versions is not None:
            await self.versions.close()
        await self.engine.close()
        if self.engine.predictions is not None:  # after the last answer: every record is in
            await asyncio.to_thread(self.engine.predictions.close)
        if self.rest.lookups is not None:
            self.rest.lookups.close()
        metrics.forget_process()
        await asyncio.to_thread(tracing.stop)  # the last spans: this request's included

    async def _load(self, source: Path) -> None:
        try:
            self.registry = await asyncio.to_thread(self.load_models, source)
        except Exception as exc:
            self.load_error = exc
            log.error("could not load the models: %s; stopping", exc)
            signal.raise_signal(signal.SIGTERM)  # the ordered shutdown; serve() exits 1
            return
        log.info("serving %s", ", ".join(self.registry.names()) or "no models")
        if self.config.watch and self.versions is not None:
            from modelport.server.watch import Watcher

            self._watching = asyncio.create_task(Watcher(self.versions, self.config).run())
        # Everything loaded so far lives as long as the server: out of the collector's sight,
        # a full collection scans only what requests create (25 ms pauses -> under 2 ms).
        gc.collect()
        gc.freeze()

    def load_models(self, source: Path) -> Registry:
        """Load (blocking) a repository through Versions (it follows changes, splits, shadows,
        control), one model file or folder as it is; raises what stops a start."""
        config = self.config
        if self.versions is None:
            if (
                config.watch
                or config.control
                or config.routes
                or config.routes_file
                or (config.shadows)
            ):
                raise ModelportError(
                    "--watch, --control, --route, --routes-file and --shadow need a model "
                    f"repository; {source} is one model"
                )
            return load_registry(source, config)
        routes = list(config.routes)
        if config.routes_file is not None:
            from modelport.server.watch import read_routes

            routes += read_routes(Path(config.routes_file))
        self.versions.set_rules(routes, config.shadows)
        return self.versions.load_all()


def _repository(source: Path) -> bool:
    return source.is_dir() and not is_model_folder(source)


async def _graphql(engine: Engine, body: bytes, use_cache: bool) -> tuple[int, dict[str, Any]]:
    """GraphQL's executor, imported on the first query: most servers never get one."""
    try:
        from modelport.server.graphql import execute
    except ModuleNotFoundError as exc:
        if exc.name != "graphql":
            raise
        raise MissingDependencyError(
            "GraphQL is not installed on this server; install it with: "
            'pip install "modelport[graphql]"'
        ) from None
    return await execute(engine, body, use_cache)


def create_app(source: Path, config: ServerConfig = ServerConfig()) -> Service:
    """The service for a repository or a single model; models load at ASGI startup."""
    return Service(source, config)
