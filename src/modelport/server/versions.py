"""The versions a repository server serves, kept in step with the repository while it runs.

    versions = Versions(repo_root, config, engine)
    await versions.sync()              # the watcher calls it when the repository changed
    await versions.load("churn")       # the control API; unload("churn"), index()

A new version is loaded in a thread (manifest, sha256, requirements), warmed up (warmup.py),
and only then swapped in, in one step on the event loop (``Registry.replace``): no request
sees a half-made set. A version taken out of service is retired: requests that hold it (see
``Engine.admit``) finish on it, then it unloads. A version that fails to load or warm up never
takes traffic: the model's current versions keep serving, the reason is logged, counted in
``/metrics`` and shown by the index, and that version is tried again only when its files change
(or on an explicit load). Traffic splits and shadows name versions that must be served; they are
checked against the repository, and a bad one is refused while the last good ones stay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from modelport.config import ServerConfig
from modelport.cpus import CpuBudget, cpu_budget
from modelport.errors import (
    ConflictError,
    IntegrityError,
    ManifestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelportError,
    RequirementsError,
    RolloutError,
    UntrustedArtifactError,
    WarmupError,
)
from modelport.repository import Repository, VersionPolicy, check_name
from modelport.server.engine import Engine
from modelport.server.registry import Registry, Served, log_threads, serve_version
from modelport.server.routing import Router, ShadowTarget, Split, parse_shadows, parse_splits
from modelport.server.shadow import Shadows

log = logging.getLogger("modelport.server")

LOADS = Counter(
    "modelport_version_loads_total",
    "Versions loaded while serving, by result: loaded, or why not (integrity, requirements, "
    "warmup, manifest, untrusted, error).",
    ["model", "version", "result"],
)
SWITCHES = Counter(
    "modelport_version_switches_total",
    "Times a model's set of served versions changed while serving.",
    ["model"],
)
RULES = Counter(
    "modelport_rollout_rules_total",
    "Traffic split and shadow configurations applied or refused (routes file reloads).",
    ["result"],
)
_REASONS = (
    (IntegrityError, "integrity"),
    (RequirementsError, "requirements"),
    (WarmupError, "warmup"),
    (ManifestError, "manifest"),
    (UntrustedArtifactError, "untrusted"),
)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """What a folder's files look like now (path, size, mtime): a change means try again."""
    try:
        return tuple(
            (str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and (st := p.stat())
        )
    except OSError:
        return ()


class Versions:
    """Loads, swaps, retires and reports the versions of one repository's models."""

    def __init__(self, source: Path, config: ServerConfig, engine: Engine) -> None:
        self.repo = Repository.open(source)
        self.config = config
        self.engine = engine
        self.policy = VersionPolicy.parse(config.version_policy)
        self.splits: dict[str, Split] = {}
        self.shadow_targets: dict[str, ShadowTarget] = {}
        self.failed: dict[tuple[str, int], tuple[Fingerprint, str]] = {}
        self.unloaded: set[str] = set()  # by the control API: the watcher leaves them alone
        self.on_change: Callable[[], None] = lambda: None  # the doors forget what they built
        self._busy: set[str] = set()  # models being loaded or unloaded now
        self._loading: set[tuple[str, int]] = set()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- rules: traffic splits and shadows ----------------------------------------------------

    def set_rules(self, routes: Iterable[str], shadows: Iterable[str]) -> None:
        """Check and apply splits and shadows (RolloutError: the last good ones stay)."""
        splits, targets = parse_splits(routes), parse_shadows(shadows)
        for split in splits.values():
            for version in split.versions:
                self._check_serveable(split.model, version, "route")
        for target in targets.values():
            self._check_serveable(target.model, target.candidate, "shadow")
            self._check_same_tensors(target)
        self.splits, self.shadow_targets = splits, targets
        self.engine.router = Router(splits) if splits else None
        candidates = {m: t.candidate for m, t in targets.items()}
        running = self.engine.shadows
        if not candidates:
            self.engine.shadows = None
        elif running is None or running.targets != candidates:  # else its counts carry on
            self.engine.shadows = Shadows(
                candidates, lambda: self.engine.registry, self.config.limits.request_timeout_s
            )
        RULES.labels("applied").inc()

    def _check_serveable(self, name: str, version: int, what: str) -> None:
        if name not in self.repo.names():
            raise RolloutError(f"{what} of {name!r}: the repository has no such model")
        if version not in self.repo.versions(name):
            raise RolloutError(
                f"{what} of {name!r}: the repository has no version {version}; it has "
                f"{', '.join(map(str, self.repo.versions(name)))}"
            )
        withdrawn = self.repo.withdrawn(name).get(version)
        if withdrawn is not None:
            raise RolloutError(
                f"{what} of {name!r}: version {version} is withdrawn "
                f"({withdrawn.get('reason') or 'no reason given'})"
            )

    def _check_same_tensors(self, target: ShadowTarget) -> None:
        candidate = self.repo.manifest(target.model, target.candidate).signature
        for version in self._live(target.model, target.candidate):
            live = self.repo.manifest(target.model, version).signature
            if (live.inputs, live.outputs) != (candidate.inputs, candidate.outputs):
                raise RolloutError(
                    f"shadow of {target.model!r}: version {target.candidate} has other inputs "
                    f"or outputs than the live version {version} ({candidate.to_dict()} "
                    f"against {live.to_dict()}); a shadow must answer the same requests"
                )

    # -- what should be served ----------------------------------------------------------------

    def live(self, name: str) -> list[int]:
        """The versions the policy selects (a shadow candidate aside: it is never live)."""
        target = self.shadow_targets.get(name)
        return self._live(name, None if target is None else target.candidate)

    def _live(self, name: str, candidate: int | None) -> list[int]:
        if self.policy.specific:
            return self.policy.select(self.repo.versions(name))
        return self.policy.select([v for v in self.repo.serveable(name) if v != candidate])

    def default(self, name: str, served: Iterable[int]) -> int | None:
        """The version that requests naming none get: the newest live one served."""
        served = list(served)
        live = [v for v in served if v in self.live(name)]
        return max(live) if live else max(served, default=None)

    def wanted(self, name: str) -> list[int]:
        """The versions of ``name`` to serve: the policy's, and those splits and shadows name."""
        if name in self.unloaded or name not in self.repo.names():
            return []
        wanted = set(self.live(name))
        split = self.splits.get(name)
        if split is not None:
            wanted.update(split.versions)
        target = self.shadow_targets.get(name)
        if target is not None:
            wanted.add(target.candidate)
        # A version withdrawn since a split or shadow named it stops too: a split's share of
        # it goes to the default version (Router.pick), its shadow stops.
        gone = set(self.repo.withdrawn(name)) - set(self.live(name))
        return sorted(v for v in wanted if v in self.repo.versions(name) and v not in gone)

    def load_all(self) -> Registry:
        """Every wanted version, loaded and warmed up (at start, in a thread); raises."""
        served: list[Served] = []
        defaults: dict[str, int] = {}
        budget, chosen = cpu_budget(), set[int]()
        try:
            for name in self.repo.names():
                wanted = self.wanted(name)
                served.extend(self._load(name, v, budget, chosen) for v in wanted)
                default = self.default(name, wanted)
                if default is not None:
                    defaults[name] = default
        except BaseException:
            for item in served:
                item.runner.close()
            raise
        log_threads(budget, self.config, chosen)
        return Registry(served, defaults)

    def _load(
        self, name: str, version: int, budget: CpuBudget | None = None,
        chosen: set[int] | None = None,
    ) -> Served:  # fmt: skip
        config = self.config
        target = self.shadow_targets.get(name)
        if (
            target is not None
            and target.candidate == version
            and not config.runtime.intra_op_threads
        ):
            # A shadow takes one onnxruntime thread: a pool per core, spinning between calls,
            # would take CPU from the live versions.
            runtime = dataclasses.replace(config.runtime, intra_op_threads=1)
            config = dataclasses.replace(config, runtime=runtime)
        return serve_version(self.repo, name, version, config, budget, chosen)

    # -- keeping in step ----------------------------------------------------------------------

    async def sync(self, names: Iterable[str] | None = None) -> bool:
        """Bring the served versions of ``names`` (all: None) in step with the repository;
        False when a model was left for later (a control call was loading or unloading it)."""
        registry = self.engine.registry
        if registry is None:
            return False
        if names is None:
            names = set(self.repo.names()) | set(registry.names())
        done = True
        for name in sorted(names):
            if name in self._busy:
                done = False
                continue
            retired, _ = await self._sync_model(name)
            for served in retired:
                task = asyncio.create_task(self._retire(served))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        return done

    async def _sync_model(self, name: str) -> tuple[list[Served], list[str]]:
        """Swap in what ``name`` should serve; the retired versions and the load failures."""
        self._busy.add(name)
        try:
            registry = self.engine.models()
            current = {v: s for v in self._served(registry, name) if (s := registry.find(name, v))}
            wanted = self.wanted(name)
            fresh: dict[int, Served] = {}
            failures: list[str] = []
            for version in wanted:
                if version in current:
                    continue
                seen = fingerprint(self.repo.root / name / str(version))
                prior = self.failed.get((name, version))
                if prior is not None and prior[0] == seen:
                    failures.append(prior[1])
                    continue
                self._loading.add((name, version))
                try:
                    fresh[version] = await asyncio.to_thread(self._load, name, version)
                except Exception as exc:
                    failures.append(self._failed(name, version, seen, exc))
                    continue
                finally:
                    self._loading.discard((name, version))
                self.failed.pop((name, version), None)
                LOADS.labels(name, str(version), "loaded").inc()
            if failures:  # the current versions keep serving beside whatever did load
                after = {**current, **fresh}
            else:
                after = {v: current.get(v) or fresh[v] for v in wanted}
            default = self.default(name, after)
            if after.keys() == current.keys():
                if after and registry.get(name).version != default:  # rules changed
                    registry.replace(name, after, default)
                return [], failures
            retired = registry.replace(name, after, default)
            SWITCHES.labels(name).inc()
            log.info(
                "%s now serves version(s) %s%s", name, ",".join(map(str, sorted(after))) or "-",
                f" (retiring {','.join(str(s.version) for s in retired)})" if retired else "",
            )  # fmt: skip
            self.on_change()
            return retired, failures
        finally:
            self._busy.discard(name)

    @staticmethod
    def _served(registry: Registry, name: str) -> list[int]:
        return registry.versions(name) if name in registry.names() else []

    def _failed(self, name: str, version: int, seen: Fingerprint, exc: Exception) -> str:
        reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "error")
        message = str(exc) if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"
        message = message.replace(str(self.repo.root), "<repository>")
        self.failed[(name, version)] = (seen, message)
        LOADS.labels(name, str(version), reason).inc()
        log.error("%s:%d does not take traffic: %s", name, version, message)
        return message

    async def _retire(self, served: Served) -> None:
        """Let the requests that hold ``served`` finish, then unload it."""
        deadline = time.monotonic() + self.config.grace_s
        while served.users > 0 or served.runner.pending > 0:
            if time.monotonic() > deadline:
                log.warning(
                    "%s:%d unloads with %d requests still holding it (--grace-s)",
                    served.name, served.version, served.users,
                )  # fmt: skip
                break
            await asyncio.sleep(0.005)
        await served.runner.stop_batching()
        await asyncio.to_thread(served.runner.close)
        log.info("%s:%d unloaded", served.name, served.version)

    async def close(self) -> None:
        """Finish retiring (at shutdown, before the engine unloads what it serves)."""
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        if self.engine.shadows is not None:
            await self.engine.shadows.close()

    # -- the control API ----------------------------------------------------------------------

    def _known(self, name: str) -> None:
        check_name(name)
        if name not in self.repo.names():
            raise ModelNotFoundError(
                f"no model named {name!r} in the repository; it has "
                f"{', '.join(self.repo.names()) or '-'}"
            )
        if name in self._busy:
            raise ConflictError(f"a load or unload of {name!r} is running; try again after it")

    async def load(self, name: str) -> None:
        """Serve ``name`` as the policy says (again, after an unload); ModelLoadError when a
        wanted version fails (the current ones keep serving)."""
        self._known(name)
        self.unloaded.discard(name)
        self.failed = {k: v for k, v in self.failed.items() if k[0] != name}  # try them again
        retired, failures = await self._sync_model(name)
        await asyncio.gather(*(self._retire(s) for s in retired))
        if failures:
            raise ModelLoadError(f"could not load {name!r}: {failures[0]}")

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; returns once its requests in flight have finished."""
        self._known(name)
        self.unloaded.add(name)
        retired, _ = await self._sync_model(name)
        await asyncio.gather(*(self._retire(s) for s in retired))

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every version in the repository with its state (READY, LOADING, UNAVAILABLE) and,
        when not ready, why."""
        registry = self.engine.registry
        entries = []
        for name in self.repo.names():
            try:
                withdrawn, wanted = self.repo.withdrawn(name), self.wanted(name)
            except ModelportError as exc:  # a malformed withdrawn.json, say
                problem = str(exc).replace(str(self.repo.root), "<repository>")
                withdrawn, wanted = {}, []
            else:
                problem = ""
            for version in self.repo.versions(name):
                state, reason = "UNAVAILABLE", ""
                if registry is not None and registry.find(name, version) is not None:
                    state = "READY"
                elif (name, version) in self._loading:
                    state = "LOADING"
                elif problem:
                    reason = problem
                elif (name, version) in self.failed:
                    reason = f"failed to load: {self.failed[(name, version)][1]}"
                elif version in withdrawn:
                    reason = f"withdrawn: {withdrawn[version].get('reason') or 'no reason given'}"
                elif name in self.unloaded:
                    reason = "unloaded"
                elif version not in wanted:
                    reason = f"not selected by the version policy ({self.config.version_policy})"
                if ready_only and state != "READY":
                    continue
                entries.append(
                    {"name": name, "version": str(version), "state": state, "reason": reason}
                )
        return entries
