"""Tensor specs and input validation.

A signature lists a model's inputs and outputs with a dtype and a shape, where -1 marks a
dynamic dimension (usually the batch). ``validate_inputs`` checks what a caller passes against
it before anything reaches a runtime, and says exactly what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from modelport import rows
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
MAX_RANK = 32  # numpy's own limit is 64; no model takes more


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

    @cached_property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype (object for strings), made once: every request is checked by it."""
        return np.dtype(object if self.dtype == "string" else self.dtype)

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

    @cached_property
    def input_name_set(self) -> frozenset[str]:
        return frozenset(t.name for t in self.inputs)

    @cached_property
    def column_names(self) -> frozenset[str]:
        """The inputs of shape ``[-1, 1]``: a tabular model's columns, one value per row."""
        return frozenset(t.name for t in self.inputs if t.shape == (-1, 1))


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


NUMBERS = frozenset({bool, int, float})  # the kinds of JSON values a numeric tensor takes
_TEXT = frozenset({str, bytes})
_JSON = frozenset({list, dict, str, bool, int, float, type(None)})  # what orjson makes


class Leaves(NamedTuple):
    """What ``json_leaves`` found: the shape, the values in row-major order, their types."""

    shape: tuple[int, ...]
    values: list[Any]
    kinds: frozenset[type]


def json_leaves(value: Any, max_elements: int) -> Leaves | None:
    """The shape and the values of nested lists, walked before numpy sees any of them.

    One level at a time, each level's size checked against ``max_elements`` before the level
    is built: None when one would hold more. Raises ValueError for ragged lists or lists
    nested deeper than MAX_RANK, and TypeError at a value JSON cannot hold (an ndarray, a
    numpy scalar), which is Python data for numpy to read.
    """
    if type(value) is list and len(value) <= max_elements:  # one flat list: most requests
        kinds = set(map(type, value))
        if list not in kinds and kinds <= _JSON:
            return Leaves((len(value),), value, frozenset(kinds))
    shape: list[int] = []
    level: list[Any] = [value]
    while True:
        kinds = set(map(type, level))
        if len(kinds) > 1 or list not in kinds:  # the values, or something wrong
            if not kinds <= _JSON:
                raise TypeError("not JSON data")
            if list in kinds:
                raise ValueError("ragged: lists beside single values")
            return Leaves(tuple(shape), level, frozenset(kinds))
        width = len(level[0])
        if len(level) > 1 and len(set(map(len, level))) > 1:
            raise ValueError("ragged: nested lists of unequal length")
        if len(level) * width > max_elements:
            return None
        if len(shape) == MAX_RANK:
            raise ValueError(f"nested deeper than {MAX_RANK} levels")
        shape.append(width)
        level = level[0] if len(level) == 1 else list(chain.from_iterable(level))


def json_array(found: Leaves, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The values ``json_leaves`` found as an array of ``shape`` (theirs by default), with a
    dtype chosen by their kind.

    Never numpy's choice: its fixed-width text takes the longest string's size for every
    element (one 1 MB string beside a million empty ones asks for 4 TB). Text stays Python
    objects; numbers become bool, int64 (uint64 beyond it) or float64. Raises ValueError when
    text and numbers mix, or a value is null or an object.
    """
    values, kinds = found.values, found.kinds
    if not values:
        array = np.empty(0)
    elif kinds == {str}:
        array = np.array(values, dtype=object)  # flat, so numpy looks no deeper
    elif kinds <= NUMBERS:
        dtype = np.float64 if float in kinds else np.int64 if int in kinds else np.bool_
        array = _numbers(values, dtype)
    elif type(None) in kinds:
        raise ValueError("incomplete: null among the values")
    elif dict in kinds:
        raise ValueError("not a tensor: objects among the values")
    else:
        raise ValueError("mixed: text and numbers together")
    return array.reshape(found.shape if shape is None else shape)


def _numbers(leaves: list[Any], dtype: type[np.generic]) -> np.ndarray:
    try:
        return np.array(leaves, dtype=dtype)
    except OverflowError:  # integers beyond int64: uint64 holds them when none is negative
        pass
    try:
        return np.array(leaves, dtype=np.uint64)
    except OverflowError:  # beyond 64 bits: objects, which every numeric input refuses
        return np.array(leaves, dtype=object)


def _as_array(spec: TensorSpec, value: Any, limits: InputLimits) -> np.ndarray:
    array: np.ndarray | None = None
    if type(value) is list:  # data as JSON gives it, maybe from a client: walked first
        try:
            walked = json_leaves(value, limits.max_elements)
            if walked is None:
                raise InvalidInputError(
                    f"input {spec.name!r}: data has more elements than the limit of "
                    f"{limits.max_elements}; send smaller batches or raise "
                    "InputLimits.max_elements",
                    spec.name,
                )
            array = json_array(walked)
        except TypeError:  # Python values (arrays, numpy scalars) in the lists: numpy reads
            pass
        except ValueError as exc:
            raise InvalidInputError(
                f"input {spec.name!r}: expected a {spec.dtype} array, got a value numpy cannot "
                f"read as one ({exc})",
                spec.name,
            ) from None
    if array is None:
        # Text from lists stays as given (numpy would turn 1 and None among strings into text).
        text = spec.dtype == "string" and not isinstance(value, np.ndarray)
        try:
            array = np.asarray(value, dtype=object if text else None)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"input {spec.name!r}: expected a {spec.dtype} array, got a value numpy cannot "
                f"read as one ({exc})",
                spec.name,
            ) from None
    if array.dtype == object and spec.dtype != "string":
        if array.size and all(isinstance(v, str) for v in array.flat):
            raise InvalidInputError(
                f"input {spec.name!r}: expected dtype {spec.dtype}, got text, which cannot be "
                "cast to it safely",
                spec.name,
            )
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
        # Only str and bytes: None must never pass for "None". The types at C speed first;
        # the item by item check only when some other type (a str subclass, say) is there.
        if array.dtype == object and not set(map(type, array.ravel().tolist())) <= _TEXT:
            for item in array.flat:
                if not isinstance(item, (str, bytes)):
                    raise InvalidInputError(
                        f"input {spec.name!r}: expected strings, got {type(item).__name__}",
                        spec.name,
                    )
        return array.astype(object, copy=False)
    target = spec.numpy_dtype
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
    has exactly one input. A model with one ``[-1, 1]`` input per column also takes a
    DataFrame, a list of ``{column: value}`` rows, or flat columns (see rows.py). Raises
    InvalidInputError naming the input, what was expected and what came.
    """
    # dict first: the Mapping ABC check costs a microsecond on every call.
    if not isinstance(inputs, dict) and not isinstance(inputs, Mapping):
        inputs = _named(signature, inputs)
    if not isinstance(inputs, dict) and not isinstance(inputs, Mapping):
        if len(signature.inputs) != 1:
            raise InvalidInputError(
                f"this model takes {len(signature.inputs)} inputs "
                f"({', '.join(signature.input_names)}); pass a dict of name -> array"
            )
        inputs = {signature.inputs[0].name: inputs}
    if inputs.keys() != signature.input_name_set:
        _check_names(signature.input_names, inputs.keys())
    result: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        value = inputs[spec.name]
        if spec.shape == _COLUMN and rows.is_flat(value):  # one value per row
            value = rows.column(spec.name, spec.dtype, value)
        array = _as_array(spec, value, limits)
        if array.size > limits.max_elements:
            raise InvalidInputError(
                f"input {spec.name!r}: {array.size} elements is over the limit of "
                f"{limits.max_elements}; send smaller batches or raise InputLimits.max_elements",
                spec.name,
            )
        _check_shape(spec, array)
        result[spec.name] = _cast(spec, array)
    return result


_COLUMN = (-1, 1)


def _named(signature: Signature, inputs: Any) -> Any:
    """A DataFrame or a list of ``{column: value}`` rows as named columns; anything else as is.

    A DataFrame for a model of one matrix input is that matrix, its columns in order.
    """
    if rows.is_frame(inputs):
        names = [str(c) for c in inputs.columns]
        if len(signature.inputs) == 1 and signature.inputs[0].name not in names:
            return inputs.to_numpy()
        columns = rows.frame_columns(inputs)
        _check_names(signature.input_names, columns.keys(), "column")
        return columns
    if rows.is_records(inputs):
        return rows.records_columns(inputs, signature.input_names)
    return inputs


def _check_names(expected: list[str], given: Iterable[str], what: str = "input") -> None:
    given = list(given)
    missing = [n for n in expected if n not in given]
    unknown = [n for n in given if n not in expected]
    if unknown:
        raise InvalidInputError(
            f"unknown {what} {unknown[0]!r}; the model takes {', '.join(map(repr, expected))}",
            unknown[0],
        )
    if missing:
        raise InvalidInputError(
            f"missing {what} {missing[0]!r}; the model takes {', '.join(map(repr, expected))}",
            missing[0],
        )


def _kind(dtype: np.dtype[Any]) -> str:
    """A dtype as a person would name it: text rather than numpy's 'str672'."""
    names = {"U": "text", "S": "bytes", "O": "mixed values"}
    return names.get(dtype.kind, str(dtype.name))
