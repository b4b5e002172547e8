"""``serve --web``: each ONNX model's browser bundle at ``/web/NAME/``, from the repository.

    bundles = WebBundles(Path("models"), config)
    body, content_type = bundles.file("digits", "manifest.json")

The files are those ``modelport export web`` writes (export/web.py), with the model under
``versions/N/model.onnx``. Which version a page gets is read from the repository on disk, by
the server's version policy, on every manifest request: a version added to the repository
reaches the pages at their next update check, and a version withdrawn (its folder removed)
takes them back to the one before, without a restart.

Three kinds of request, each its own route: the shared files (``index.html``,
``modelport.js``, ``ort/...``: ``page``), ``manifest.json`` and ``[versions/N/]model.onnx``;
a name never becomes a path of its own, so nothing outside the repository and the package's
assets can be reached. A model file is served only while it matches the sha256 its
repository manifest recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from modelport.config import ServerConfig
from modelport.errors import ConversionError, IntegrityError, ModelNotFoundError
from modelport.export.web import (
    CONTENT_TYPES,
    check_web_model,
    shared_files,
    web_manifest,
    webgpu_files,
)
from modelport.manifest import Manifest, read_manifest, verify_artifacts
from modelport.repository import ONNX_FILE, Repository, VersionPolicy, check_name

SERVICE = "../../"  # from /web/NAME/manifest.json, the server's own root


class WebBundles:
    """The bundles of a repository's ONNX models; shared files are read once and kept."""

    def __init__(self, source: Path, config: ServerConfig) -> None:
        if not source.is_dir() or (source / "manifest.json").is_file():
            raise ModelNotFoundError(
                f"serve --web needs a model repository (a folder of models), not {source}"
            )
        self.repo = Repository.open(source)
        self.policy = VersionPolicy.parse(config.version_policy)
        self._webgpu = config.web_webgpu is not None  # serve --web-webgpu
        self._shared = shared_files() | (
            webgpu_files(config.web_webgpu) if config.web_webgpu is not None else {}
        )
        self._kept: dict[str, bytes] = {}
        # (name, version) -> (the model file's stat, the page manifest): hashed once per change
        self._verified: dict[tuple[str, int], tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def page(self, name: str, file: str, known: bool = True) -> tuple[bytes, str]:
        """A shared file of ``/web/NAME/`` (the page, modelport.js, the runtime) and its type.

        ``known``: only for a model with a bundle. False (a client without the token) answers
        them for any valid name, so that they tell nothing of which models exist.
        """
        check_name(name)
        file = file or "index.html"
        if file not in self._shared:
            raise ModelNotFoundError(f"no such file in the web bundle of {name!r}: {file!r:.80}")
        if known:
            self._page_manifest(name, self.current(name))
        body = self._kept.get(file)
        if body is None:
            body = self._kept[file] = self._shared[file].read_bytes()
        return body, CONTENT_TYPES[Path(file).suffix]

    def manifest(self, name: str) -> bytes:
        """The page manifest of the version pages should run now."""
        return orjson.dumps(self._page_manifest(name, self.current(check_name(name))))

    def model(self, name: str, version: int | None = None) -> bytes:
        """The model file of ``version`` (the current one when None), checked against the
        sha256 its repository recorded."""
        check_name(name)
        if version is None:
            version = self.current(name)
        elif version not in self.policy.select(self.repo.versions(name)):
            raise ModelNotFoundError(f"model {name!r} has no version {version} on the web")
        described = self._page_manifest(name, version)
        body = (self.repo.version_dir(name, version) / ONNX_FILE).read_bytes()
        if hashlib.sha256(body).hexdigest() != described["model"]["sha256"]:
            raise IntegrityError(
                f"the model file of {name}:{version} changed since the server checked it"
            )
        return body

    def current(self, name: str) -> int:
        """The version pages get: the newest the version policy keeps, on disk now."""
        versions = self.policy.select(self.repo.versions(name))
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} has a web bundle here")
        return versions[-1]

    def known_versions(self, name: str) -> list[int]:
        """Every version of ``name`` in the repository (telemetry may name an older one)."""
        versions = self.repo.versions(check_name(name))
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} has a web bundle here")
        return versions

    def _page_manifest(self, name: str, version: int) -> dict[str, Any]:
        folder = self.repo.version_dir(name, version)
        model = folder / ONNX_FILE
        stat = (folder / "manifest.json").stat()
        try:
            model_stat = model.stat()
        except FileNotFoundError:
            model_stat = None
        key = (
            stat.st_mtime_ns,
            model_stat.st_mtime_ns if model_stat else 0,
            model_stat.st_size if model_stat else 0,
        )
        kept = self._verified.get((name, version))
        if kept is not None and kept[0] == key:
            return kept[1]
        manifest: Manifest = read_manifest(folder)
        try:
            check_web_model(manifest)
        except ConversionError as exc:
            raise ModelNotFoundError(f"no web bundle: {exc}") from None
        verify_artifacts(folder, manifest)
        described = web_manifest(
            manifest, model, f"versions/{version}/{ONNX_FILE}", service=SERVICE,
            webgpu=self._webgpu,
        )  # fmt: skip
        self._verified[(name, version)] = key, described
        return described
