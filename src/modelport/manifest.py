"""manifest.json: what a model version is, what it is made of, and what it was built with."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.errors import IntegrityError, ManifestError, UntrustedArtifactError
from modelport.runtimes import RUNTIMES
from modelport.signature import Signature

MANIFEST = "manifest.json"
FORMAT = 1
SERVING_KEYS = ("batching", "cache", "fallback", "instances", "ray")

# Files that unpickle when loaded, and so can run arbitrary code.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".sav")


@dataclass(frozen=True)
class Manifest:
    """One model version, as written to ``<repo>/<name>/<version>/manifest.json``."""

    name: str
    version: int
    runtime: str
    signature: Signature
    artifacts: dict[str, str]
    requirements: dict[str, Any]
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
    serving: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "signature": self.signature.to_dict(),
            "artifacts": dict(sorted(self.artifacts.items())),
            "requirements": self.requirements,
            "created_at": self.created_at,
            "serving": self.serving,
            "metadata": self.metadata,
        }

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_manifest(folder: Path) -> Manifest:
    """Read and check ``folder/manifest.json``; ManifestError says what is wrong and where."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{path} is missing: every version folder needs one; re-import the model "
            "(modelport import) rather than copying files by hand"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); restore it or re-import") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object; restore it or re-import")
    try:
        manifest = Manifest(
            name=_typed(data, "name", str),
            version=_typed(data, "version", int),
            runtime=_typed(data, "runtime", str),
            signature=Signature.from_dict(_typed(data, "signature", dict)),
            artifacts=_typed(data, "artifacts", dict),
            requirements=_typed(data, "requirements", dict),
            created_at=_typed(data, "created_at", str),
            serving=data.get("serving") or {},
            metadata=data.get("metadata") or {},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} is malformed: {exc}; restore it or re-import") from exc
    if manifest.runtime not in RUNTIMES:
        raise ManifestError(
            f"{path}: unknown runtime {manifest.runtime!r}; expected one of {', '.join(RUNTIMES)}"
        )
    unknown = sorted(set(manifest.serving) - set(SERVING_KEYS))
    if unknown:
        raise ManifestError(
            f"{path}: unknown serving setting {unknown[0]!r}; expected {', '.join(SERVING_KEYS)}"
        )
    return manifest


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise KeyError(f"field {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifacts_digest(artifacts: dict[str, str]) -> str:
    """One sha256 for a version's files (relative path -> sha256, as a manifest lists them):
    what cache keys and image labels tell versions apart by."""
    listed = "".join(f"{path}\0{digest}\n" for path, digest in sorted(artifacts.items()))
    return hashlib.sha256(listed.encode()).hexdigest()


def hash_artifacts(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest, by relative POSIX path."""
    return {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify_artifacts(folder: Path, manifest: Manifest) -> None:
    """Raise IntegrityError unless the files on disk are exactly those the manifest hashed."""
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise IntegrityError(
                f"{path} is a symbolic link; a version folder holds only its own files. "
                "Replace the link with the file, or re-import the model"
            )
    actual = hash_artifacts(folder)
    for rel, expected in sorted(manifest.artifacts.items()):
        got = actual.get(rel)
        if got is None:
            raise IntegrityError(f"{folder / rel} is listed in the manifest but missing")
        if got != expected:
            raise IntegrityError(
                f"{folder / rel} does not match its manifest (sha256 {got[:12]}..., expected "
                f"{expected[:12]}...): the file was changed after import. Restore it, or "
                "re-import the model if the change is intended"
            )
    extra = sorted(set(actual) - set(manifest.artifacts))
    if extra:
        raise IntegrityError(
            f"{folder / extra[0]} is not in the manifest: files were added after import. "
            "Remove it, or re-import the model"
        )


def is_pickle(path: Path) -> bool:
    """True for files that unpickle on load: known suffixes, pickle protocol 2+ magic bytes,
    or a zip holding ``.pkl`` members (PyTorch's format).

    Protocol 0/1 pickles have no magic bytes and are caught only by their suffix.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def refuse_pickles(folder: Path, trust_pickle: bool) -> None:
    """Raise UntrustedArtifactError for any pickle under ``folder`` unless trusted."""
    if trust_pickle:
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and is_pickle(path):
            raise UntrustedArtifactError(refusal(path))


def refusal(path: Path) -> str:
    return (
        f"{path} is a pickle/joblib file, and loading one can run arbitrary code. Load it only "
        "if you made it or trust its source: pass trust_pickle=True (CLI: --trust-pickle)"
    )
