"""The Model users hold: a signature, metadata, and validated batch prediction.

Loading one from files (``modelport.load``) is repository.py's work: it alone knows what a
version folder holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.config import InputLimits
from modelport.errors import InvalidInputError, ModelportError, PredictionError
from modelport.rows import is_frame
from modelport.runtimes import Runtime
from modelport.signature import Signature, validate_inputs


@dataclass
class Model:
    """A loaded model version.

        model = modelport.load("models/digits/1")
        model.predict(x)            # one input: an array; several: a dict of arrays
        # -> {"label": array([...]), "probabilities": array([[...]])}
        model.predict(frame)        # one input per column: a DataFrame, or [{column: value}]

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
        columns = self.metadata.get("columns")
        if columns is not None and is_frame(inputs):  # one matrix, in the fitted column order
            inputs = _ordered(inputs, columns)
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


def _ordered(frame: Any, columns: list[str]) -> Any:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"missing column {missing[0]!r}; the model was fitted on {', '.join(columns)}",
            missing[0],
        )
    return frame[columns]


def measure_costs(model: Model, max_batch_size: int, repeats: int = 3) -> dict[int, float]:
    """Seconds per call at batch sizes 1, 2, 4... up to ``max_batch_size``, on zero inputs.

    A starting point for latency-target batching; real batches refine it. A model that refuses
    zeros simply starts with no measurements.
    """
    costs: dict[int, float] = {}
    sizes = sorted({min(2**i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})
    for size in sizes:
        inputs = {  # text: empty strings (zeros of dtype object are the integer 0)
            spec.name: np.full([size] + [max(d, 1) for d in spec.shape[1:]], "", dtype=object)
            if spec.dtype == "string"
            else np.zeros([size] + [max(d, 1) for d in spec.shape[1:]], dtype=spec.dtype)
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
