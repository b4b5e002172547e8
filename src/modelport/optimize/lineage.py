"""An optimized model becomes a version like any other, and its manifest says what it came from.

``metadata.lineage`` in the manifest of a quantized or distilled version:

    {"parent": {"name": "digits-cnn", "version": 1, "sha256": {"model.onnx": "..."}},
     "method": "quantize", "settings": {...}, "data": {"calibration": {"file", "sha256",
     "rows"}, "eval": {...}}, "report": {...the numbers...}, "tools": {"onnxruntime": "..."}}
"""

from __future__ import annotations

from typing import Any

from modelport.importing import add_model
from modelport.manifest import Manifest
from modelport.repository import Repository, check_name
from modelport.requirements import installed_version


def check_target(repo: Repository, name: str) -> str:
    """The name the result will be imported as, checked before any work starts."""
    return check_name(name)


def parent_of(manifest: Manifest) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "sha256": manifest.artifacts}


def tools(*packages: str) -> dict[str, str]:
    return {p: v for p in ("modelport", *packages) if (v := installed_version(p)) is not None}


def publish(
    repo: Repository,
    name: str,
    onnx: bytes,
    parent: Manifest,
    description: str,
    lineage: dict[str, Any],
) -> Manifest:
    """Import ``onnx`` as the next version of ``name``, with the parent's serving settings.

    add_model stages, test-loads and renames into place: a failure leaves nothing behind.
    """
    return add_model(
        repo,
        name,
        onnx,
        serving=parent.serving,
        description=description,
        lineage={"parent": parent_of(parent), **lineage},
    )
