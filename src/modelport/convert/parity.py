"""The numerical parity check every converter runs before it returns a model."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import ConversionError


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference: ``|converted - original| <= atol + rtol * |original|``.

    Converted models run in float32; originals often in float64, hence nonzero defaults.
    """

    rtol: float = 1e-4
    atol: float = 1e-4


def assert_close(
    output: str, original: np.ndarray, converted: np.ndarray, tolerance: Tolerance
) -> None:
    """Raise ConversionError unless ``converted`` matches ``original`` within ``tolerance``."""
    original = np.asarray(original)
    converted = np.asarray(converted)
    if original.shape != converted.shape:
        raise ConversionError(
            f"output {output!r} has shape {list(converted.shape)} after conversion but "
            f"{list(original.shape)} before; the converted model is not faithful"
        )
    diff = np.abs(converted.astype(np.float64) - original.astype(np.float64))
    allowed = tolerance.atol + tolerance.rtol * np.abs(original.astype(np.float64))
    bad = ~(diff <= allowed)  # NaN counts as a mismatch
    if bad.any():
        worst = float(np.nanmax(np.where(bad, diff, 0.0))) if not np.isnan(diff).all() else np.nan
        raise ConversionError(
            f"output {output!r} differs from the original model on {int(bad.sum())} of "
            f"{bad.size} values (largest difference {worst:.3g}, allowed atol={tolerance.atol} "
            f"rtol={tolerance.rtol}); the converted model is not faithful: check for "
            "unsupported operators, or loosen the tolerance if the difference is acceptable"
        )


def quiet_session(model: bytes | str) -> Any:
    """An onnxruntime session on the CPU that keeps onnxruntime's own C++ log off the
    terminal: its failures reach the caller as exceptions, which say the same."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@contextmanager
def quiet_logs(logger: str = "") -> Iterator[None]:
    """Silence a tool's warnings and its logger (the root logger by default) below errors:
    exporters and quantizers log advice about their own internals."""
    log = logging.getLogger(logger or None)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def check_labels(
    proba: np.ndarray, labels: np.ndarray, converted: np.ndarray, tolerance: Tolerance
) -> None:
    """Labels may differ only where two classes are tied within the tolerance."""
    top2 = np.sort(proba, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance.atol
    mismatched = clear & (labels != converted.reshape(labels.shape))
    if mismatched.any():
        raise ConversionError(
            f"output 'label' differs from the original model on {int(mismatched.sum())} "
            "sample rows with a clear winning class; the converted model is not faithful"
        )
