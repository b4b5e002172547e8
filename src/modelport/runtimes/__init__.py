"""Backends that run a model: one module per runtime, each loaded only when used."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from modelport.signature import Signature


class Runtime(Protocol):
    """What a loaded backend offers: a signature and batch-in, batch-out prediction."""

    signature: Signature
    # Calls worth making at once from separate threads (1: one after another). A batch job
    # keeps this many batches in flight.
    parallel_calls: int

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


# Each runtime and its platform name in the Open Inference Protocol's model metadata.
PLATFORMS = {"onnx": "onnx_onnxv1", "python": "python"}
RUNTIMES = tuple(PLATFORMS)
