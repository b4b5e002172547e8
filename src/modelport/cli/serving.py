"""``modelport serve``: one option per setting of ServerConfig and ServerLimits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from modelport.cli.options import TRUST_CODE_OPTION, TRUST_OPTION
from modelport.cli.rayserve import ray_config, ray_options
from modelport.config import (
    BatchingConfig,
    LookupConfig,
    PredictionLogConfig,
    RuntimeConfig,
    ServerConfig,
    ServerLimits,
)
from modelport.errors import ModelNotFoundError
from modelport.repository import VersionPolicy


def _limit_options(function: Any) -> Any:
    """One option per ServerLimits field, named after it (a test keeps them in step)."""
    defaults = ServerLimits()
    helps = {
        "max_body_bytes": "Largest request body accepted (413 beyond).",
        "max_json_bytes": "Largest body that is all JSON (413 beyond); binary tensors (the "
        "binary tensor extension) may fill --max-body-bytes.",
        "max_json_depth": "Deepest JSON nesting accepted.",
        "max_elements": "Most elements in one input tensor.",
        "max_string_bytes": "Most bytes of text (BYTES inputs) in one request.",
        "request_timeout_s": "Deadline per request, queueing included (504 beyond).",
        "max_queue": "Requests waiting per model version before 503 (Retry-After).",
        "max_connections": "Open connections (or requests in progress) per worker at which "
        "requests get 503.",
    }
    for name, text in reversed(helps.items()):
        function = click.option(
            f"--{name.replace('_', '-')}", name, default=getattr(defaults, name),
            show_default=True, type=type(getattr(defaults, name)), help=text,
        )(function)  # fmt: skip
    return click.option(
        "--allow-non-finite", "allow_non_finite", is_flag=True,
        help="Accept NaN and Infinity in float inputs.",
    )(function)  # fmt: skip


def _rollout_options(function: Any) -> Any:
    """Versions in production: --watch, the control API, traffic splits and shadows."""
    options = [
        click.option("--watch", is_flag=True, help="Follow the repository while serving: new "
                     "versions are loaded, warmed up and swapped in; removed or withdrawn ones "
                     "drain and unload (inotify when watchfiles is installed, else a scan)."),
        click.option("--watch-interval-s", default=ServerConfig.watch_interval_s,
                     show_default=True, type=float, help="How often --watch scans the "
                     "repository (inotify also wakes it at once)."),
        click.option("--control", is_flag=True, help="Serve the repository extension (index, "
                     "load, unload over REST and gRPC); beyond loopback it needs "
                     "--control-token."),
        click.option("--control-token", envvar="MODELPORT_CONTROL_TOKEN", help="Token of the "
                     "control API and the shadow report, never the access token "
                     "(env MODELPORT_CONTROL_TOKEN)."),
        click.option("--control-token-file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="Read the control token from this file."),
        click.option("--route", "routes", multiple=True, metavar="MODEL=V:PCT,...",
                     help="Split requests that name no version: churn=2:90,3:10 (sticky per "
                     "X-Routing-Key)."),
        click.option("--routes-file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="Routes, one a line; with --watch reloaded when it "
                     "changes (a bad file is refused, the last good routes stay)."),
        click.option("--shadow", "shadows", multiple=True, metavar="MODEL=VERSION",
                     help="Send a copy of live requests to this version after answering and "
                     "count agreement in /metrics (churn=3)."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def _check_rollout(
    source: Path, routes: tuple[str, ...], routes_file: Path | None, shadows: tuple[str, ...]
) -> None:
    """Refuse malformed splits and shadows now (the server checks them against the models)."""
    from modelport.errors import ModelportError
    from modelport.server.routing import parse_shadows, parse_splits

    try:
        lines = list(routes)
        if routes_file is not None:
            lines += routes_file.read_text().splitlines()
        parse_splits(lines)
        parse_shadows(shadows)
    except (ModelportError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path), default="models")
@click.option(
    "--host",
    default=ServerConfig.host,
    show_default=True,
    help="Address to listen on; beyond loopback a token is required.",
)
@click.option("--port", default=ServerConfig.port, show_default=True, type=int)
@click.option(
    "--grpc-port",
    default=ServerConfig.grpc_port,
    type=int,
    help="Also serve the Open Inference Protocol over gRPC on this port, on the same host "
    "(needs modelport[grpc]).",
)
@click.option(
    "--workers",
    default=ServerConfig.workers,
    show_default=True,
    type=int,
    help="Processes on the same port, each with its own model instances.",
)
@click.option(
    "--token",
    envvar="MODELPORT_TOKEN",
    help="Access token clients must send as 'Authorization: Bearer ...' (env MODELPORT_TOKEN).",
)
@click.option(
    "--token-file",
    envvar="MODELPORT_TOKEN_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the access token from this file (env MODELPORT_TOKEN_FILE).",
)
@click.option("--no-auth", is_flag=True, help="Allow listening beyond loopback without a token.")
@click.option(
    "--grace-s",
    default=ServerConfig.grace_s,
    show_default=True,
    type=float,
    help="Seconds requests in flight may take to finish at shutdown.",
)
@click.option(
    "--version-policy",
    default=ServerConfig.version_policy,
    show_default=True,
    help="Versions to serve: latest, latest:N, all, specific:1,3.",
)
@click.option(
    "--threads",
    "intra_op_threads",
    default=0,
    type=int,
    help="onnxruntime threads per model instance (0: one per core).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="JSON-lines access log on stdout.",
)
@click.option(
    "--max-batch-size",
    type=int,
    default=None,
    help="Batch every model's requests into calls of up to N rows (overrides the "
    "manifests' batching settings).",
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="With --max-batch-size: how long a batch waits for more rows.",
)
@click.option(
    "--latency-budget-ms",
    type=float,
    default=None,
    help="With --max-batch-size: choose window and batch size from the model's measured cost "
    "to keep p99 within this budget (replaces --max-delay-ms).",
)
@click.option(
    "--cache",
    default=ServerConfig.cache,
    show_default=True,
    help="Prediction cache: memory (per process), off, or a redis://, rediss:// or unix:// "
    "URL shared by all workers and replicas.",
)
@click.option(
    "--cache-ttl-s",
    default=ServerConfig.cache_ttl_s,
    show_default=True,
    type=float,
    help="Seconds a cached prediction stays valid.",
)
@click.option(
    "--cache-namespace",
    default=ServerConfig.cache_namespace,
    show_default=True,
    help="Starts every cache key: deployments sharing a Redis share answers only within one.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate (chain), with --tls-key: REST and gRPC speak TLS only.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert (unencrypted; keep it readable by this user only).",
)
@click.option(
    "--store",
    default=None,
    help="Also serve stored batch predictions from this store (SQLite file or postgresql:// "
    "URL) at /v2/models/NAME/predictions.",
)
@click.option(
    "--max-age", "max_age", multiple=True, metavar="[MODEL=]AGE",
    help="With --store: stored predictions older than this are stale (24h; fraud=1h).",
)  # fmt: skip
@click.option(
    "--write-back",
    is_flag=True,
    help="With --store: store predictions computed live for stale or missing keys.",
)
@click.option(
    "--web",
    is_flag=True,
    help="Also serve each ONNX model's browser bundle at /web/NAME/ (the page, modelport.js, "
    "onnxruntime-web, the model) and take edge telemetry at /v2/edge/telemetry.",
)
@click.option(
    "--web-webgpu",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="ONNXRUNTIME_WEB",
    help="With --web: the bundles run on WebGPU where the browser has it, with the WebGPU "
    "build of this installed onnxruntime-web (npm install onnxruntime-web@VERSION).",
)
@click.option(
    "--log-predictions",
    "prediction_log",
    default=None,
    metavar="URL",
    help="Keep a sample of requests (inputs, outputs, version, latency, request id) in this "
    "SQLite file or postgresql:// URL, for audits and 'modelport monitor'.",
)
@click.option(
    "--sample",
    default=PredictionLogConfig.sample,
    show_default=True,
    type=float,
    help="With --log-predictions: the share of requests kept.",
)
@click.option(
    "--log-inputs",
    type=click.Choice(["full", "hash"]),
    default=PredictionLogConfig.inputs,
    show_default=True,
    help="With --log-predictions: keep inputs whole, or only a sha256 of each request's.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    metavar="URL",
    help="Send OpenTelemetry traces of requests to this OTLP/HTTP collector, e.g. "
    "http://127.0.0.1:4318 (needs modelport[otel]).",
)
@click.option(
    "--http",
    type=click.Choice(["modelport", "uvicorn"]),
    default=ServerConfig.http,
    envvar="MODELPORT_HTTP",
    show_default=True,
    help="HTTP/1.1 implementation: modelport's own (faster per request) or uvicorn's "
    "(env MODELPORT_HTTP).",
)
@_rollout_options
@ray_options
@_limit_options
@TRUST_OPTION
@TRUST_CODE_OPTION
def serve(
    source: Path, host: str, port: int, grpc_port: int | None, workers: int, token: str | None,
    token_file: Path | None, no_auth: bool, grace_s: float, version_policy: str,
    intra_op_threads: int, access_log: bool, trust_pickle: bool, max_batch_size: int | None,
    max_delay_ms: float, latency_budget_ms: float | None, cache: str, cache_ttl_s: float,
    store: str | None, max_age: tuple[str, ...], write_back: bool, http: str, trust_code: bool,
    cache_namespace: str, tls_cert: Path | None, tls_key: Path | None, web: bool,
    web_webgpu: Path | None,
    prediction_log: str | None, sample: float, log_inputs: str, otlp_endpoint: str | None,
    watch: bool, watch_interval_s: float, control: bool, control_token: str | None,
    control_token_file: Path | None, routes: tuple[str, ...], routes_file: Path | None,
    shadows: tuple[str, ...], ray: bool, **limits: Any,
) -> None:  # fmt: skip
    """Serve a model repository (or one model) over the Open Inference Protocol."""
    from modelport.caching import open_cache
    from modelport.server.lifecycle import serve as run_server

    on_ray = ray_config(click.get_current_context(), {"ray": ray, **limits})
    for name in ("ray_address", "replicas", "min_replicas", "max_replicas",
                 "target_ongoing_requests"):  # fmt: skip
        limits.pop(name)
    if token_file is not None:
        token = token_file.read_text().strip()
    if control_token_file is not None:
        control_token = control_token_file.read_text().strip()
    try:
        _check_rollout(source, routes, routes_file, shadows)
        if control and workers > 1:
            raise ValueError(
                "--control needs --workers 1: a control call would reach one worker only "
                "(use --watch to have every worker follow the repository)"
            )
        VersionPolicy.parse(version_policy)  # fail now, not in every worker
        if (max_age or write_back) and store is None:
            raise ValueError("--max-age and --write-back need --store")
        logging_asked = (sample, log_inputs) != (PredictionLogConfig.sample, "full")
        if logging_asked and prediction_log is None:
            raise ValueError("--sample and --log-inputs need --log-predictions")
        if max_age:
            from modelport.batch.freshness import MaxAge

            MaxAge.parse(max_age)
        open_cache(cache, cache_ttl_s)  # the judge of what --cache accepts; connects to nothing
        config = ServerConfig(
            host=host, port=port, grpc_port=grpc_port, workers=workers, token=token or None,
            no_auth=no_auth,
            grace_s=grace_s, version_policy=version_policy, limits=ServerLimits(**limits),
            runtime=RuntimeConfig(intra_op_threads=intra_op_threads), trust_pickle=trust_pickle,
            trust_code=trust_code,
            cache=cache, cache_ttl_s=cache_ttl_s, http=http, cache_namespace=cache_namespace,
            web=web, web_webgpu=None if web_webgpu is None else str(web_webgpu.resolve()),
            tls_cert=None if tls_cert is None else str(tls_cert.resolve()),
            tls_key=None if tls_key is None else str(tls_key.resolve()),
            watch=watch, watch_interval_s=watch_interval_s, control=control,
            control_token=control_token or None, routes=routes, shadows=shadows,
            routes_file=None if routes_file is None else str(routes_file.resolve()),
            lookups=None if store is None else LookupConfig(store, max_age, write_back),
            otlp_endpoint=otlp_endpoint,
            prediction_log=None if prediction_log is None else PredictionLogConfig(
                prediction_log, sample=sample, inputs=log_inputs
            ),
            batching=None if max_batch_size is None else BatchingConfig(
                max_batch_size=max_batch_size, max_delay_s=max_delay_ms / 1000,
                latency_budget_s=None if latency_budget_ms is None else latency_budget_ms / 1000,
            ),
        )  # fmt: skip
        if web_webgpu is not None and not web:
            raise ValueError("--web-webgpu goes with --web")
        if web:
            from modelport.server.web import WebBundles

            WebBundles(source, config)  # a repository, or a clear error now
    except (ValueError, ModelNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    # Read: nothing the server starts (workers, the models' own processes) inherits it.
    os.environ.pop("MODELPORT_TOKEN", None)
    os.environ.pop("MODELPORT_CONTROL_TOKEN", None)
    if on_ray is not None:
        from modelport.rayserve import serve_on_ray

        serve_on_ray(source, config, on_ray, access_log=access_log)
        return
    run_server(source, config, access_log=access_log)
