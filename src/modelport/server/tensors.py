"""Tensors as every door carries them: the Open Inference Protocol's datatypes, a parsed request,
and the checks that come before any array is allocated (JSON depth, shapes, raw bytes, text).

Pure functions over bytes and numpy arrays; nothing here knows about HTTP or gRPC. Every
malformed message raises InvalidInputError naming the field and what was expected.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.config import ServerLimits
from modelport.errors import InvalidInputError
from modelport.signature import DATATYPES, MAX_RANK, Leaves, json_array, json_leaves

# Open Inference Protocol datatype -> numpy dtype (BYTES travel as Python str objects).
DTYPES: dict[str, np.dtype[Any]] = {
    v2: np.dtype(object if name == "string" else name) for name, v2 in DATATYPES.items()
}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request-level default


@dataclass
class InferRequest:
    """A parsed inference request: named input arrays and which outputs to return how."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str] = field(default_factory=dict)  # as the request declared them
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False


def _fail(message: str, name: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, name)


_CHUNK = 1 << 20


def check_depth(body: bytes, max_depth: int) -> None:
    """Refuse JSON nested deeper than ``max_depth`` before any parser recurses into it.

    Linear in the body, in C-speed passes over bounded chunks: a bracket nests unless an odd
    number of unescaped quotes comes before it (it is then inside a string).
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    if b"\\" in body:
        # Escapes pair up from the left, as a JSON reader takes them: dropping escaped
        # backslashes, then escaped quotes, leaves only the quotes that open or close strings.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = 0
    inside = 0  # 1: the chunk starts inside a string
    for start in range(0, len(body), _CHUNK):
        codes = np.frombuffer(body, np.uint8, min(_CHUNK, len(body) - start), start)
        opens = (codes == 0x5B) | (codes == 0x7B)
        brackets = np.flatnonzero(opens | (codes == 0x5D) | (codes == 0x7D))
        if inside or body.find(b'"', start, start + len(codes)) >= 0:
            quotes = np.flatnonzero(codes == 0x22)
            brackets = brackets[(np.searchsorted(quotes, brackets) + inside) % 2 == 0]
            inside = (inside + len(quotes)) % 2
        if brackets.size:
            running = np.cumsum(np.where(opens[brackets], 1, -1))
            if depth + int(running.max()) > max_depth:
                raise _fail(f"JSON is nested deeper than the limit of {max_depth} levels")
            depth += int(running[-1])


def parse_json(body: bytes, limits: ServerLimits) -> Any:
    check_depth(body, limits.max_json_depth)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "not valid UTF-8" in str(exc):  # orjson speaks of str and surrogates here
            raise _fail("malformed JSON: the body is not UTF-8 text") from None
        if re.search(rb"\bNaN\b|\bInfinity\b", body):
            raise _fail(
                "malformed JSON: NaN and Infinity are not JSON numbers; send such values as "
                "binary tensors (and start the server with --allow-non-finite)"
            ) from None
        raise _fail(f"malformed JSON: {exc}") from None


def check_shape(name: str, value: Any, limits: ServerLimits) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int for d in value):  # bool is not
        raise _fail(f"input {name!r}: 'shape' must be a list of integers, got {value!r}", name)
    if len(value) > MAX_RANK:
        raise _fail(f"input {name!r}: shape has {len(value)} dimensions, over {MAX_RANK}", name)
    if value and min(value) < 0:
        raise _fail(f"input {name!r}: shape {value} has a negative dimension", name)
    # Every dimension on its own too: a zero elsewhere must not let 2**64 through to numpy.
    for dim in value:
        if dim > limits.max_elements:
            raise _fail(
                f"input {name!r}: shape {value} has a dimension of {dim}, more elements than "
                f"the limit of {limits.max_elements}",
                name,
            )
    if math.prod(value) > limits.max_elements:  # at most 32 dims of bounded size: cheap
        raise _fail(
            f"input {name!r}: shape {value} has more elements than the limit of "
            f"{limits.max_elements}",
            name,
        )
    return tuple(value)


def count_error(name: str, got: int | None, shape: tuple[int, ...]) -> InvalidInputError:
    """``got`` None: more values than the shape needs (counting stopped there)."""
    needs = math.prod(shape)
    return _fail(
        f"input {name!r}: data has {f'more than {needs}' if got is None else got} values but "
        f"shape {list(shape)} needs {needs}",
        name,
    )


def check_finite(inputs: dict[str, np.ndarray], columns: Collection[str] = ()) -> None:
    """Refuse NaN and Infinity (including float overflow) in any float input; NaN is allowed
    in ``columns``, a tabular model's column inputs, where it is the missing value."""
    for name, array in inputs.items():
        if array.dtype.kind != "f" or np.isfinite(array).all():
            continue
        if name not in columns or np.isinf(array).any():
            raise _fail(
                f"input {name!r} contains NaN or Infinity (or a value too large for "
                f"{array.dtype.name}), which this server does not accept; start it with "
                "--allow-non-finite if the model handles them",
                name,
            )


def from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview | bytes,
    limits: ServerLimits, field: str = "binary_data_size",
) -> np.ndarray:  # fmt: skip
    """A tensor from its raw little-endian bytes; ``field`` names them in error messages."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _unpack_bytes(name, raw, shape, limits)
        if len(items) != count:
            raise count_error(name, len(items), shape)
        return np.array(items, dtype=object).reshape(shape)
    dtype = DTYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise _fail(
            f"input {name!r}: {field} is {len(raw)} bytes but shape {list(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}",
            name,
        )
    if datatype == "BOOL" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise _fail(f"input {name!r}: BOOL bytes must be 0 or 1", name)
    # A copy: models (code models especially) may compute in place on their inputs.
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _unpack_bytes(
    name: str, raw: memoryview | bytes, shape: tuple[int, ...], limits: ServerLimits
) -> list[str | bytes]:
    """The elements, decoding none beyond the ``shape``'s count or the string limit."""
    count = math.prod(shape)
    items: list[str | bytes] = []
    offset = text = 0
    while offset < len(raw):
        if len(items) == count:
            raise count_error(name, None, shape)
        if offset + 4 > len(raw):
            raise _fail(f"input {name!r}: BYTES element length is cut off", name)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _fail(f"input {name!r}: a BYTES element runs past its binary data", name)
        text += length + STRING_OVERHEAD
        if text > limits.max_string_bytes:
            raise strings_error(name, limits)
        item = bytes(raw[offset : offset + length])
        try:  # text for string models; anything else (an image, say) stays bytes
            items.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            items.append(item)
        offset += length
    return items


# What a string costs the server beyond its text: a Python object and a pointer to it. Counted
# in the string budget, so that millions of empty strings cost what they really do.
STRING_OVERHEAD = 64


def strings_error(name: str, limits: ServerLimits) -> InvalidInputError:
    return _fail(
        f"input {name!r}: the request's strings add up to more than the limit of "
        f"{limits.max_string_bytes} bytes (max_string_bytes; each string counts its UTF-8 "
        f"bytes and {STRING_OVERHEAD} for the object that holds it)",
        name,
    )


def check_strings(inputs: Iterable[tuple[str, Any]], limits: ServerLimits) -> None:
    """Refuse a request whose strings add up to more than ``limits.max_string_bytes`` (UTF-8),
    the input where they pass it named."""
    left = limits.max_string_bytes
    for name, array in inputs:
        if not isinstance(array, np.ndarray) or array.dtype != object:
            continue
        items = array.ravel().tolist()
        try:
            # Characters, at C speed: no more than the bytes.
            size = sum(map(len, items)) + STRING_OVERHEAD * len(items)
        except TypeError:  # numbers too wide for int64, not text
            continue
        if size <= left < 4 * size:  # a character takes up to 4 bytes: count them exactly
            size = STRING_OVERHEAD * len(items) + sum(
                len(v.encode("utf-8", "surrogatepass")) if isinstance(v, str) else len(v)
                for v in items
            )
        left -= size
        if left < 0:
            raise strings_error(name, limits)


def shaped_values(name: str, data: Any, shape: tuple[int, ...], limits: ServerLimits) -> Leaves:
    """The values of client JSON ``data`` for a declared ``shape``, row-major, nested or flat.

    Walked and counted before numpy sees them (see signature.json_leaves).
    """
    try:
        found = json_leaves(data, limits.max_elements)
    except (TypeError, ValueError) as exc:
        raise _fail(f"input {name!r}: data is {exc}", name) from None
    if found is None:
        raise count_error(name, None, shape)
    if len(found.values) != math.prod(shape):
        raise count_error(name, len(found.values), shape)
    return found


def json_inputs(values: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    """Client JSON values as arrays, each walked before numpy sees it (see
    signature.json_leaves); check_strings is the caller's, once per request.

    A value that makes no array (ragged lists, text beside numbers) stays as it is:
    validate_inputs refuses it, in the words it has for every caller.
    """
    inputs: dict[str, Any] = {}
    for name, value in values.items():
        inputs[name] = value
        try:
            found = json_leaves(value, limits.max_elements)
        except (TypeError, ValueError):
            continue
        if found is None:
            raise _fail(
                f"input {name!r}: data has more elements than the limit of {limits.max_elements}",
                name,
            )
        try:
            inputs[name] = json_array(found)
        except ValueError:
            continue
    return inputs


_V2_OF = {dtype: v2 for v2, dtype in DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    v2 = _V2_OF.get(array.dtype)  # a dict hit; dtype.name is slow on the hot path
    if v2 is not None:
        return v2
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return DATATYPES[array.dtype.name]
    except KeyError:
        raise ValueError(f"outputs of dtype {array.dtype} cannot be sent") from None


def pack_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)
