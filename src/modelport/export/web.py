"""``modelport export web``: a model as a static bundle that predicts in the browser.

    export_web(Repository.open("models"), "digits", "site/digits")   # host site/digits anywhere

A bundle is ``index.html`` (a demo page), ``modelport.js`` (an ES module on onnxruntime-web:
input checks as signature.py makes them, sha256 check, fallback, updates, telemetry), ``ort/``
(onnxruntime-web's WASM runtime, vendored under ``assets/`` at the version in its VERSION file),
``model.onnx`` and ``manifest.json`` (below). ``modelport serve --web`` serves the same files
at ``/web/NAME/`` (server/web.py), with the model under ``versions/N/``.

WebGPU takes onnxruntime-web's WebGPU build, a 29 MB wasm that is not shipped with modelport:
``webgpu=`` names an onnxruntime-web package the user installed (``npm install
onnxruntime-web@VERSION``), whose files must match the sha256s pinned in WEBGPU_SHA256SUMS. Such
a bundle runs on WebGPU where the browser has an adapter, and on WASM elsewhere.

The manifest a page reads::

    {"format": 1, "name", "version", "signature", "created_at",
     "model": {"url": "model.onnx", "sha256", "bytes"},
     "runtime": {"name": "onnxruntime-web", "version", "backends": ["webgpu"?, "wasm"]},
     "service": null | URL,     # fallback, updates and telemetry go there; null: none
     "budget_ms", "update_interval_s", "limits": {"max_elements"}}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelport.config import InputLimits
from modelport.errors import ConversionError, IntegrityError
from modelport.manifest import Manifest, read_manifest, sha256, verify_artifacts
from modelport.repository import ONNX_FILE, Repository, parse_ref

ASSETS = Path(__file__).parent / "assets"
RUNTIME = ASSETS / "onnxruntime-web"
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEBGPU_FILES = (
    "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)  # fmt: skip
PAGE_FILES = ("index.html", "modelport.js")
WEB_MANIFEST = "manifest.json"
FORMAT = 1
BUDGET_MS = 100.0  # a prediction slower than this on the device goes to the service
UPDATE_INTERVAL_S = 300.0

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    "": "text/plain; charset=utf-8",  # LICENSE
}


def runtime_version() -> str:
    """The vendored onnxruntime-web's version."""
    return (RUNTIME / "VERSION").read_text().strip()


def shared_files() -> dict[str, Path]:
    """The files every bundle holds alike (page, module, runtime), by their path in it."""
    files = {name: ASSETS / name for name in PAGE_FILES}
    for name in (*RUNTIME_FILES, "LICENSE"):
        files[f"ort/{name}"] = RUNTIME / name
    return files


def webgpu_files(package: str | os.PathLike[str]) -> dict[str, Path]:
    """The WebGPU build's files in an installed onnxruntime-web (its folder, or its ``dist/``),
    by their path in a bundle; IntegrityError unless each is the pinned version's, byte for
    byte."""
    folder = Path(package)
    dist = folder / "dist" if (folder / "dist").is_dir() else folder
    sums = (RUNTIME / "WEBGPU_SHA256SUMS").read_text().split()
    pinned = dict(zip(sums[1::2], sums[0::2]))  # "<sha256>  <file>" lines
    wanted = f"npm install onnxruntime-web@{runtime_version()}"
    files = {}
    for name in WEBGPU_FILES:
        path = dist / name
        if not path.is_file():
            raise ValueError(
                f"--webgpu: {path} is missing; give the folder of an onnxruntime-web package "
                f"({wanted}, then --webgpu node_modules/onnxruntime-web)"
            )
        if sha256(path) != pinned[name]:
            raise IntegrityError(
                f"--webgpu: {path} is not onnxruntime-web {runtime_version()}'s (sha256 "
                f"differs): the page's runtime must be the vendored version; {wanted}"
            )
        files[f"ort/{name}"] = path
    return files


def check_web_model(manifest: Manifest) -> None:
    """Raise ConversionError unless the version can run in a browser (ONNX only)."""
    if manifest.runtime != "onnx":
        raise ConversionError(
            f"{manifest.name}:{manifest.version} is a {manifest.runtime} (code) model: only "
            "ONNX models can run in a browser. Convert it to ONNX (modelport import a "
            "scikit-learn or PyTorch model), or serve it and call the service from the page"
        )


def web_manifest(
    manifest: Manifest, model_file: Path, model_url: str, *, service: str | None = None,
    budget_ms: float = BUDGET_MS, update_interval_s: float = UPDATE_INTERVAL_S,
    webgpu: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """What ``manifest.json`` of a bundle says about one model version."""
    return {
        "format": FORMAT,
        "name": manifest.name,
        "version": manifest.version,
        "signature": manifest.signature.to_dict(),
        "created_at": manifest.created_at,
        "model": {
            "url": model_url,
            "sha256": sha256(model_file),
            "bytes": model_file.stat().st_size,
        },
        "runtime": {
            "name": "onnxruntime-web",
            "version": runtime_version(),
            "backends": ["webgpu", "wasm"] if webgpu else ["wasm"],
        },
        "service": service,
        "budget_ms": budget_ms,
        "update_interval_s": update_interval_s,
        "limits": {"max_elements": InputLimits().max_elements},
    }


def check_service_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--service must be an http(s) URL of a modelport server, got {url!r}")
    return url if url.endswith("/") else url + "/"


def export_web(
    repo: Repository, ref: str, out: str | os.PathLike[str], *, force: bool = False,
    service: str | None = None, budget_ms: float = BUDGET_MS,
    update_interval_s: float = UPDATE_INTERVAL_S, webgpu: str | os.PathLike[str] | None = None,
) -> Path:  # fmt: skip
    """Write the static bundle of ``"name"`` or ``"name:version"`` to the folder ``out``.

    ``service`` (the URL of a modelport server) is where the page falls back, updates and
    sends telemetry. ``webgpu``: an installed onnxruntime-web package, whose WebGPU build the
    page uses where the browser has WebGPU. Raises ModelNotFoundError, ConversionError (a code
    model), IntegrityError (files changed since import, or not the pinned runtime's),
    FileExistsError (``out`` exists and ``force`` is not set).
    The bundle is built beside ``out`` and moved into place whole: never half-written.
    """
    if budget_ms <= 0 or update_interval_s < 0:
        raise ValueError("budget_ms must be > 0 and update_interval_s >= 0")
    name, version = parse_ref(ref)
    folder = repo.version_dir(name, version)
    manifest = read_manifest(folder)
    check_web_model(manifest)
    verify_artifacts(folder, manifest)  # ship only what the repository vouches for
    target = Path(out)
    _check_target(target, force)
    files = shared_files() | ({} if webgpu is None else webgpu_files(webgpu))
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for rel, source in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / rel)
        shutil.copyfile(folder / ONNX_FILE, staging / ONNX_FILE)
        described = web_manifest(
            manifest, staging / ONNX_FILE, ONNX_FILE, budget_ms=budget_ms,
            service=None if service is None else check_service_url(service),
            update_interval_s=update_interval_s, webgpu=webgpu is not None,
        )  # fmt: skip
        (staging / WEB_MANIFEST).write_text(json.dumps(described, indent=2) + "\n")
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not force:
        raise FileExistsError(f"{target} already exists; pass --force to replace it")
    # --force replaces an earlier bundle or an empty folder, never any folder it is given.
    with contextlib.suppress(OSError, ValueError):
        if target.is_dir() and (
            not any(target.iterdir())
            or (
                json.loads((target / WEB_MANIFEST).read_text()).get("format") == FORMAT
                and (target / "modelport.js").is_file()
            )
        ):
            return
    raise FileExistsError(
        f"{target} exists and is not a modelport web bundle: --force replaces only a bundle "
        "(or an empty folder); choose another --out"
    )
