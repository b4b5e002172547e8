"""Running the service: security checks, logging, workers and an ordered shutdown.

On SIGTERM or SIGINT each worker turns readiness false and refuses new inference at once,
lets requests in flight finish (up to ``grace_s``), then unloads its models and exits 0.
With several workers uvicorn's supervisor shares one socket and replaces a worker that dies.

With ``grpc_port`` each worker also runs a gRPC server on its own event loop, started once its
models are loaded (several workers: SO_REUSEPORT on Linux, the kernel spreads connections).
From the signal gRPC refuses new calls too, and its calls in flight share the grace period.
With ``tls_cert`` and ``tls_key`` both REST and gRPC speak TLS only.

Secrets (the token, the cache's and the store's URLs) never travel in an environment variable,
which every process the models start would inherit: see ``_CONFIG_ENV``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
import os
import shutil
import signal
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from modelport.config import (
    BatchingConfig,
    LookupConfig,
    PredictionLogConfig,
    RuntimeConfig,
    ServerConfig,
    ServerLimits,
    is_loopback,
)
from modelport.errors import ModelportError, installed

log = logging.getLogger("modelport.server")

# How a worker process learns its configuration: the parent writes it to a file only this user
# may read (0600, in a 0700 folder removed at exit) and names the file in this variable; each
# worker reads it once in worker_app() and drops the variable, so nothing a model starts
# inherits even the name. Nothing else reads it.
_CONFIG_ENV = "MODELPORT_SERVE_CONFIG"
_OUR_HTTP = "modelport.server.protocols.http1:H1Protocol"
_services: list[Any] = []  # this process's service, asked at exit whether its models loaded


def check_security(config: ServerConfig) -> None:
    """Refuse to listen beyond loopback without a token, unless --no-auth says so (which is
    logged at every start, on loopback too)."""
    if config.token:
        if not is_loopback(config.host) and config.tls_cert is None:
            log.warning(
                "the token travels in clear text to %s: pass --tls-cert and --tls-key, or put "
                "a TLS-terminating proxy in front", config.host,
            )  # fmt: skip
        return
    if config.no_auth:
        log.warning(
            "--no-auth: anyone who can reach %s:%d can use the models", config.host, config.port
        )
    elif not is_loopback(config.host):
        raise ModelportError(
            f"listening on {config.host} exposes the models to the network: pass --token "
            "(or --token-file) so that clients must send 'Authorization: Bearer <token>', or "
            "--no-auth to accept anyone"
        )


def check_grpc_port(config: ServerConfig) -> None:
    """Fail at once, with a clear message, when gRPC cannot run or its port is taken.

    Several workers share the port with SO_REUSEPORT, which would also share it with a stranger
    that did the same; a plain bind first makes sure nobody else is there.
    """
    import socket

    from modelport.errors import require

    require("grpc", "grpc")
    require("grpc_health", "grpc")
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gRPC itself does: connections of an earlier run in TIME_WAIT are no obstacle.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.grpc_port))
        except OSError as exc:
            raise ModelportError(
                f"cannot listen for gRPC on {config.host}:{config.grpc_port}: {exc.strerror}; "
                "pick another --grpc-port"
            ) from None


def check_tls(config: ServerConfig) -> None:
    """Fail at once, with a clear message, when the certificate or its key cannot be used
    (rather than in every worker, each replaced as it dies)."""
    if config.tls_cert is None or config.tls_key is None:
        return
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ModelportError(
            f"cannot serve TLS with --tls-cert {config.tls_cert} and --tls-key "
            f"{config.tls_key}: {exc}; pass a PEM certificate (chain) and its unencrypted key"
        ) from None


def log_config(access_log: bool) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "raw": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "raw",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "modelport": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "modelport.access": {
                "handlers": ["access"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"level": "WARNING"},
        },
    }


def config_to_json(source: Path, config: ServerConfig) -> str:
    return json.dumps({"source": str(source), "config": dataclasses.asdict(config)})


def config_from_json(text: str) -> tuple[Path, ServerConfig]:
    data = json.loads(text)
    raw = data["config"]
    runtime = raw["runtime"]
    if runtime["providers"] is not None:
        runtime["providers"] = tuple(runtime["providers"])
    batching = raw["batching"]
    if batching is not None:
        batching = BatchingConfig(
            **{**batching, "preferred_batch_sizes": tuple(batching["preferred_batch_sizes"])}
        )
    config = ServerConfig(
        **{
            **raw,
            "limits": ServerLimits(**raw["limits"]),
            "runtime": RuntimeConfig(**runtime),
            "batching": batching,
            "routes": tuple(raw["routes"]),
            "shadows": tuple(raw["shadows"]),
            "lookups": None
            if raw["lookups"] is None
            else LookupConfig(**{**raw["lookups"], "max_age": tuple(raw["lookups"]["max_age"])}),
            "prediction_log": None
            if raw["prediction_log"] is None
            else PredictionLogConfig(**raw["prediction_log"]),
        }
    )
    return Path(data["source"]), config


def worker_app() -> Any:
    """The ASGI app of one worker process (uvicorn factory)."""
    from modelport.server.service import create_app

    source, config = config_from_json(Path(os.environ.pop(_CONFIG_ENV)).read_text())
    service = create_app(source, config)
    _services.append(service)
    # uvicorn has installed its signal handlers by now (it loads the app inside them): run
    # ours first, so readiness turns false the moment the signal arrives.
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            signal.signal(sig, _drain_then(service, previous))
    return service


def _drain_then(service: Any, previous: Callable[[int, FrameType | None], Any]) -> Any:
    def handler(sig: int, frame: FrameType | None) -> None:
        service.begin_drain()
        previous(sig, frame)

    return handler


def serve(source: Path, config: ServerConfig, access_log: bool = True) -> None:
    """Serve ``source`` (a repository or one model) until SIGTERM/SIGINT; blocks."""
    logging.config.dictConfig(log_config(access_log))
    check_security(config)
    check_tls(config)
    if config.grpc_port is not None:
        check_grpc_port(config)
    # Metrics from several worker processes are summed from files in this folder; one process
    # keeps them in memory, which costs a fraction per update.
    metrics_dir = None
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="modelport-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    private = tempfile.mkdtemp(prefix="modelport-serve-")  # mode 0700
    path = Path(private) / "config.json"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(config_to_json(source, config))
    os.environ[_CONFIG_ENV] = str(path)
    try:
        _run(source, config, access_log)
    finally:
        os.environ.pop(_CONFIG_ENV, None)
        shutil.rmtree(private, ignore_errors=True)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(source: Path, config: ServerConfig, access_log: bool) -> None:
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "factory": True,
        "lifespan": "on",
        "log_config": log_config(access_log),
        "access_log": False,
        "timeout_graceful_shutdown": config.grace_s,
        "limit_concurrency": config.limits.max_connections,  # both protocols answer 503 beyond
        "http": _OUR_HTTP if config.http == "modelport" else "httptools",
        "loop": "uvloop" if installed("uvloop") else "asyncio",
        "server_header": False,
        "proxy_headers": False,  # X-Forwarded-* are trusted only behind a known proxy
        "ssl_certfile": config.tls_cert,
        "ssl_keyfile": config.tls_key,
    }
    app = "modelport.server.lifecycle:worker_app"
    # uvicorn re-raises the stop signal once it has shut down gracefully; with these handlers
    # in place that ends the process with exit code 0 rather than death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    if config.workers == 1:
        server = uvicorn.Server(uvicorn.Config(app, **options))
        server.run()
        if not server.started or any(s.load_error for s in _services):
            raise ModelportError("the server did not start; the log above says why")
        return
    from uvicorn.supervisors import Multiprocess

    # Load once here first: a worker that cannot load its models (or apply its routes and
    # shadows) would otherwise be replaced, fail and be replaced again, forever.
    from modelport.server.service import create_app

    create_app(source, config).load_models(source).close()
    uv_config = uvicorn.Config(app, workers=config.workers, **options)
    sock = uv_config.bind_socket()
    try:
        Multiprocess(uv_config, sockets=[sock]).run()
    finally:
        sock.close()


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(1 if any(s.load_error for s in _services) else 0)
