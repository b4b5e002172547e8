"""The Model users hold: a signature, metadata, and validated batch prediction."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.config import InputLimits, LoadOptions, RuntimeConfig
from modelport.errors import ModelLoadError, ModelportError, PredictionError
from modelport.runtimes import PLATFORMS, Runtime
from modelport.signature import Signature, validate_inputs

ONNX_FILE = "model.onnx"


@dataclass
class Model:
    """A loaded model version.

        model = modelport.load("models/digits/1")
        model.predict(x)            # one input: an array; several: a dict of arrays
        # -> {"label": array([...]), "probabilities": array([[...]])}

    Raises InvalidInputError for inputs that do not match ``signature`` and PredictionError
    when the model itself fails. Safe to call from several threads at once.
    """

    signature: Signature
    runtime: Runtime
    metadata: dict[str, Any] = field(default_factory=dict)
    limits: InputLimits = InputLimits()

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "model"))

    @property
    def version(self) -> int | None:
        version = self.metadata.get("version")
        return int(version) if version is not None else None

    def predict(self, inputs: Any) -> dict[str, np.ndarray]:
        """Validate ``inputs`` against the signature, run the model, return its outputs."""
        batch = validate_inputs(self.signature, inputs, self.limits)
        try:
            return self.runtime.predict(batch)
        except ModelportError:
            raise
        except Exception as exc:
            raise PredictionError(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runtime(
    runtime: str, folder: Path, config: RuntimeConfig, signature: Signature | None = None
) -> Runtime:
    """Start the backend named ``runtime`` on the artifacts in ``folder``."""
    if runtime == "onnx":
        from modelport.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(folder / ONNX_FILE, config)
    if runtime == "python":
        from modelport.runtimes.python import PythonRuntime

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
    from modelport.repository import Repository, load_folder

    if repository is not None:
        return Repository.open(repository).load(str(source), version=version, options=options)
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".onnx":
        from modelport import requirements
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


def measure_costs(model: Model, max_batch_size: int, repeats: int = 3) -> dict[int, float]:
    """Seconds per call at batch sizes 1, 2, 4... up to ``max_batch_size``, on zero inputs.

    A starting point for latency-target batching; real batches refine it. A model that refuses
    zeros simply starts with no measurements.
    """
    costs: dict[int, float] = {}
    sizes = sorted({min(2**i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})
    for size in sizes:
        inputs = {
            spec.name: np.zeros(
                [size] + [max(d, 1) for d in spec.shape[1:]],
                dtype=object if spec.dtype == "string" else spec.dtype,
            )
            for spec in model.signature.inputs
        }
        times = []
        try:
            for _ in range(repeats + 1):  # the first call warms up
                started = time.perf_counter()
                model.runtime.predict(inputs)
                times.append(time.perf_counter() - started)
        except Exception:
            return costs
        costs[size] = sorted(times[1:])[len(times[1:]) // 2]
    return costs
