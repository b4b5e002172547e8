"""``modelport export mobile``: a model as an ORT format file for onnxruntime on phones.

    result = export_mobile(Repository.open("models"), "digits", "out/digits-mobile")
    result.ort_bytes, result.max_abs_diff

The folder holds ``model.ort`` (onnxruntime's own format, optimized ahead of time, loaded
without the ONNX parser), ``model.required_operators_and_types.config`` (the operators and
types it uses: what a reduced onnxruntime build needs, see onnxruntime's
``build.py --include_ops_by_config``) and ``mobile.json`` (version, sha256, sizes, parity).
The ``.ort`` file is run with onnxruntime and compared with the ONNX model on sample inputs
before anything is written: a model that loses parity is refused. ``int8=True`` exports the
quantized version of the model (``modelport quantize``: a version whose lineage names it).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.convert.parity import Tolerance
from modelport.errors import ConversionError, ModelNotFoundError
from modelport.manifest import Manifest, read_manifest, sha256, verify_artifacts
from modelport.repository import ONNX_FILE, Repository, parse_ref
from modelport.signature import Signature

ORT_FILE = "model.ort"
CONFIG_FILE = "model.required_operators_and_types.config"
MOBILE_MANIFEST = "mobile.json"
SAMPLES = "_samples"  # where the repository keeps sample inputs (modelport demo writes them)


@dataclass(frozen=True)
class MobileExport:
    """What ``export_mobile`` wrote and measured."""

    folder: Path
    name: str
    version: int
    onnx_bytes: int
    ort_bytes: int
    max_abs_diff: float
    operators: list[str]


def export_mobile(
    repo: Repository, ref: str, out: str | os.PathLike[str], *, int8: bool = False,
    force: bool = False, tolerance: Tolerance = Tolerance(),
) -> MobileExport:  # fmt: skip
    """Convert ``"name"`` or ``"name:version"`` to ORT format in the folder ``out``.

    Raises ModelNotFoundError (no such model, or no quantized version with ``int8``),
    ConversionError (a code model, or parity lost), FileExistsError (``out`` exists and
    ``force`` is not set).
    """
    name, version = parse_ref(ref)
    manifest = read_manifest(repo.version_dir(name, version))
    if int8:
        manifest = quantized_version(repo, manifest)
    if manifest.runtime != "onnx":
        raise ConversionError(
            f"{manifest.name}:{manifest.version} is a {manifest.runtime} (code) model: only "
            "ONNX models run on onnxruntime mobile; import the model as ONNX first"
        )
    folder = repo.version_dir(manifest.name, manifest.version)
    verify_artifacts(folder, manifest)
    target = Path(out)
    if target.exists() and not (force and _is_mobile_export(target)):
        raise FileExistsError(
            f"{target} already exists; pass --force to replace an earlier mobile export"
        )
    # Imported once the request is known good: it takes seconds.
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.onnx"
        shutil.copyfile(folder / ONNX_FILE, source)
        built = Path(tmp) / "built"
        # The converter prints its progress and logs at INFO: keep the CLI's output clean.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            _quiet("ort_format_model.utils"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", ResourceWarning)  # the converter leaves a file open
            convert_onnx_models_to_ort(
                source, output_dir=built, optimization_styles=[OptimizationStyle.Fixed],
                enable_type_reduction=True,
            )  # fmt: skip
            gc.collect()  # closes it now, while its warning is ignored
        diff = _parity(source, built / ORT_FILE, manifest, repo, tolerance)
        config = built / CONFIG_FILE
        lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("#")]
        config.write_text(f"# Generated from {ORT_FILE} of {manifest.name}:{manifest.version}\n"
                          + "\n".join(lines) + "\n")  # fmt: skip
        result = MobileExport(
            target, manifest.name, manifest.version, source.stat().st_size,
            (built / ORT_FILE).stat().st_size, diff, lines,
        )  # fmt: skip
        described = {
            "name": manifest.name,
            "version": manifest.version,
            "file": ORT_FILE,
            "sha256": sha256(built / ORT_FILE),
            "bytes": result.ort_bytes,
            "onnx_bytes": result.onnx_bytes,
            "parity_max_abs_diff": diff,
            "signature": manifest.signature.to_dict(),
            "int8": bool(int8),
        }
        (built / MOBILE_MANIFEST).write_text(json.dumps(described, indent=2) + "\n")
        _move_into_place(built, target)
    return result


def quantized_version(repo: Repository, parent: Manifest) -> Manifest:
    """The newest version anywhere in ``repo`` quantized from ``parent`` (its lineage)."""
    found = []
    for name in repo.names():
        for version in repo.versions(name):
            manifest = repo.manifest(name, version)
            lineage = manifest.metadata.get("lineage") or {}
            origin = lineage.get("parent") or {}
            if lineage.get("method") == "quantize" and (
                origin.get("name"),
                origin.get("version"),
            ) == (parent.name, parent.version):
                found.append(manifest)
    if not found:
        raise ModelNotFoundError(
            f"no quantized version of {parent.name}:{parent.version} in {repo.root}; make one "
            f"with 'modelport quantize {parent.name}:{parent.version}', or export without --int8"
        )
    return max(found, key=lambda m: m.created_at)


def sample_inputs(repo: Repository, name: str, signature: Signature) -> dict[str, np.ndarray]:
    """The repository's sample rows of ``name`` when it has them, else made-up rows."""
    path = repo.root / SAMPLES / f"{name}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return {t.name: np.asarray(data[t.name], dtype=t.dtype) for t in signature.inputs}
    rng = np.random.default_rng(0)
    inputs = {}
    for spec in signature.inputs:
        shape = tuple(4 if d == -1 else d for d in spec.shape)
        if spec.dtype.startswith("float"):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "string":
            inputs[spec.name] = np.full(shape, "a", dtype=object)
        else:
            inputs[spec.name] = rng.integers(0, 2 if spec.dtype == "bool" else 10, shape).astype(
                spec.dtype
            )
    return inputs


def _parity(
    onnx_file: Path, ort_file: Path, manifest: Manifest, repo: Repository, tolerance: Tolerance
) -> float:
    import onnxruntime as ort

    inputs = sample_inputs(repo, manifest.name, manifest.signature)
    want = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(
        None, inputs
    )
    got = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"]).run(None, inputs)
    worst = 0.0
    for spec, a, b in zip(manifest.signature.outputs, want, got, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "fc":
            worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
            close = np.allclose(a, b, rtol=tolerance.rtol, atol=tolerance.atol)
        else:
            close = bool(np.array_equal(a, b))
        if not close:
            raise ConversionError(
                f"{manifest.name}:{manifest.version}: output {spec.name!r} of the .ort file "
                f"differs from the ONNX model's (max abs diff {worst:.3g}); nothing was written"
            )
    return worst


def _is_mobile_export(folder: Path) -> bool:
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / MOBILE_MANIFEST).is_file())


def _move_into_place(built: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    shutil.copytree(built, staged)
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, target)


@contextlib.contextmanager
def _quiet(logger: str) -> Any:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
