"""A Compose stack for an image of ``modelport build``: the on-ramp before Kubernetes.

    write_compose(models, ComposeConfig(image="digits:2", replicas=3), Path("stack"))

``compose.yaml`` runs ``replicas`` copies of the image (``model-1`` ... ``model-N``, each
addressable, so the load balancer health-checks and Prometheus scrapes every one) behind
HAProxy, which checks ``/v2/health/ready`` every second and retries a request on another
replica when a connection fails or a draining replica answers 503. Redis is the prediction
cache every replica shares; Prometheus scrapes each replica's ``/metrics`` with the token;
with ``postgres`` PostgreSQL stores predictions (``serve --store``). The token is a Compose
secret (``secrets/token``, made at random unless given), mounted at /run/secrets. Every
service restarts unless stopped. ``haproxy.cfg`` and ``prometheus.yml`` lie beside it.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.deploy.folders import new_folder
from modelport.deploy.image import GRPC_PORT, REST_PORT, TOKEN_FILE, ImageConfig, serve_command
from modelport.deploy.manifests import dump_yaml
from modelport.deploy.models import ShippedModel
from modelport.errors import DeployError


@dataclass(frozen=True)
class ComposeConfig:
    """The stack: its image, replicas, published ports and the images of its helpers."""

    image: str
    replicas: int = 3
    port: int = 8000  # published: REST through the load balancer
    grpc_port: int = 8001
    prometheus_port: int = 9090
    postgres: bool = False
    token: str | None = None  # None: a random one, in secrets/token
    lb_image: str = "docker.io/library/haproxy:2.8"
    redis_image: str = "docker.io/library/redis:7"
    prometheus_image: str = "docker.io/prom/prometheus:v2.53.0"
    postgres_image: str = "docker.io/library/postgres:16"

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 64:
            raise DeployError("--replicas must be within 1-64")


def replica_names(config: ComposeConfig) -> list[str]:
    return [f"model-{i}" for i in range(1, config.replicas + 1)]


def haproxy_cfg(config: ComposeConfig) -> str:
    names = replica_names(config)
    rest = "\n".join(f"  server {n} {n}:{REST_PORT} check" for n in names)
    grpc = "\n".join(f"  server {n} {n}:{GRPC_PORT} check port {REST_PORT}" for n in names)
    return f"""\
# modelport deploy compose: every replica checked on /v2/health/ready each second; a request
# whose connection fails, or that a draining replica answers 503, is sent to another one.
global
  # maxconn: HAProxy sizes it to the file descriptors it may open

defaults
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-request 30s
  default-server inter 1s fall 2 rise 2
  option httpchk GET /v2/health/ready
  http-check expect status 200

resolvers compose
  parse-resolv-conf
  hold valid 1s

frontend rest
  mode http
  bind :{REST_PORT}
  default_backend replicas

backend replicas
  mode http
  balance roundrobin
  option http-buffer-request
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 503
{rest} resolvers compose init-addr last,libc,none

frontend grpc
  mode tcp
  bind :{GRPC_PORT}
  default_backend replicas-grpc

backend replicas-grpc
  mode tcp
  balance leastconn
{grpc} resolvers compose init-addr last,libc,none
"""


def prometheus_yml(config: ComposeConfig) -> str:
    targets = ", ".join(f'"{n}:{REST_PORT}"' for n in replica_names(config))
    return f"""\
# modelport deploy compose: every replica, scraped with the token.
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: modelport
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {TOKEN_FILE}
    static_configs:
      - targets: [{targets}]
"""


def compose(models: list[ShippedModel], config: ComposeConfig) -> dict[str, Any]:
    args = serve_command(models, ImageConfig(tag=config.image))
    args += ["--cache", "redis://redis:6379/0"]
    if config.postgres:
        args += ["--store", "postgresql://modelport@postgres:5432/modelport"]
    replica: dict[str, Any] = {
        "image": config.image,
        "command": args,
        "environment": {"MODELPORT_TOKEN_FILE": TOKEN_FILE},
        "secrets": ["modelport_token"],
        "depends_on": ["redis", *(["postgres"] if config.postgres else [])],
        "restart": "unless-stopped",
        "stop_grace_period": "35s",
    }
    services: dict[str, Any] = {name: copy.deepcopy(replica) for name in replica_names(config)}
    services["lb"] = {
        "image": config.lb_image,
        "entrypoint": ["haproxy"],
        "command": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
        "volumes": ["./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro,z"],
        "ports": [f"{config.port}:{REST_PORT}", f"{config.grpc_port}:{GRPC_PORT}"],
        "depends_on": replica_names(config),
        "restart": "unless-stopped",
    }
    services["redis"] = {
        "image": config.redis_image,
        "entrypoint": ["redis-server"],
        "command": ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
        "restart": "unless-stopped",
    }
    services["prometheus"] = {
        "image": config.prometheus_image,
        "entrypoint": ["prometheus"],
        "command": ["--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/tmp/prometheus"],
        "volumes": ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro,z"],
        "secrets": ["modelport_token"],
        "ports": [f"{config.prometheus_port}:9090"],
        "restart": "unless-stopped",
    }  # fmt: skip
    if config.postgres:
        services["postgres"] = {
            "image": config.postgres_image,
            "environment": {
                "POSTGRES_USER": "modelport", "POSTGRES_DB": "modelport",
                "POSTGRES_HOST_AUTH_METHOD": "trust",  # reachable only on the stack's network
            },
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "restart": "unless-stopped",
        }  # fmt: skip
    stack: dict[str, Any] = {
        "services": services,
        "secrets": {"modelport_token": {"file": "./secrets/token"}},
    }
    if config.postgres:
        stack["volumes"] = {"postgres-data": {}}
    return stack


def write_compose(
    models: list[ShippedModel], config: ComposeConfig, output: Path, force: bool = False
) -> Path:
    """Write ``compose.yaml``, ``haproxy.cfg``, ``prometheus.yml`` and ``secrets/token``."""
    header = (
        f"# modelport deploy compose: {', '.join(m.ref for m in models)} in {config.image}, "
        f"{config.replicas} replicas.\n# Start: podman-compose up -d (or docker compose up -d)\n"
    )
    with new_folder(output, force) as folder:
        (folder / "compose.yaml").write_text(header + dump_yaml([compose(models, config)]))
        (folder / "haproxy.cfg").write_text(haproxy_cfg(config))
        (folder / "prometheus.yml").write_text(prometheus_yml(config))
        (folder / "secrets").mkdir(mode=0o700)
        token = folder / "secrets" / "token"
        token.touch(mode=0o644)  # read by the replicas' user (10001) through the secret mount
        token.write_text((config.token or secrets.token_urlsafe(32)) + "\n")
    return output
