"""What a model version was built with, and whether this environment still satisfies it.

Recorded in the manifest at import, checked at load, so that a rollback to an old version never
runs silently on a stack it was not built for.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from modelport.errors import RequirementsError


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_packages(names: Iterable[str]) -> dict[str, str]:
    """Pin each named package to the version installed now; all must be installed."""
    pins: dict[str, str] = {}
    for name in names:
        version = installed_version(name)
        if version is None:
            raise RequirementsError(
                f"package {name!r} is required by the model but not installed here; "
                f"pip install {name} before importing the model"
            )
        pins[name] = version
    return pins


def read_requirements_txt(path: Path) -> list[str]:
    """Package names from a requirements.txt (versions there are ignored: we pin what runs)."""
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            names.append(Requirement(line).name)
        except InvalidRequirement as exc:
            raise RequirementsError(f"{path}: cannot parse {line!r} ({exc})") from exc
    return names


def onnx_requirements(opsets: dict[str, int], ir_version: int) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "packages": record_packages(["onnxruntime"]),
        "onnx_opsets": dict(opsets),
        "onnx_ir_version": ir_version,
    }


def python_requirements(packages: Iterable[str]) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "packages": record_packages(["modelport", "numpy", *packages]),
    }


def _major(version: str) -> int | None:
    try:
        return Version(version).major
    except InvalidVersion:
        return None


def problems(requirements: dict[str, Any]) -> list[str]:
    """Everything this environment lacks compared with ``requirements``, as sentences."""
    found = []
    for package, pinned in sorted(requirements.get("packages", {}).items()):
        have = installed_version(package)
        if have is None:
            found.append(f"package {package} is not installed (built with {package}=={pinned})")
        elif _major(have) != _major(pinned):
            found.append(
                f"package {package} is {have} here but the model was built with {pinned} "
                "(different major version)"
            )
    opsets: dict[str, int] = requirements.get("onnx_opsets", {})
    if opsets:
        from modelport.runtimes.onnx import max_supported_opset

        ort = installed_version("onnxruntime") or "no onnxruntime"
        for domain, version in sorted(opsets.items()):
            supported = max_supported_opset(domain)
            if version > supported:
                found.append(
                    f"opset {version} of domain {domain} is newer than onnxruntime {ort} "
                    f"supports (up to {supported})"
                )
    return found


REINSTALL = "Install what it was built with, or re-import the model on this stack."
NEWER_OPSET = "Upgrade onnxruntime, or export the model with an older opset."


def check(requirements: dict[str, Any], where: str, fix: str = REINSTALL) -> None:
    """Raise RequirementsError listing every unmet requirement of the model at ``where``."""
    unmet = problems(requirements)
    if unmet:
        raise RequirementsError(
            f"{where} cannot load in this environment: " + "; ".join(unmet) + f". {fix}"
        )
