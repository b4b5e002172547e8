"""The models a server serves: every version its policy keeps, each with its own runner."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelport.config import (
    BatchingConfig,
    InputLimits,
    LoadOptions,
    RuntimeConfig,
    ServerConfig,
)
from modelport.cpus import CpuBudget, cpu_budget
from modelport.errors import ModelNotFoundError
from modelport.manifest import MANIFEST, artifacts_digest, hash_artifacts, read_manifest, sha256
from modelport.model import Model
from modelport.repository import Repository, VersionPolicy, check_name, is_model_folder, load
from modelport.server import metrics
from modelport.server.runner import Runner, batchable
from modelport.server.warmup import warm_up

log = logging.getLogger("modelport.server")


@dataclass
class Served:
    """One loaded model version."""

    name: str
    version: int
    model: Model
    runner: Runner
    cacheable: bool = True  # a manifest's "serving": {"cache": false} opts a model out
    digest: str = ""  # sha256 of its artifacts: cache keys tell other weights of it apart
    users: int = 0  # requests admitted to it and not yet answered: a retired one drains them
    label: str = field(init=False)  # the version as text, as logs and metrics show it
    measured: metrics.ModelMetrics = field(init=False, repr=False)  # looked up once
    traced: dict[str, str] = field(init=False, repr=False)  # its spans' attributes
    guarded: bool = field(init=False)  # its manifest names a fallback (server/fallback.py)

    def __post_init__(self) -> None:
        self.label = str(self.version)
        self.guarded = "fallback" in (self.model.metadata.get("serving") or {})
        self.measured = metrics.for_model(self.name, self.label)
        self.traced = {"modelport.model": self.name, "modelport.version": self.label}


class Registry:
    """Loaded model versions by name; lookups raise ModelNotFoundError with what exists."""

    def __init__(self, served: list[Served], defaults: dict[str, int] | None = None) -> None:
        """``defaults``: the version a request naming none gets, by model (the newest served
        when not given: a shadow candidate is served but is not the default)."""
        self._models: dict[str, dict[int, Served]] = {}
        for item in served:
            self._models.setdefault(item.name, {})[item.version] = item
        defaults = defaults or {}
        self._latest = {
            name: versions[defaults.get(name, max(versions))]
            for name, versions in self._models.items()
        }

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[Served]:
        return [served for versions in self._models.values() for served in versions.values()]

    def find(self, name: str, version: int) -> Served | None:
        """The served version, or None (no error: routing falls back to the latest)."""
        return self._models.get(name, {}).get(version)

    def replace(
        self, name: str, versions: dict[int, Served], default: int | None = None
    ) -> list[Served]:
        """Serve exactly ``versions`` of ``name`` from now on (none: stop serving it), the
        ``default`` one (the newest when None) to requests that name none; returns the
        versions it no longer serves, for the caller to drain and close.

        On the event loop, between two requests: a request admitted before sees the old set,
        every later one the new, and none sees a mix.
        """
        before = self._models.get(name, {})
        if versions:
            self._models[name] = dict(versions)
            self._latest[name] = versions[default if default in versions else max(versions)]
        else:
            self._models.pop(name, None)
            self._latest.pop(name, None)
        return [served for v, served in before.items() if versions.get(v) is not served]

    def versions(self, name: str) -> list[int]:
        return sorted(self._lookup(name))

    def get(self, name: str, version: int | None = None) -> Served:
        if version is None:
            latest = self._latest.get(name)
            if latest is not None:
                return latest
        versions = self._lookup(name)
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} being served; served: "
                f"{', '.join(map(str, sorted(versions)))}"
            )
        return versions[version]

    def _lookup(self, name: str) -> dict[int, Served]:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFoundError(
                f"no model named {name!r} is served; served: {', '.join(self.names()) or '-'}"
            )
        return versions

    def close(self) -> None:
        """Unload every model (blocking: inference threads finish their calls)."""
        for versions in self._models.values():
            for served in versions.values():
                served.runner.close()

    async def stop_batching(self) -> None:
        """Stop the batchers' tasks and timers, on the loop that runs them."""
        for versions in self._models.values():
            for served in versions.values():
                await served.runner.stop_batching()


def _single_model(path: Path) -> bool:
    return path.is_file() or is_model_folder(path)


def load_options(config: ServerConfig) -> LoadOptions:
    return LoadOptions(
        runtime=config.runtime,
        limits=InputLimits(max_elements=config.limits.max_elements),
        trust_pickle=config.trust_pickle,
        trust_code=config.trust_code,
    )


def load_registry(source: Path, config: ServerConfig) -> Registry:
    """Load a repository (every version the policy keeps) or a single model file or folder,
    each warmed up (see warmup.py)."""
    if not source.exists():
        raise ModelNotFoundError(f"{source} does not exist: pass a model repository or model")
    served: list[Served] = []
    budget = cpu_budget()
    chosen: set[int] = set()
    try:
        if _single_model(source):
            runtime = threads_for(config, 1, budget)
            chosen.add(runtime.intra_op_threads)
            options = dataclasses.replace(load_options(config), runtime=runtime)
            model = load(source, options=options)
            name = check_name(model.name)
            served.append(_serve(name, model.version or 1, model, config, _digest(source, model)))
            warm_up(name, model, served[-1].runner)
        else:
            repo = Repository.open(source)
            for name, versions in repo.select(VersionPolicy.parse(config.version_policy)).items():
                served.extend(
                    serve_version(repo, name, version, config, budget, chosen)
                    for version in versions
                )
    except BaseException:
        for item in served:
            item.runner.close()
        raise
    log_threads(budget, config, chosen)
    return Registry(served)


def serve_version(
    repo: Repository, name: str, version: int, config: ServerConfig,
    budget: CpuBudget | None = None, chosen: set[int] | None = None,
) -> Served:  # fmt: skip
    """Load one version of a repository (sha256, requirements), then warm it up; ``chosen``
    collects the thread counts picked, for the log."""
    manifest = repo.manifest(name, version)
    instances = int(manifest.serving.get("instances", 1) or 1)
    runtime = threads_for(config, instances, budget or cpu_budget())
    if chosen is not None:
        chosen.add(runtime.intra_op_threads)
    options = dataclasses.replace(load_options(config), runtime=runtime)
    model = repo.load(name, version=version, options=options)
    served = _serve(name, version, model, config, artifacts_digest(manifest.artifacts))
    try:
        warm_up(f"{name}:{version}", model, served.runner)
    except BaseException:
        served.runner.close()
        raise
    return served


def log_threads(budget: CpuBudget, config: ServerConfig, chosen: set[int]) -> None:
    """Say which thread counts the start chose, and why (the CPUs it may use)."""
    if config.runtime.intra_op_threads:
        why = "as --threads says"
    else:
        why = f"for {config.workers} worker(s) sharing {budget.reason()}"
    threads = ", ".join(str(n or "onnxruntime's choice") for n in sorted(chosen)) or "-"
    log.info("onnxruntime threads per model instance: %s (%s)", threads, why)


def threads_for(config: ServerConfig, instances: int, budget: CpuBudget) -> RuntimeConfig:
    """Intra-op threads per instance so that workers x instances x threads fits the CPUs this
    process may use (its affinity mask and cgroup quota, not the machine's cores).

    An explicit --threads is kept as given; one instance in one worker with every core of the
    machine leaves the choice to onnxruntime (a thread per physical core).
    """
    if config.runtime.intra_op_threads:
        return config.runtime
    if instances * config.workers <= 1 and budget.count == budget.machine:
        return config.runtime
    share = max(1, budget.count // (instances * config.workers))
    return dataclasses.replace(config.runtime, intra_op_threads=share)


def _digest(source: Path, model: Model) -> str:
    """The artifacts' digest of a single model: a file, a version or model folder, or code."""
    if source.is_file():
        return sha256(source)
    for folder in (source, source / str(model.version)):
        if (folder / MANIFEST).is_file():  # verified against the files when loaded
            return artifacts_digest(read_manifest(folder).artifacts)
    files = hash_artifacts(source)  # a code folder; Python's own bytecode cache aside
    return artifacts_digest({p: d for p, d in files.items() if "__pycache__" not in p})


def _serve(name: str, version: int, model: Model, config: ServerConfig, digest: str = "") -> Served:
    serving = model.metadata.get("serving", {})
    instances = int(serving.get("instances", 1) or 1)
    batching = config.batching
    if batching is None and serving.get("batching"):
        batching = BatchingConfig.from_manifest(serving["batching"])
    if batching is not None and not batchable(model):
        log.warning("%s:%d is not batched: its tensors have no dynamic first dim", name, version)
        batching = None
    on_batch = metrics.for_model(name, str(version)).executed
    runner = Runner(model, config.limits.max_queue, instances, batching, on_batch)
    return Served(name, version, model, runner, bool(serving.get("cache", True)), digest)
