"""What runs on Ray Serve, as data: one application per model, plus the front.

    apps = plan_apps(Path("models"), ServerConfig(), Scaling(replicas=2))
    config = serve_config(apps, host="0.0.0.0", port=8000)  # a ``serve deploy`` file's dict

Nothing here imports Ray: ``modelport deploy ray`` writes the file on a machine without it, and
``modelport serve --ray`` deploys the very same entries (see ``cluster.py``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.config import LoadOptions, ServerConfig
from modelport.repository import Repository, VersionPolicy, is_model_folder, load

MODEL_APP = "modelport.rayserve.deployments:model_app"
FRONT_APP = "modelport.rayserve.deployments:front_app"
FRONT = "_modelport"  # the front's application: no model name starts with '_'


@dataclass(frozen=True)
class Scaling:
    """Replicas of one model: ``replicas`` of them, or autoscaling between ``min_replicas``
    and ``max_replicas`` to keep about ``target_ongoing_requests`` in each.

    In a manifest: ``"serving": {"ray": {"min_replicas": 1, "max_replicas": 4}}``. Each
    replica reserves ``num_cpus`` of Ray's CPUs and runs that many onnxruntime threads (unless
    --threads says otherwise); it takes up to ``max_ongoing_requests`` at once, enough for the
    engine's batching to fill its batches.
    """

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    num_cpus: float = 1.0
    max_ongoing_requests: int = 128
    upscale_delay_s: float = 30.0  # Ray Serve's defaults, as its autoscaling_config names them
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        if self.autoscaling and not 0 <= (self.min_replicas or 0) <= (self.max_replicas or 0):
            raise ValueError("min_replicas must be >= 0 and <= max_replicas")
        if self.autoscaling and (self.max_replicas or 0) < 1:
            raise ValueError("max_replicas must be >= 1")
        if self.target_ongoing_requests <= 0 or self.num_cpus < 0:
            raise ValueError("target_ongoing_requests must be > 0 and num_cpus >= 0")
        if self.max_ongoing_requests < 1:
            raise ValueError("max_ongoing_requests must be >= 1")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @classmethod
    def from_manifest(cls, settings: Mapping[str, Any]) -> Scaling:
        """From a manifest's ``serving.ray``."""
        if not isinstance(settings, Mapping):
            raise ValueError("the ray serving setting must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown ray setting {unknown[0]!r}; expected {', '.join(known)}")
        return cls(**settings)

    def deployment(self) -> dict[str, Any]:
        """The options of a Serve deployment (a config file's ``deployments`` entry)."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus},
        }
        if not self.autoscaling:
            return {"num_replicas": self.replicas, **options}
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s,
            },
            **options,
        }  # fmt: skip


@dataclass(frozen=True)
class App:
    """One Serve application: a model's (at /v2/models/NAME) or the front (at /)."""

    name: str
    route_prefix: str
    import_path: str
    args: dict[str, Any]
    deployment: dict[str, Any]  # its one deployment's entry, "name" included

    def entry(self) -> dict[str, Any]:
        """This application as a ``serve deploy`` config file lists it."""
        return {
            "name": self.name, "route_prefix": self.route_prefix,
            "import_path": self.import_path, "args": self.args,
            "deployments": [self.deployment],
        }  # fmt: skip


def plan_apps(
    source: Path, config: ServerConfig, scaling: Scaling | None = None,
    cluster_source: str | None = None,
) -> list[App]:  # fmt: skip
    """One application per model of ``source`` (a repository, or one model), then the front.

    ``scaling`` (from flags) applies to every model; without it each model's manifest decides
    (``serving.ray``), else one replica. ``cluster_source`` is where the cluster's nodes find
    ``source`` (default: its absolute path here).
    """
    where = cluster_source or str(source.resolve())
    settings = config_settings(config)
    apps = []
    for name, manifest_scaling in _models(source, config):
        chosen = scaling or manifest_scaling or Scaling()
        apps.append(App(
            name=name, route_prefix=f"/v2/models/{name}", import_path=MODEL_APP,
            args={"source": where, "model": name, "settings": _threads(config, chosen)},
            deployment={"name": name, **chosen.deployment()},
        ))  # fmt: skip
    front = Scaling(num_cpus=0)  # answers health and forwards /v1 calls: next to no CPU
    apps.append(App(
        name=FRONT, route_prefix="/", import_path=FRONT_APP,
        args={"models": [app.name for app in apps], "settings": settings},
        deployment={"name": "front", **front.deployment()},
    ))  # fmt: skip
    return apps


def serve_config(apps: list[App], host: str, port: int) -> dict[str, Any]:
    """A ``serve deploy`` / ``serve run`` config file (Ray's ServeDeploySchema) as a dict."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [app.entry() for app in apps],
    }


def _threads(config: ServerConfig, scaling: Scaling) -> dict[str, Any]:
    """A replica's settings: as many onnxruntime threads as the CPUs Ray reserves for it (its
    share of the node, not the node's cores), unless --threads chose."""
    if config.runtime.intra_op_threads:
        return config_settings(config)
    runtime = dataclasses.replace(config.runtime, intra_op_threads=max(1, int(scaling.num_cpus)))
    return config_settings(dataclasses.replace(config, runtime=runtime))


def _models(source: Path, config: ServerConfig) -> list[tuple[str, Scaling | None]]:
    """The models ``source`` serves, each with its manifest's scaling (latest version's)."""
    if source.is_file() or is_model_folder(source):
        options = LoadOptions(trust_pickle=config.trust_pickle, trust_code=config.trust_code)
        model = load(source, options=options)
        try:
            serving = model.metadata.get("serving") or {}
            return [(model.name, _scaling(serving, model.name))]
        finally:
            model.close()
    repo = Repository.open(source)
    models = []
    for name, versions in repo.select(VersionPolicy.parse(config.version_policy)).items():
        if versions:
            serving = repo.manifest(name, max(versions)).serving
            models.append((name, _scaling(serving, name)))
    return models


def _scaling(serving: Mapping[str, Any], name: str) -> Scaling | None:
    if "ray" not in serving:
        return None
    try:
        return Scaling.from_manifest(serving["ray"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: the manifest's serving.ray is wrong: {exc}") from None


def config_settings(config: ServerConfig) -> dict[str, Any]:
    """The settings of ``config`` that differ from the defaults, as plain JSON data."""
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = json.loads(json.dumps(dataclasses.asdict(ServerConfig())))
    return {name: value for name, value in plain.items() if value != defaults[name]}
