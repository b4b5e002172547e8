"""The model repository on disk: ``<repo>/<name>/<version>/`` with a manifest in each version.

    repo = Repository.init("models")
    repo.names()                         # ["digits", "mlp-large"]
    repo.versions("digits")              # [1, 2]
    repo.load("digits")                  # latest; or "digits:1", or version=1
    modelport.load("models/digits")      # the same without a Repository (see load())

Names are checked against a strict pattern and every path is resolved and checked to stay
inside the repository, so neither a name nor a symlink can reach outside it. This module alone
knows which files a version folder holds (``MANIFEST``, ``ONNX_FILE``, a code model's
``ENTRY_FILE``): the rest of modelport asks it, through ``is_model_folder`` and the loaders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport import requirements
from modelport.config import LoadOptions, RuntimeConfig
from modelport.errors import (
    InvalidNameError,
    ManifestError,
    ModelLoadError,
    ModelNotFoundError,
)
from modelport.manifest import MANIFEST, Manifest, read_manifest, refuse_pickles, verify_artifacts
from modelport.model import Model
from modelport.runtimes import PLATFORMS, Runtime
from modelport.runtimes.python import ENTRY_FILE, PythonRuntime, refuse_code
from modelport.signature import Signature

ONNX_FILE = "model.onnx"  # an onnx version's one artifact
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STAGING = ".staging"
# <repo>/<name>/withdrawn.json: versions kept on disk but never served as "latest" (rollback).
# Beside the version folders, not in them: their files are exactly what their manifest lists.
WITHDRAWN = "withdrawn.json"


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name and not name.endswith(".")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidNameError."""
    if not is_valid_name(name):
        raise InvalidNameError(
            f"invalid model name {name!r:.80}: use 1-64 letters, digits, '_', '-' or '.', starting "
            "with a letter or digit, with no '..' and not ending in '.'"
        )
    return name


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() alone also accepts characters such as '²' that int()
    refuses."""
    return text.isascii() and text.isdigit()


def check_version(version: int | str) -> int:
    """Return ``version`` as a positive int, else raise InvalidNameError."""
    text = str(version)
    if not is_number(text) or int(text) < 1 or len(text) > 9:
        raise InvalidNameError(f"invalid version {text!r:.40}: versions are integers from 1")
    return int(text)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``"name"`` or ``"name:version"`` into a checked name and optional version."""
    name, sep, version = ref.partition(":")
    return check_name(name), check_version(version) if sep else None


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: the latest N, or specific ones.

    ``VersionPolicy.parse("latest")``, ``"latest:2"``, ``"all"``, ``"specific:1,3"``.
    """

    latest: int | None = 1
    specific: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                count = int(arg) if arg else 1
                if count < 1:
                    raise ValueError
                return cls(latest=count)
            if kind == "all":
                return cls(latest=None)
            if kind == "specific" and arg:
                return cls(latest=None, specific=tuple(check_version(v) for v in arg.split(",")))
        except (ValueError, InvalidNameError):
            pass
        raise ValueError(
            f"invalid version policy {text!r}: use 'latest', 'latest:N', 'all' or 'specific:1,3'"
        )

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.specific:
            return [v for v in ordered if v in self.specific]
        if self.latest is None:
            return ordered
        return ordered[-self.latest :]


class Repository:
    """A folder of models, each a folder of integer versions."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def init(cls, root: str | os.PathLike[str]) -> Repository:
        """Create the repository folder (and parents) if needed; existing models stay."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise ModelLoadError(f"{path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Repository:
        """Open an existing repository; ModelNotFoundError if the folder is not there."""
        if not Path(root).is_dir():
            raise ModelNotFoundError(
                f"model repository {root} does not exist; create it with "
                f"'modelport repo init {root}' or pass --repo"
            )
        return cls(root)

    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts).resolve()
        if path != self.root and self.root not in path.parents:
            raise InvalidNameError(f"{'/'.join(parts)} resolves outside the repository")
        return path

    def names(self) -> list[str]:
        """Models with at least one version; folders with invalid names or links out of the
        repository are not models and are skipped."""
        names = []
        for path in self.root.iterdir():
            if path.is_dir() and is_valid_name(path.name):
                try:
                    if self.versions(path.name):
                        names.append(path.name)
                except InvalidNameError:
                    continue
        return sorted(names)

    def versions(self, name: str) -> list[int]:
        return _numbered(self._inside(check_name(name)))

    def version_dir(self, name: str, version: int | None = None) -> Path:
        """The folder of ``name`` at ``version`` (latest when None); ModelNotFoundError if none.

        The latest is the newest version not withdrawn (see ``withdraw``).
        """
        available = self.versions(name)
        if not available:
            raise ModelNotFoundError(
                f"no model named {name!r} in {self.root}; known: {', '.join(self.names()) or '-'}"
            )
        if version is None:
            serveable = self.serveable(name)
            if not serveable:
                raise ModelNotFoundError(
                    f"every version of {name!r} is withdrawn; name one (NAME:VERSION) or "
                    "restore one with 'modelport rollback --restore'"
                )
            version = serveable[-1]
        elif version not in available:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}; it has {', '.join(map(str, available))}"
            )
        return self._inside(name, str(version))

    def manifest(self, ref: str, version: int | None = None) -> Manifest:
        name, ref_version = parse_ref(ref)
        return read_manifest(self.version_dir(name, version or ref_version))

    def load(
        self, ref: str, *, version: int | None = None, options: LoadOptions = LoadOptions()
    ) -> Model:
        """Load ``"name"`` or ``"name:version"`` (latest when no version is given)."""
        name, ref_version = parse_ref(ref)
        return load_version(self.version_dir(name, version or ref_version), options)

    def select(self, policy: VersionPolicy) -> dict[str, list[int]]:
        """The versions of every model that ``policy`` keeps: withdrawn versions only when the
        policy names them (``specific:``)."""
        return {name: self.select_one(name, policy) for name in self.names()}

    def select_one(self, name: str, policy: VersionPolicy) -> list[int]:
        if policy.specific:
            return policy.select(self.versions(name))
        return policy.select(self.serveable(name))

    # -- withdrawn versions (rollback) ---------------------------------------------------------

    def withdrawn(self, name: str) -> dict[int, dict[str, Any]]:
        """Withdrawn versions of ``name``: version -> {"reason", "at"}."""
        path = self._inside(check_name(name), WITHDRAWN)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {check_version(v): dict(about) for v, about in data.items()}
        except (ValueError, TypeError, AttributeError, InvalidNameError) as exc:
            raise ManifestError(
                f"{path} is malformed ({exc}): it maps versions to {{'reason', 'at'}}; "
                "fix or remove it"
            ) from None

    def serveable(self, name: str) -> list[int]:
        """The versions of ``name`` that are not withdrawn, oldest first."""
        withdrawn = self.withdrawn(name)
        return [v for v in self.versions(name) if v not in withdrawn]

    def withdraw(self, name: str, versions: list[int], reason: str = "") -> None:
        """Mark ``versions`` withdrawn: kept on disk, never served as the latest."""
        known = self.versions(name)
        for version in versions:
            if version not in known:
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        marks = self.withdrawn(name)
        marks.update({v: {"reason": reason, "at": at} for v in versions})
        self._write_withdrawn(name, marks)

    def restore(self, name: str, version: int) -> None:
        """Serve a withdrawn version again."""
        marks = self.withdrawn(name)
        if marks.pop(version, None) is None:
            raise ModelNotFoundError(f"version {version} of {name!r} is not withdrawn")
        self._write_withdrawn(name, marks)

    def _write_withdrawn(self, name: str, marks: dict[int, dict[str, Any]]) -> None:
        path = self._inside(check_name(name), WITHDRAWN)
        text = json.dumps({str(v): marks[v] for v in sorted(marks)}, indent=2) + "\n"
        staged = path.with_name(f".{WITHDRAWN}.{uuid.uuid4().hex}")
        staged.write_text(text)
        os.replace(staged, path)  # atomic: a watching server never reads half a file

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder inside the repository, removed afterwards whatever happens."""
        folder = self._inside(_STAGING, uuid.uuid4().hex)
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # another import may still be staging
                folder.parent.rmdir()

    def commit(self, name: str, staged: Path, build: Callable[[int], Manifest]) -> Manifest:
        """Move a staged version into place as the model's next version, atomically.

        ``build(version)`` makes the manifest once the number is known. A concurrent import
        that takes the same number first makes this one retry with the next.
        """
        model_dir = self._inside(check_name(name))
        model_dir.mkdir(exist_ok=True)
        for _ in range(100):
            manifest = build(max(self.versions(name), default=0) + 1)
            manifest.write(staged)
            target = model_dir / str(manifest.version)
            try:
                os.rename(staged, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return manifest
        raise ModelLoadError(f"could not allocate a new version of {name!r}: too much contention")


def _numbered(folder: Path) -> list[int]:
    """The integer-named subfolders of ``folder`` (its versions), sorted."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and is_number(p.name))


def is_model_folder(path: Path) -> bool:
    """True for the folder of one model: a version (its manifest), a model (numbered version
    folders) or a code model (its entry file); False for a repository, or anything else."""
    return path.is_dir() and (
        (path / MANIFEST).is_file() or (path / ENTRY_FILE).is_file() or bool(_numbered(path))
    )


def open_runtime(
    runtime: str, folder: Path, config: RuntimeConfig, signature: Signature | None = None
) -> Runtime:
    """Start the backend named ``runtime`` on the artifacts in ``folder``."""
    if runtime == "onnx":
        from modelport.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(folder / ONNX_FILE, config)
    if runtime == "python":
        return PythonRuntime(folder, signature)
    raise ModelLoadError(f"unknown runtime {runtime!r}; expected 'onnx' or 'python'")


def load(
    source: str | os.PathLike[str],
    *,
    version: int | None = None,
    repository: str | os.PathLike[str] | None = None,
    options: LoadOptions = LoadOptions(),
) -> Model:
    """Load a model from an ONNX file, a version folder, a model folder or a repository.

        modelport.load("model.onnx")
        modelport.load("models/digits")                       # latest version
        modelport.load("digits:2", repository="models")       # or version=2

    Raises ModelNotFoundError, ModelLoadError (and its subclasses) with the file and the fix.
    """
    if repository is not None:
        return Repository.open(repository).load(str(source), version=version, options=options)
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".onnx":
        from modelport.runtimes.onnx import OnnxRuntime, read_opsets

        opsets, _ = read_opsets(path)
        requirements.check({"onnx_opsets": opsets}, str(path), requirements.NEWER_OPSET)
        runtime = OnnxRuntime(path, options.runtime)
        metadata = {
            "name": path.stem,
            "runtime": "onnx",
            "platform": PLATFORMS["onnx"],
            "providers": runtime.providers,
        }
        return Model(runtime.signature, runtime, metadata, options.limits)
    if path.is_dir():
        return load_folder(path, version=version, options=options)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    raise ModelLoadError(
        f"{path} is not something modelport loads directly: pass an .onnx file or a model "
        "folder, or turn a scikit-learn/PyTorch file into one with "
        f"'modelport import {path} --name NAME --sample-input FILE'"
    )


def load_version(folder: Path, options: LoadOptions = LoadOptions()) -> Model:
    """Load one version folder: manifest, code and pickle policy, sha256, requirements,
    runtime."""
    manifest = read_manifest(folder)
    if is_number(folder.name) and (
        manifest.version != int(folder.name) or manifest.name != folder.parent.name
    ):
        raise ManifestError(
            f"{folder / MANIFEST} says {manifest.name}:{manifest.version} but lies in "
            f"{folder.parent.name}/{folder.name}; models must not be moved by hand: re-import"
        )
    if manifest.runtime == "python":
        refuse_code(folder, options.trust_code)
    refuse_pickles(folder, options.trust_pickle)
    verify_artifacts(folder, manifest)
    if options.verify_requirements:
        requirements.check(manifest.requirements, f"{manifest.name}:{manifest.version}")
    runtime = open_runtime(manifest.runtime, folder, options.runtime, manifest.signature)
    if runtime.signature != manifest.signature:
        runtime.close()
        raise ManifestError(
            f"{folder / MANIFEST}: its signature differs from the model's own "
            f"({runtime.signature.to_dict()}); the manifest was edited by hand: re-import"
        )
    metadata = {
        **manifest.metadata,
        "name": manifest.name,
        "version": manifest.version,
        "runtime": manifest.runtime,
        "platform": PLATFORMS[manifest.runtime],
        "created_at": manifest.created_at,
        "requirements": manifest.requirements,
        "serving": manifest.serving,
        "providers": getattr(runtime, "providers", None),
    }
    return Model(manifest.signature, runtime, metadata, options.limits)


def load_folder(folder: Path, version: int | None, options: LoadOptions) -> Model:
    """Load a version folder, a model folder (its latest or given version) or a code folder."""
    if (folder / MANIFEST).is_file():
        return load_version(folder, options)
    versions = _numbered(folder)
    if versions:
        chosen = version or versions[-1]
        if chosen not in versions:
            raise ModelNotFoundError(f"{folder} has no version {chosen}; it has {versions}")
        return load_version(folder / str(chosen), options)
    if (folder / ENTRY_FILE).is_file():
        refuse_code(folder, options.trust_code)
        refuse_pickles(folder, options.trust_pickle)
        runtime = PythonRuntime(folder)
        metadata = {"name": folder.name, "runtime": "python", "platform": PLATFORMS["python"]}
        return Model(runtime.signature, runtime, metadata, options.limits)
    raise ManifestError(
        f"{folder} holds no {MANIFEST}, no version folders and no {ENTRY_FILE}: it is not a "
        "model; point at a version folder, or import the model with 'modelport import'"
    )
