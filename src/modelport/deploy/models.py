"""Which model versions go into an image: ``SOURCE[:VERSION]`` arguments made concrete.

A SOURCE is a model folder (``models/digits``, its latest version unless ``:VERSION``), a
version folder (``models/digits/2``), a repository (the latest version of every model) or a
model name in the ``--repo`` repository (``digits:2``). Only imported versions ship: each has a
manifest, whose sha256 sums are checked here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelport.errors import ModelNotFoundError
from modelport.manifest import MANIFEST, Manifest, artifacts_digest, read_manifest, verify_artifacts
from modelport.repository import Repository, check_version, is_number, parse_ref


@dataclass(frozen=True)
class ShippedModel:
    """One model version as it goes into an image."""

    name: str
    version: int
    folder: Path  # the version folder on disk
    manifest: Manifest

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def digest(self) -> str:
        """The sha256 the server reports for it and the image's labels carry."""
        return artifacts_digest(self.manifest.artifacts)

    @property
    def pins(self) -> dict[str, str]:
        packages: dict[str, str] = self.manifest.requirements.get("packages", {})
        return dict(packages)


def select_models(sources: list[str], repo: Path) -> list[ShippedModel]:
    """The versions ``sources`` name, sorted by name and version, each once."""
    if not sources:
        raise ModelNotFoundError("name a model to ship: a model folder or NAME[:VERSION]")
    chosen: dict[tuple[str, int], ShippedModel] = {}
    for source in sources:
        for model in _resolve(source, repo):
            chosen[model.name, model.version] = model
    return [chosen[key] for key in sorted(chosen)]


def _resolve(source: str, repo: Path) -> list[ShippedModel]:
    path_text, sep, tail = source.rpartition(":")
    version = check_version(tail) if sep and is_number(tail) else None
    path = Path(path_text if version is not None else source)
    if path.is_dir():
        if (path / MANIFEST).is_file():  # a version folder
            if version is not None:
                raise ModelNotFoundError(f"{path} is one version already; drop ':{version}'")
            return [_shipped(Repository(path.parent.parent), path.parent.name, int(path.name))]
        if any(p.is_dir() and is_number(p.name) for p in path.iterdir()):  # a model folder
            return [_shipped(Repository(path.parent), path.name, version)]
        if version is not None:
            raise ModelNotFoundError(f"{path} is not a model folder: it has no version {version}")
        repository = Repository.open(path)
        names = repository.names()
        if not names:
            raise ModelNotFoundError(f"{path} holds no imported models")
        return [_shipped(repository, name, None) for name in names]
    if "/" in source or source.startswith("."):
        raise ModelNotFoundError(f"{path} does not exist: pass a model folder or NAME[:VERSION]")
    name, ref_version = parse_ref(source)
    return [_shipped(Repository.open(repo), name, ref_version)]


def _shipped(repository: Repository, name: str, version: int | None) -> ShippedModel:
    folder = repository.version_dir(name, version)
    manifest = read_manifest(folder)
    verify_artifacts(folder, manifest)
    return ShippedModel(manifest.name, manifest.version, folder, manifest)
