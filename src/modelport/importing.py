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
from modelport.errors import (
    ConversionError,
    ModelLoadError,
    ModelportError,
    UntrustedArtifactError,
    require,
)
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
from modelport.rows import is_frame
from modelport.runtimes.python import ENTRY_FILE, refuse_code
from modelport.signature import Signature, spec_from_array, validate_inputs

# An array, named arrays, or a pandas DataFrame (for models fitted on one).
Sample = np.ndarray | Mapping[str, np.ndarray] | Any


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
    module: str | None = None,
    init_args: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> Manifest:
    """Add ``model`` as the next version of ``name`` and return its manifest.

        add_model(repo, "digits", pipeline, sample_input=X[:32])     # scikit-learn
        add_model(repo, "churn", pipeline, sample_input=frame[:64])  # fitted on a DataFrame
        add_model(repo, "fraud", xgb_classifier, sample_input=X[:64])  # or "model.ubj"
        add_model(repo, "cnn", net, sample_input=x[:8])              # torch.nn.Module
        add_model(repo, "net", "net.pt2", sample_input=x[:8])        # torch.export, TorchScript
        add_model(repo, "net", "weights.pt", sample_input=x[:8], module="train.py:Net")
        add_model(repo, "mlp", "mlp.onnx")                           # ONNX file or bytes
        add_model(repo, "digits-code", "folder", trust_code=True)    # folder with model.py

    scikit-learn, boosted-tree and PyTorch models need ``sample_input``: it fixes the inputs
    (one per column for a pipeline fitted on a DataFrame) and is used for the parity check.
    Native XGBoost (.json, .ubj), LightGBM (.txt) and CatBoost (.cbm) files load as such.
    ``module`` ("file.py:Class") names the class of a pickled ``nn.Module`` or a state_dict,
    built with ``init_args``. Pickle/joblib files need ``trust_pickle=True``, and code models
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
    if "ray" in serving:
        from modelport.rayserve.plan import Scaling

        Scaling.from_manifest(serving["ray"])
    metadata: dict[str, Any] = {"description": description} if description else {}
    if lineage:
        metadata["lineage"] = dict(lineage)
    source = model
    model = _open_file(model, trust_pickle, module, dict(init_args or {}))
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
    they are too large, not plain numbers and text, or not the model's inputs as they are (a
    DataFrame's columns, say: the server then warms up on zeros)."""
    if isinstance(sample, np.ndarray) and len(signature.inputs) == 1:
        arrays: dict[str, Any] = {signature.inputs[0].name: sample}
    elif isinstance(sample, Mapping) and set(sample) == set(signature.input_names):
        arrays = dict(sample)
    else:
        return {}
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
    try:  # what the server will check it with
        validate_inputs(signature, {n: _stored(signature, n, item) for n, item in kept.items()})
    except (ModelportError, ValueError, TypeError):
        return {}
    return kept


def _stored(signature: Signature, name: str, item: dict[str, Any]) -> np.ndarray:
    text = any(s.name == name and s.dtype == "string" for s in signature.inputs)
    array: np.ndarray = np.asarray(item["data"], dtype=object if text else None)
    shaped: np.ndarray = array.reshape(item["shape"])
    return shaped


def _open_file(
    model: Any, trust_pickle: bool, module: str | None, init_args: dict[str, Any]
) -> Any:
    """A framework's model file as the model it holds; other sources as they are."""
    if not isinstance(model, (str, Path)) or not Path(model).is_file():
        if module is not None and _is_torch_module(model):
            raise ConversionError("module= is for PyTorch files; this model is already loaded")
        return model
    from modelport.convert import torch_files, trees

    path = Path(model)
    suffix = path.suffix.lower()
    if suffix in torch_files.SUFFIXES or (module is not None and is_pickle(path)):
        return torch_files.load_torch_file(
            path, trust_pickle=trust_pickle, module=module, init_args=init_args
        )
    if module is not None:
        raise ConversionError(f"module= is for PyTorch files, and {path} is not one")
    if suffix in trees.SUFFIXES:
        return trees.load_tree_file(path)
    if not is_pickle(path):
        return model
    if not trust_pickle:
        raise UntrustedArtifactError(refusal(path))
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
                ".onnx files, PyTorch programs (.pt2), TorchScript and state_dict files, "
                "XGBoost (.json, .ubj), LightGBM (.txt) and CatBoost (.cbm) models, "
                "scikit-learn/PyTorch pickles (.joblib/.pkl/.pt, with --trust-pickle) and "
                "code-model folders or archives (.zip, .tar.gz)"
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
    if kind in ("xgboost", "lightgbm", "catboost"):
        from modelport.convert.trees import trees_metadata, trees_to_onnx

        meta.update(trees_metadata(model, sample))
        return trees_to_onnx(model, _single(sample, frames=True), tolerance)
    if kind == "sklearn" or hasattr(model, "get_params"):
        from modelport.convert.sklearn import sklearn_metadata, sklearn_to_onnx

        meta.update(sklearn_metadata())
        return sklearn_to_onnx(model, _single(sample, frames=True), tolerance)
    if _is_torch_module(model):
        from modelport.convert.torch import torch_metadata, torch_to_onnx

        meta.update(torch_metadata())
        arrays = list(sample.values()) if isinstance(sample, Mapping) else _single(sample)
        return torch_to_onnx(model, arrays, tolerance)
    raise ConversionError(
        f"modelport cannot import a {type(model).__module__}.{type(model).__name__}: pass an "
        "ONNX file or bytes, a scikit-learn estimator or pipeline, an XGBoost, LightGBM or "
        "CatBoost model, a torch.nn.Module (or a .pt2 or TorchScript file) or a code-model folder"
    )


def _is_torch_module(model: Any) -> bool:
    return any(
        (c.__module__.startswith("torch.nn") and c.__name__ == "Module")
        or (c.__module__.startswith("torch.export") and c.__name__ == "ExportedProgram")
        for c in type(model).__mro__
    )


def _single(sample: Sample, frames: bool = False) -> Any:
    """One sample array; a DataFrame as it is where ``frames``, else as its values."""
    if isinstance(sample, Mapping):
        if len(sample) != 1:
            raise ConversionError("this converter takes one input: pass one sample array")
        return np.asarray(next(iter(sample.values())))
    if is_frame(sample):
        return sample if frames else _values(sample)
    return np.asarray(sample)


def _values(frame: Any) -> np.ndarray:
    values = np.asarray(frame.to_numpy())
    if values.dtype.kind not in "biuf":
        raise ConversionError(
            "the sample has text columns, but this model takes one numeric array: pass numbers"
        )
    return values


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
    arrays = dict(sample) if isinstance(sample, Mapping) else {"input": _single(sample)}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    outputs = runtime.raw_predict(arrays)
    signature = Signature(
        tuple(spec_from_array(k, v) for k, v in arrays.items()),
        tuple(spec_from_array(k, v) for k, v in outputs.items()),
    )
    runtime.signature = signature
    return signature
