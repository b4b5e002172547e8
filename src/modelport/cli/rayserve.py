"""Ray Serve from the command line: ``serve --ray``'s options and ``deploy ray``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from modelport.config import BatchingConfig, RuntimeConfig, ServerConfig

# serve's options that mean nothing on Ray Serve: its proxy owns the port and the processes,
# and each replica serves one model, so nothing may change the set of models while serving.
NOT_ON_RAY = (
    "workers", "grpc_port", "tls_cert", "tls_key", "http", "web", "watch", "control",
    "routes", "routes_file", "shadows", "store", "prediction_log",
)  # fmt: skip
SCALING = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests")


def ray_options(function: Any) -> Any:
    """serve's --ray, --ray-address and the scaling options (one each, per Scaling field)."""
    options = [
        click.option("--ray", is_flag=True, help="Serve on Ray Serve: one application per "
                     "model, each replica running this service (needs modelport[ray])."),
        click.option("--ray-address", metavar="HOST:PORT", help="With --ray: join the running "
                     "cluster there (its GCS) instead of starting a local one."),
        click.option("--replicas", type=click.IntRange(min=1), help="With --ray: replicas of "
                     "every model (default: the manifest's serving.ray, else 1)."),
        click.option("--min-replicas", type=click.IntRange(min=0), help="With --ray and "
                     "--max-replicas: autoscale every model between these."),
        click.option("--max-replicas", type=click.IntRange(min=1), help="With --ray: the "
                     "autoscaling ceiling."),
        click.option("--target-ongoing-requests", type=click.FloatRange(min=0, min_open=True),
                     help="With autoscaling: requests in each replica it aims for (2)."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def ray_config(ctx: click.Context, params: dict[str, Any]) -> Any:
    """The RayConfig of serve's flags, or None without --ray; a usage error names the flag
    that does not fit."""
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    given = [
        name for name in (*NOT_ON_RAY, "ray_address", *SCALING)
        if ctx.get_parameter_source(name) in typed
    ]  # fmt: skip
    if not params["ray"]:
        ray_only = [name for name in given if name == "ray_address" or name in SCALING]
        if ray_only:
            raise click.UsageError(f"{_flag(ray_only[0])} needs --ray")
        return None
    refused = [name for name in given if name in NOT_ON_RAY]
    if refused:
        raise click.UsageError(f"{_flag(refused[0])} cannot be used with --ray")
    from modelport.rayserve import RayConfig

    try:
        return RayConfig(address=params["ray_address"], scaling=scaling(params))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def scaling(params: dict[str, Any]) -> Any:
    """The Scaling the flags ask for, or None (each manifest decides)."""
    from modelport.rayserve import Scaling

    replicas, low, high = params["replicas"], params["min_replicas"], params["max_replicas"]
    target = params["target_ongoing_requests"]
    if replicas is not None and (low is not None or high is not None):
        raise click.UsageError("--replicas and --min-replicas/--max-replicas exclude each other")
    if (low is None) != (high is None):
        raise click.UsageError(f"{'--min-replicas' if high is None else '--max-replicas'} "
                               "needs the other (autoscaling runs between both)")  # fmt: skip
    if target is not None and high is None:
        raise click.UsageError("--target-ongoing-requests needs --min-replicas/--max-replicas")
    if replicas is None and high is None:
        return None
    if high is None:
        return Scaling(replicas=replicas)
    try:
        return Scaling(min_replicas=low, max_replicas=high, target_ongoing_requests=target or 2.0)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _flag(name: str) -> str:
    return {"shadows": "--shadow", "routes": "--route", "prediction_log": "--log-predictions",
            "store": "--store"}.get(name, f"--{name.replace('_', '-')}")  # fmt: skip


@click.command("ray")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default="ray", show_default=True)
@click.option("--cluster-path", help="Where the cluster's nodes find SOURCE (a volume mounted "
              "in every Ray pod); default: its absolute path here.")  # fmt: skip
@click.option("--host", default="0.0.0.0", show_default=True, help="Ray Serve's proxy.")
@click.option("--port", type=int, default=8000, show_default=True, help="Ray Serve's proxy.")
@click.option("--version-policy", default=ServerConfig.version_policy, show_default=True)
@click.option("--threads", "intra_op_threads", type=int, default=0,
              help="onnxruntime threads per replica (0: the CPUs Ray gives it).")  # fmt: skip
@click.option("--max-batch-size", type=int, help="Batch every model (overrides manifests).")
@click.option("--max-delay-ms", type=float, default=0.0, show_default=True)
@click.option("--cache", default=ServerConfig.cache, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1))
@click.option("--min-replicas", type=click.IntRange(min=0))
@click.option("--max-replicas", type=click.IntRange(min=1))
@click.option("--target-ongoing-requests", type=click.FloatRange(min=0, min_open=True))
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def deploy_ray(
    source: Path, output: Path, cluster_path: str | None, host: str, port: int,
    version_policy: str, intra_op_threads: int, max_batch_size: int | None,
    max_delay_ms: float, cache: str, force: bool, **flags: Any,
) -> None:  # fmt: skip
    """A Ray Serve config file (serve deploy / serve run, KubeRay's serveConfigV2): one
    application per model, each replica running modelport's service."""
    import yaml

    from modelport.rayserve import plan_apps, serve_config

    try:
        config = ServerConfig(
            version_policy=version_policy, cache=cache,
            runtime=RuntimeConfig(intra_op_threads=intra_op_threads),
            batching=None if max_batch_size is None else BatchingConfig(
                max_batch_size=max_batch_size, max_delay_s=max_delay_ms / 1000),
        )  # fmt: skip
        apps = plan_apps(source, config, scaling(flags), cluster_path)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    path = output / "serve.yaml"
    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; pass --force to replace it")
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serve_config(apps, host, port), sort_keys=False))
    click.echo(f"wrote {path}: {', '.join(app.name for app in apps[:-1])} and the front")
