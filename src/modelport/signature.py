"""Tensor specs and input validation.

A signature lists a model's inputs and outputs with a dtype and a shape, where -1 marks a
dynamic dimension (usually the batch). ``validate_inputs`` checks what a caller passes against
it before anything reaches a runtime, and says exactly what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.config import InputLimits
from modelport.errors import InvalidInputError

# Canonical dtype names (numpy's) and their Open Inference Protocol datatype.
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}


def _check_dtype(dtype: str) -> str:
    if dtype not in DATATYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DATATYPES)}")
    return dtype


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``TensorSpec("x", "float32", (-1, 64))``."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)
        if any(d < -1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: dims must be >= -1, got {list(self.shape)}")

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol name of the dtype (``FP32``, ``BYTES``...)."""
        return DATATYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def dtype_name(dtype: np.dtype[Any]) -> str:
    """The canonical name of a numpy dtype; text of any kind is ``string``."""
    if dtype.kind in "USO":
        return "string"
    return _check_dtype(dtype.name)


def spec_from_array(name: str, array: np.ndarray, dynamic_batch: bool = True) -> TensorSpec:
    """A spec that accepts arrays like ``array``, with a dynamic first dim by default."""
    shape = tuple(int(d) for d in array.shape)
    if dynamic_batch and shape:
        shape = (-1, *shape[1:])
    return TensorSpec(name, dtype_name(array.dtype), shape)


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"input {spec.name!r}: expected a {spec.dtype} array, got a value numpy cannot "
            f"read as one ({exc})",
            spec.name,
        ) from None
    if array.dtype == object and spec.dtype != "string":
        raise InvalidInputError(
            f"input {spec.name!r}: expected a rectangular {spec.dtype} array, got ragged or "
            "mixed-type data",
            spec.name,
        )
    return array


def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.dtype == "string":
        if array.dtype.kind not in "USO":
            raise InvalidInputError(
                f"input {spec.name!r}: expected strings, got {_kind(array.dtype)}", spec.name
            )
        return array.astype(object, copy=False)
    target = np.dtype(spec.dtype)
    if array.dtype == target:
        return array
    if array.dtype.kind in "iu" and target.kind in "iu":
        # Integers of another width or signedness are fine when every value fits: JSON and
        # Python lists give int64 whatever the model takes.
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInputError(
                f"input {spec.name!r}: expected {spec.dtype} values in [{info.min}, "
                f"{info.max}], got values from {array.min()} to {array.max()}",
                spec.name,
            )
        return array.astype(target, copy=False)
    # same_kind: int -> float and float64 -> float32 are fine; float -> int or text is not.
    if array.dtype.kind in "USO" or not np.can_cast(array.dtype, target, casting="same_kind"):
        raise InvalidInputError(
            f"input {spec.name!r}: expected dtype {spec.dtype}, got {_kind(array.dtype)}, "
            "which cannot be cast to it safely",
            spec.name,
        )
    return array.astype(target, copy=False)


def _check_shape(spec: TensorSpec, array: np.ndarray) -> None:
    if array.ndim == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        return
    expected = "[" + ", ".join("?" if d == -1 else str(d) for d in spec.shape) + "]"
    if array.ndim != len(spec.shape):
        raise InvalidInputError(
            f"input {spec.name!r}: expected rank {len(spec.shape)} with shape {expected}, "
            f"got rank {array.ndim} with shape {list(array.shape)}",
            spec.name,
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want != -1 and want != got:
            raise InvalidInputError(
                f"input {spec.name!r}: expected shape {expected}, got {list(array.shape)} "
                f"(dim {axis} must be {want})",
                spec.name,
            )


def validate_inputs(
    signature: Signature, inputs: Any, limits: InputLimits = InputLimits()
) -> dict[str, np.ndarray]:
    """Check ``inputs`` against ``signature`` and return them as arrays of the right dtype.

    ``inputs`` is a mapping of input name to array-like, or a single array-like when the model
    has exactly one input. Raises InvalidInputError naming the input, what was expected and
    what came.
    """
    # dict first: the Mapping ABC check costs a microsecond on every call.
    if not isinstance(inputs, dict) and not isinstance(inputs, Mapping):
        if len(signature.inputs) != 1:
            raise InvalidInputError(
                f"this model takes {len(signature.inputs)} inputs "
                f"({', '.join(signature.input_names)}); pass a dict of name -> array"
            )
        inputs = {signature.inputs[0].name: inputs}
    if len(inputs) != len(signature.inputs) or any(s.name not in inputs for s in signature.inputs):
        _check_names(signature.input_names, inputs.keys())
    result: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        array = _as_array(spec, inputs[spec.name])
        if array.size > limits.max_elements:
            raise InvalidInputError(
                f"input {spec.name!r}: {array.size} elements is over the limit of "
                f"{limits.max_elements}; send smaller batches or raise InputLimits.max_elements",
                spec.name,
            )
        _check_shape(spec, array)
        result[spec.name] = _cast(spec, array)
    return result


def _check_names(expected: list[str], given: Iterable[str]) -> None:
    given = list(given)
    missing = [n for n in expected if n not in given]
    unknown = [n for n in given if n not in expected]
    if unknown:
        raise InvalidInputError(
            f"unknown input {unknown[0]!r}; the model takes {', '.join(map(repr, expected))}",
            unknown[0],
        )
    if missing:
        raise InvalidInputError(
            f"missing input {missing[0]!r}; the model takes {', '.join(map(repr, expected))}",
            missing[0],
        )


def _kind(dtype: np.dtype[Any]) -> str:
    """A dtype as a person would name it: text rather than numpy's 'str672'."""
    names = {"U": "text", "S": "bytes", "O": "mixed values"}
    return names.get(dtype.kind, str(dtype.name))
