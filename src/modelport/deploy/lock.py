"""The lock file of an image: every package at an exact version, with the sha256 of its wheel.

    lock = resolve_lock(models, wheels_folder)   # pip resolves; the wheels land in the folder
    lock.text()                                  # requirements.txt syntax, --require-hashes

What goes in: modelport (a wheel of this source, or this release from the index) with the
extras every image needs (grpc for port 8001, redis for a shared cache), and each model's own
pins from its manifest: an ONNX model pins onnxruntime, a code model what its requirements.txt
named, at the versions it was imported with. Those pins are exact, so two versions that pin
one package differently cannot share an image: ``PinConflictError`` names the packages.
Every other package is held at the version installed here, where modelport was tested; pip's
resolver settles the rest. Resolving asks the package index (seconds): the result and the
wheels are kept under ``~/.cache/modelport`` by a digest of everything that went in, so a
rebuild with other model files but the same pins asks nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelport.deploy.models import ShippedModel
from modelport.errors import DeployError
from modelport.manifest import sha256

EXTRAS = ("grpc", "redis")  # every image serves gRPC on 8001 and may share a Redis cache
_OWN = "modelport"
_NOW = {"python_full_version": ".".join(map(str, sys.version_info[:3]))}
_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip (a wheel) can hold
_FORMAT = 2  # of the saved resolutions: a new one when how they are made changes


@dataclass(frozen=True)
class Lock:
    """Exact versions and the wheel files that carry them: modelport's own apart, so that a
    new modelport rebuilds only its own layer."""

    python: str  # "3.11": the wheels are for this Python
    packages: tuple[tuple[str, str, str, str], ...]  # (name, version, wheel file, sha256)
    own: tuple[str, str, str, str]  # modelport's
    installer: str  # pip's wheel, run from the build context: no pip stays in the image

    def text(self, own: bool = False) -> str:
        """``lock.txt`` (every package but modelport) or, with ``own``, modelport's line."""
        lines = [f"# Python {self.python}; install: pip install --no-deps --require-hashes -r"]
        for name, version, _, digest in [self.own] if own else self.packages:
            lines.append(f"{name}=={version} --hash=sha256:{digest}")
        return "\n".join(lines) + "\n"

    def names(self) -> set[str]:
        return {name for name, *_ in (*self.packages, self.own)}


def conflicting_pins(models: list[ShippedModel]) -> dict[str, dict[str, list[str]]]:
    """Packages pinned at more than one version: package -> version -> the models pinning it."""
    seen: dict[str, dict[str, list[str]]] = {}
    for model in models:
        for package, version in model.pins.items():
            name = canonicalize_name(package)
            if name != _OWN:
                seen.setdefault(name, {}).setdefault(version, []).append(model.ref)
    return {name: versions for name, versions in sorted(seen.items()) if len(versions) > 1}


def check_pins(models: list[ShippedModel]) -> dict[str, str]:
    """The models' pins merged (modelport's own aside); PinConflictError when they disagree."""
    conflicts = conflicting_pins(models)
    if conflicts:
        said = "; ".join(
            f"{name}: " + ", ".join(f"{v} ({' '.join(refs)})" for v, refs in versions.items())
            for name, versions in conflicts.items()
        )
        refs = " ".join(m.ref for m in models)
        raise DeployError(
            f"{refs} cannot share an image: their pins conflict on {said}. Build one image "
            "each (modelport build NAME:VERSION --tag ...), so each version keeps what it was "
            "built with"
        )
    return {
        canonicalize_name(p): v
        for m in models
        for p, v in m.pins.items()
        if canonicalize_name(p) != _OWN
    }


def resolve_lock(models: list[ShippedModel], wheels: Path, cache: Path | None = None) -> Lock:
    """Resolve every package of an image of ``models`` and put its wheels in ``wheels``."""
    pins = check_pins(models)
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / _OWN
    wheels.mkdir(parents=True, exist_ok=True)
    own = _own_wheel(wheels, cache)
    held = {n: v for n, v in _installed().items() if n not in pins and n != _OWN}
    key = hashlib.sha256(
        json.dumps(
            [_FORMAT, _requires(own), sorted(pins.items()), sorted(held.items()), EXTRAS]
        ).encode()
    ).hexdigest()
    saved = cache / "locks" / f"{key}.json"
    if saved.is_file():
        chosen = [tuple(item) for item in json.loads(saved.read_text())]
    else:
        chosen = _resolve(own, pins, held)
        older = _older_patch_needs(chosen)
        if older:
            chosen = _resolve(own, pins, held, older)
        saved.parent.mkdir(parents=True, exist_ok=True)
        partial = saved.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(chosen))
        partial.replace(saved)  # whole: another build may read it at once
    packages = []
    for name, version in chosen:
        if name != _OWN:
            wheel = _wheel(name, version, wheels, cache / "wheels")
            packages.append((name, version, wheel.name, sha256(wheel)))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    own_pin = (_OWN, _wheel_version(own), own.name, sha256(own))
    installer = _wheel("pip", metadata.version("pip"), wheels, cache / "wheels")
    return Lock(python, tuple(sorted(packages)), own_pin, installer.name)


def resolve_extra(
    requirements: list[str], wheels: Path, cache: Path | None = None
) -> tuple[tuple[str, str, str, str], ...]:
    """Packages installed on top of an image's lock (the Lambda runtime client), resolved on
    their own, at the versions installed here when they are; their wheels land in ``wheels``.
    Each as (name, version, wheel file, sha256)."""
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / _OWN
    held = _installed()
    key = hashlib.sha256(json.dumps([_FORMAT, requirements, sorted(held.items())]).encode())
    saved = cache / "locks" / f"extra-{key.hexdigest()}.json"
    if saved.is_file():
        chosen = [tuple(item) for item in json.loads(saved.read_text())]
    else:
        with tempfile.TemporaryDirectory(prefix="modelport-lock-") as scratch:
            folder = Path(scratch)
            (folder / "held.txt").write_text("".join(f"{n}=={v}\n" for n, v in held.items()))
            _pip(
                ["install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                 str(folder / "report.json"), "-c", str(folder / "held.txt"), *requirements],
                f"resolving {' '.join(requirements)}",
            )  # fmt: skip
            installs = json.loads((folder / "report.json").read_text())["install"]
        chosen = sorted(
            (canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs
        )
        saved.parent.mkdir(parents=True, exist_ok=True)
        partial = saved.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(chosen))
        partial.replace(saved)
    found = []
    for name, version in chosen:
        wheel = _wheel(name, version, wheels, cache / "wheels")
        found.append((name, version, wheel.name, sha256(wheel)))
    return tuple(found)


def own_wheel(wheels: Path, cache: Path | None = None) -> Path:
    """A wheel of this modelport, copied into ``wheels`` (see ``_own_wheel``)."""
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / _OWN
    wheels.mkdir(parents=True, exist_ok=True)
    return _own_wheel(wheels, cache)


def _installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonicalize_name(name)] = dist.version
    return found


def _own_wheel(wheels: Path, cache: Path) -> Path:
    """A wheel of this modelport: built from the source checkout it runs from, reproducibly
    (zip times fixed; kept by a digest of the sources), or, when installed from a release,
    that release from the index."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file():
        files = [root / "pyproject.toml", root / "README.md", *sorted((root / "src").rglob("*"))]
        digest = hashlib.sha256()
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes())
        folder = cache / "own" / digest.hexdigest()[:32]
        args = ["wheel", "--no-deps", "--no-build-isolation", "-w", "{scratch}", str(root)]
    else:
        folder = cache / "own" / metadata.version(_OWN)
        args = ["download", "--no-deps", "-d", "{scratch}", f"{_OWN}=={metadata.version(_OWN)}"]
    if not any(folder.glob("*.whl")):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="modelport-wheel-", dir=folder.parent) as scratch:
            args = [a.replace("{scratch}", scratch) for a in args]
            _pip(args, f"making a wheel of {_OWN}", env={"SOURCE_DATE_EPOCH": _EPOCH})
            Path(scratch).rename(folder)  # whole or not at all
            Path(scratch).mkdir()  # for TemporaryDirectory to remove
    (built,) = folder.glob("*.whl")
    return Path(shutil.copy2(built, wheels / built.name))


def _requires(wheel: Path) -> list[str]:
    """What a wheel of modelport asks for (its version and Requires-Dist lines): the lock
    depends on these, not on the rest of its code."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    return [line for line in lines if line.startswith(("Version:", "Requires-Dist:"))]


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _older_patch_needs(chosen: list[tuple[str, str]]) -> list[str]:
    """What the chosen packages need only on an older patch release of this Python (redis:
    async-timeout before 3.11.3): the base image's Python may be one (Debian bookworm's is
    3.11.2), and pip evaluates markers for the Python it runs on."""
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(python_full_version=f"{sys.version_info.major}.{sys.version_info.minor}.0")
    env.update(extra="")
    needs = []
    for name, _ in chosen:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker and marker.evaluate(env) and not marker.evaluate({**env, **_NOW}):
                requirement.marker = None
                needs.append(str(requirement))
    return sorted(set(needs))


def _resolve(
    own: Path, pins: dict[str, str], held: dict[str, str], more: list[str] | None = None
) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="modelport-lock-") as scratch:
        folder = Path(scratch)
        wanted = [f"{_OWN}[{','.join(EXTRAS)}] @ {own.resolve().as_uri()}"]
        wanted += [f"{name}=={version}" for name, version in sorted(pins.items())]
        wanted += more or []
        (folder / "requirements.txt").write_text("\n".join(wanted) + "\n")
        (folder / "held.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(held.items())))
        report = folder / "report.json"
        _pip(
            ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
             "-r", str(folder / "requirements.txt"), "-c", str(folder / "held.txt")],
            "resolving the image's packages (the models' pins with modelport's own)",
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    return sorted(
        (canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"])
        for item in installs
    )


def _wheel(name: str, version: str, wheels: Path, cache: Path) -> Path:
    """The wheel of ``name==version`` in ``wheels``: linked from the cache, fetched once."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _find(cache, name, version)
    if found is None:
        with tempfile.TemporaryDirectory(prefix="modelport-wheel-", dir=cache) as scratch:
            _pip(
                ["wheel", "--no-deps", "-w", scratch, f"{name}=={version}"],
                f"fetching {name}=={version}",
                env={"SOURCE_DATE_EPOCH": _EPOCH},
            )
            (built,) = Path(scratch).glob("*.whl")
            found = built.rename(cache / built.name)
    target = wheels / found.name
    try:
        os.link(found, target)
    except OSError:
        shutil.copy2(found, target)
    return target


def _find(folder: Path, name: str, version: str) -> Path | None:
    for wheel in folder.glob("*.whl"):
        parts = wheel.name.split("-")
        if canonicalize_name(parts[0]) == name and parts[1] == version:
            return wheel
    return None


def _pip(args: list[str], doing: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    if done.returncode != 0:
        lines = [
            line for line in done.stderr.splitlines() if line.strip() and "is ignored" not in line
        ]
        raise DeployError(f"pip failed {doing}: " + " | ".join(lines[-4:]))
