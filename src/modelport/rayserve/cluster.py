"""Running the applications on a Ray cluster: a local one started on demand, or one that
answers at an address. Ours are removed at exit; a cluster we started is stopped, one we
joined is left as it was."""

from __future__ import annotations

import logging
import logging.config
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from modelport.config import ServerConfig, url_host
from modelport.cpus import cpu_budget
from modelport.errors import DeployError, require
from modelport.ray_env import loopback
from modelport.rayserve.plan import App, Scaling, plan_apps

log = logging.getLogger("modelport.server")


@dataclass(frozen=True)
class RayConfig:
    """Where the applications run: ``address`` (HOST:PORT of a running cluster's GCS) or a
    local cluster started for them; ``scaling`` overrides every model's manifest."""

    address: str | None = None
    scaling: Scaling | None = None
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.address is not None:
            split_address(self.address)


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:6379`` for IPv6) as a host and a port; ValueError if it is not."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    return host, int(port)


def serve_on_ray(
    source: Path, config: ServerConfig, ray_config: RayConfig, access_log: bool = True
) -> None:
    """Serve ``source`` as Ray Serve applications until SIGINT or SIGTERM (blocking)."""
    from modelport.server.lifecycle import check_security, log_config

    logging.config.dictConfig(log_config(access_log))
    loopback()
    require("ray.serve", "ray")
    check_security(config)
    apps = plan_apps(source, config, ray_config.scaling)
    started = connect(ray_config, apps)
    try:
        deploy(apps, config)
        url = f"http://{url_host(config.host)}:{config.port}"
        log.info("serving %s on Ray Serve at %s", ", ".join(a.name for a in apps[:-1]), url)
        _wait_for_signal()
    finally:
        undeploy(apps, started)


def connect(ray_config: RayConfig, apps: list[App]) -> bool:
    """Join the cluster at the address, or start a local one; True when started here."""
    loopback()
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if ray_config.address is not None:
        _check_answers(ray_config.address, ray_config.connect_timeout_s)
        try:
            ray.init(address=ray_config.address, **quiet)
        except Exception as exc:  # Ray's own words, on one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"could not join the Ray cluster at {ray_config.address}: {first}"
            raise DeployError(message) from None
        return False
    # Logical CPUs beyond the cores: every replica reserves its num_cpus, and on a small
    # machine the replicas would otherwise wait for CPUs that a busy core can still share.
    needed = sum(_most_replicas(app) * _cpus(app) for app in apps)
    ray.init(
        address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
        num_cpus=max(int(needed) + 1, 4 * cpu_budget().count),
        object_store_memory=256 * 2**20, **quiet,
    )  # fmt: skip
    return True


def deploy(apps: list[App], config: ServerConfig) -> dict[str, Any]:
    """Run the applications (their replicas loaded) and return a handle to each by name."""
    from ray import serve

    from modelport.rayserve.deployments import bind

    serve.start(http_options={"host": config.host, "port": config.port})
    if not apps:  # Serve's proxy alone, for applications to come
        return {}
    targets = [serve.RunTarget(target=bind(a), name=a.name, route_prefix=a.route_prefix)
               for a in apps]  # fmt: skip
    try:
        handles = serve.run_many(targets, wait_for_applications_running=True)
    except RuntimeError as exc:  # a replica failed to start: its error is in Serve's logs
        raise DeployError(
            f"Ray Serve could not start the applications: {exc}; the replicas' errors are in "
            "the cluster's logs (serve status, or /tmp/ray/session_latest/logs/serve)"
        ) from None
    return {app.name: handle for app, handle in zip(apps, handles, strict=True)}


def undeploy(apps: list[App], started: bool) -> None:
    """Delete our applications (the front first; up to 30 s) from a cluster we joined, or
    stop the cluster if we started it."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if started:  # all of it goes: no need to take the applications down one by one
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        return
    for app in reversed(apps):
        serve.delete(app.name, _blocking=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(serve.status().applications) & {a.name for a in apps}:
        time.sleep(0.2)


def _check_answers(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` when nothing listens at the address (ray.init would retry
    for a minute or more)."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise DeployError(
            f"no Ray cluster answers at {address} ({reason}): start one there (ray start "
            "--head) or leave out --ray-address to start a local cluster"
        ) from None


def _most_replicas(app: App) -> int:
    scaling = app.deployment.get("autoscaling_config") or {}
    return int(scaling.get("max_replicas", app.deployment.get("num_replicas", 1)))


def _cpus(app: App) -> float:
    return float(app.deployment.get("ray_actor_options", {}).get("num_cpus", 1))


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    log.info("stopping: deleting the applications")
