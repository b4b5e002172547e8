"""Adding models to a repository as new versions: ONNX, scikit-learn, PyTorch, code folders.

Everything is written to a staging folder inside the repository and renamed into place only
once it has loaded and predicted on the sample, so a failed import leaves the repository
exactly as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport import archives, requirements
from modelport.config import BatchingConfig, FallbackConfig, RuntimeConfig
from modelport.convert.parity import Tolerance
from modelport.errors import ConversionError, ModelLoadError, UntrustedArtifactError, require
from modelport.manifest import (
    SERVING_KEYS,
    Manifest,
    hash_artifacts,
    is_pickle,
    refusal,
    refuse_pickles,
)
from modelport.model import Model
from modelport.repository import ONNX_FILE, Repository, check_name, open_runtime
from modelport.runtimes.python import ENTRY_FILE, refuse_code
from modelport.signature import Signature, spec_from_array

Sample = np.ndarray | Mapping[str, np.ndarray]


def add_model(
    repo: Repository,
    name: str,
    model: Any,
    *,
    sample_input: Sample | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
    serving: Mapping[str, Any] | None = None,
    description: str = "",
    tolerance: Tolerance = Tolerance(),
    lineage: Mapping[str, Any] | None = None,
) -> Manifest:
    """Add ``model`` as the next version of ``name`` and return its manifest.

        add_model(repo, "digits", pipeline, sample_input=X[:32])     # scikit-learn
        add_model(repo, "cnn", net, sample_input=x[:8])              # torch.nn.Module
        add_model(repo, "mlp", "mlp.onnx")                           # ONNX file or bytes
        add_model(repo, "digits-code", "folder", trust_code=True)    # folder with model.py

    scikit-learn and PyTorch models need ``sample_input``: it fixes the input shape and is used
    for the parity check. Pickle/joblib files need ``trust_pickle=True``, and code models
    ``trust_code=True``: both run code when loaded. Raises UntrustedArtifactError without them.
    ``lineage`` (what the model was made from, e.g. by ``modelport quantize``) is stored in the
    manifest's metadata.
    """
    check_name(name)
    serving = dict(serving or {})
    unknown = sorted(set(serving) - set(SERVING_KEYS))
    if unknown:
        raise ValueError(f"unknown serving setting {unknown[0]!r}; expected {SERVING_KEYS}")
    if "batching" in serving:
        BatchingConfig.from_manifest(serving["batching"])  # refuse bad settings now, not at serve
    if "fallback" in serving:
        FallbackConfig.from_manifest(serving["fallback"])
    metadata: dict[str, Any] = {"description": description} if description else {}
    if lineage:
        metadata["lineage"] = dict(lineage)
    source = model
    model = _unpickle(model, trust_pickle) if _is_pickle_file(model) else model
    with repo.staging() as staged, tempfile.TemporaryDirectory() as unpacked:
        if isinstance(model, (str, Path)) and archives.is_archive(Path(model)):
            model = archives.extract(Path(model), Path(unpacked))
        try:
            runtime, reqs = _stage(
                model, staged, sample_input, trust_pickle, trust_code, tolerance, metadata
            )
            signature = _try_out(runtime, staged, sample_input)
            if sample_input is not None:
                kept = sample_rows(signature, sample_input)
                if kept:
                    metadata["sample"] = kept
        except ModelLoadError as exc:
            message = str(exc)
            for temporary, shown in _shown_paths(source, model, staged):
                message = message.replace(temporary, shown)
            raise type(exc)(message) from exc
        artifacts = hash_artifacts(staged)
        return repo.commit(
            name,
            staged,
            lambda version: Manifest(
                name,
                version,
                runtime,
                signature,
                artifacts,
                reqs,
                serving=serving,
                metadata=metadata,
            ),
        )


def _shown_paths(source: Any, model: Any, staged: Path) -> list[tuple[str, str]]:
    """Temporary paths in error messages, and what the user knows them as."""
    if not isinstance(source, (str, Path)):
        return [(str(staged / ONNX_FILE), "the converted model")]
    if archives.is_archive(Path(source)):
        return [
            (f"{staged}/", f"{source}:"),
            (f"{model}/", f"{source}:"),
            (str(model), str(source)),
        ]
    if Path(source).is_file():
        return [(str(staged / ONNX_FILE), str(source))]
    return [(str(staged), str(source))]


def _try_out(runtime_name: str, staged: Path, sample: Sample | None) -> Signature:
    """Load the staged version and predict on the sample: what fails here never lands."""
    runtime = open_runtime(runtime_name, staged, RuntimeConfig())
    try:
        signature = _signature(runtime, sample)
        if sample is not None:
            Model(signature, runtime).predict(sample)
        return signature
    finally:
        runtime.close()


SAMPLE_ROWS = 4  # rows of the sample input kept in the manifest: the server warms up on them
SAMPLE_BYTES = 64 * 1024  # at most this much of it as JSON; a larger sample is not kept


def sample_rows(signature: Signature, sample: Sample) -> dict[str, Any]:
    """The first rows of ``sample`` as manifest JSON ({input: {"shape", "data"}}), or {} when
    they are too large or not plain numbers and text."""
    arrays = dict(sample) if isinstance(sample, Mapping) else {signature.inputs[0].name: sample}
    kept: dict[str, Any] = {}
    for name, value in arrays.items():
        array = np.asarray(value)[:SAMPLE_ROWS]
        if array.dtype.kind in "biuf":
            data = array.ravel().tolist()
        elif array.dtype.kind in "OUS":
            data = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
        else:
            return {}
        kept[name] = {"shape": list(array.shape), "data": data}
    if len(json.dumps(kept)) > SAMPLE_BYTES:
        return {}
    return kept


def _is_pickle_file(model: Any) -> bool:
    return isinstance(model, (str, Path)) and Path(model).is_file() and is_pickle(Path(model))


def _unpickle(model: Any, trust_pickle: bool) -> Any:
    path = Path(model)
    if not trust_pickle:
        raise UntrustedArtifactError(refusal(path))
    if path.suffix.lower() in (".pt", ".pth"):
        require("torch", "torch")
        import torch

        return torch.load(path, weights_only=False)
    require("joblib", "sklearn")
    import joblib

    return joblib.load(path)


def _stage(
    model: Any,
    staged: Path,
    sample: Sample | None,
    trust_pickle: bool,
    trust_code: bool,
    tolerance: Tolerance,
    metadata: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Write ``model``'s artifacts into ``staged``; return its runtime and requirements."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            _copy_code_folder(path, staged, trust_pickle, trust_code)
            names = []
            if (staged / "requirements.txt").is_file():
                names = requirements.read_requirements_txt(staged / "requirements.txt")
            metadata.setdefault("framework", "python")
            return "python", requirements.python_requirements(names)
        if not path.is_file():
            raise ModelLoadError(f"{path} does not exist")
        if path.suffix.lower() != ".onnx":
            raise ModelLoadError(
                f"{path}: unsupported file type {path.suffix or '(none)'}; modelport imports "
                ".onnx files, scikit-learn/PyTorch pickles (.joblib/.pkl/.pt, with "
                "--trust-pickle) and code-model folders or archives (.zip, .tar.gz)"
            )
        data = path.read_bytes()
    elif isinstance(model, bytes):
        data = model
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        data = _convert(model, sample, tolerance, metadata)
    (staged / ONNX_FILE).write_bytes(data)
    from modelport.runtimes.onnx import check_external_data, read_opsets

    check_external_data(staged / ONNX_FILE)
    opsets, ir_version = read_opsets(staged / ONNX_FILE)
    reqs = requirements.onnx_requirements(opsets, ir_version)
    requirements.check(reqs, str(staged / ONNX_FILE), requirements.NEWER_OPSET)
    return "onnx", reqs


def _convert(
    model: Any, sample: Sample | None, tolerance: Tolerance, meta: dict[str, Any]
) -> bytes:
    kind = type(model).__module__.split(".")[0]
    if sample is None:
        raise ConversionError(
            f"converting a {type(model).__name__} needs a sample input (a few real rows): "
            "pass sample_input= (CLI: --sample-input FILE)"
        )
    if kind == "sklearn" or hasattr(model, "get_params"):
        from modelport.convert.sklearn import sklearn_metadata, sklearn_to_onnx

        meta.update(sklearn_metadata())
        return sklearn_to_onnx(model, _single(sample), tolerance)
    if _is_torch_module(model):
        from modelport.convert.torch import torch_metadata, torch_to_onnx

        meta.update(torch_metadata())
        arrays = list(sample.values()) if isinstance(sample, Mapping) else _single(sample)
        return torch_to_onnx(model, arrays, tolerance)
    raise ConversionError(
        f"modelport cannot import a {type(model).__module__}.{type(model).__name__}: pass an "
        "ONNX file or bytes, a scikit-learn estimator, a torch.nn.Module or a code-model folder"
    )


def _is_torch_module(model: Any) -> bool:
    return any(
        c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__
    )


def _single(sample: Sample) -> np.ndarray:
    if isinstance(sample, Mapping):
        if len(sample) != 1:
            raise ConversionError("this converter takes one input: pass one sample array")
        return np.asarray(next(iter(sample.values())))
    return np.asarray(sample)


def _copy_code_folder(source: Path, staged: Path, trust_pickle: bool, trust_code: bool) -> None:
    if not (source / ENTRY_FILE).is_file():
        raise ModelLoadError(
            f"{source} has no {ENTRY_FILE}: a code model is a folder with a {ENTRY_FILE} "
            "defining a class with load() and predict()"
        )
    refuse_code(source, trust_code)
    for path in source.rglob("*"):
        if path.is_symlink():
            raise ModelLoadError(
                f"{path} is a symbolic link; copy the real file into the model folder instead "
                "(links could reach outside the repository)"
            )
    refuse_pickles(source, trust_pickle)
    shutil.copytree(
        source, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )


def _signature(runtime: Any, sample: Sample | None) -> Signature:
    try:
        declared: Signature = runtime.signature
        return declared
    except ModelLoadError:
        if sample is None:
            raise
    arrays = dict(sample) if isinstance(sample, Mapping) else {"input": np.asarray(sample)}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    outputs = runtime.raw_predict(arrays)
    signature = Signature(
        tuple(spec_from_array(k, v) for k, v in arrays.items()),
        tuple(spec_from_array(k, v) for k, v in outputs.items()),
    )
    runtime.signature = signature
    return signature
