"""Open Inference Protocol messages: JSON and binary tensor requests in, responses out.

Pure functions over bytes and numpy arrays; nothing here knows about HTTP. Every malformed
message raises InvalidInputError naming the field and what was expected.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.config import ServerLimits
from modelport.errors import InvalidInputError
from modelport.signature import DATATYPES

# Open Inference Protocol datatype -> numpy dtype (BYTES travel as Python str objects).
DTYPES: dict[str, np.dtype[Any]] = {
    v2: np.dtype(object if name == "string" else name) for name, v2 in DATATYPES.items()
}
MAX_RANK = 32  # numpy's own limit is 64; no model takes more
_KINDS = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}  # others: integers


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


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_CHUNK = 1 << 22


def check_depth(body: bytes, max_depth: int) -> None:
    """Refuse JSON nested deeper than ``max_depth`` before any parser recurses into it.

    Brackets are counted in C-speed passes: strings are blanked first (their brackets do not
    nest), then depth is a running sum over bounded chunks, so memory stays flat.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    text = _STRING.sub(b'""', body)
    depth = 0
    for start in range(0, len(text), _CHUNK):
        codes = np.frombuffer(text, np.uint8, min(_CHUNK, len(text) - start), start)
        steps = np.zeros(len(codes), np.int32)
        steps[(codes == 0x5B) | (codes == 0x7B)] = 1
        steps[(codes == 0x5D) | (codes == 0x7D)] = -1
        running = np.cumsum(steps) + depth
        if running.size and int(running.max()) > max_depth:
            raise _fail(f"JSON is nested deeper than the limit of {max_depth} levels")
        depth = int(running[-1]) if running.size else depth


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


def parse_infer_request(
    body: bytes, header_length: int | None, limits: ServerLimits
) -> InferRequest:
    """Parse a JSON request, or a binary one when ``header_length`` is given."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise _fail(
                f"Inference-Header-Content-Length {header_length} must be within the body "
                f"of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    message = parse_json(header, limits)
    if not isinstance(message, dict):
        raise _fail("the request must be a JSON object with an 'inputs' list")
    tensors = message.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise _fail("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        name, datatype, array, used = _parse_tensor(
            i, tensor, binary[offset:], header_length, limits
        )
        if name in inputs:
            raise _fail(f"input {name!r} appears more than once", name)
        inputs[name] = array
        datatypes[name] = datatype
        offset += used
    if offset != len(binary):
        raise _fail(
            f"the binary inputs declare {offset} bytes but the body carries {len(binary)} "
            "after the JSON header; binary_data_size values must add up to the binary part"
        )
    parameters = _object(message.get("parameters"), "parameters")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=request_id,
        parameters=parameters,
        outputs=_requested_outputs(message.get("outputs")),
        binary_output=_flag(parameters, "binary_data_output"),
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"'{what}' must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise _fail(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail("'outputs' must be a list of {\"name\": ...} objects")
    requested: list[RequestedOutput] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail("each entry of 'outputs' needs a string 'name'")
        if any(r.name == item["name"] for r in requested):
            raise _fail(f"output {item['name']!r} is requested more than once")
        params = _object(item.get("parameters"), f"outputs[{item['name']}].parameters")
        binary = _flag(params, "binary_data") if "binary_data" in params else None
        requested.append(RequestedOutput(item["name"], binary))
    return requested


def check_shape(name: str, value: Any, limits: ServerLimits) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise _fail(f"input {name!r}: 'shape' must be a list of integers, got {value!r}", name)
    if len(value) > MAX_RANK:
        raise _fail(f"input {name!r}: shape has {len(value)} dimensions, over {MAX_RANK}", name)
    if any(d < 0 for d in value):
        raise _fail(f"input {name!r}: shape {value} has a negative dimension", name)
    # Checked before anything is allocated, stepwise so that huge dims stay cheap.
    count = 1
    for dim in value:
        count *= dim
        if count > limits.max_elements:
            raise _fail(
                f"input {name!r}: shape {value} has more elements than the limit of "
                f"{limits.max_elements}",
                name,
            )
    return tuple(value)


def _parse_tensor(
    index: int, tensor: Any, binary: memoryview, header_length: int | None, limits: ServerLimits
) -> tuple[str, str, np.ndarray, int]:
    """One input tensor: name, datatype, array, and the bytes of the binary part it used."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise _fail(f"inputs[{index}] needs a string 'name'")
    name = tensor["name"]
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        raise _fail(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}",
            name,
        )
    shape = check_shape(name, tensor.get("shape"), limits)
    params = _object(tensor.get("parameters"), f"inputs[{name}].parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if header_length is None:
            raise _fail(
                f"input {name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header",
                name,
            )
        if "data" in tensor:
            raise _fail(f"input {name!r} has both 'data' and binary_data_size", name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(f"input {name!r}: binary_data_size must be an integer >= 0", name)
        if size > len(binary):
            raise _fail(
                f"input {name!r}: binary_data_size {size} is more than the {len(binary)} "
                "bytes left in the body",
                name,
            )
        return name, datatype, from_bytes(name, datatype, shape, binary[:size]), size
    if "data" not in tensor:
        raise _fail(f"input {name!r} needs 'data' (or binary_data_size)", name)
    return name, datatype, _from_json(name, datatype, shape, tensor["data"]), 0


def count_error(name: str, got: int, shape: tuple[int, ...]) -> InvalidInputError:
    return _fail(
        f"input {name!r}: data has {got} values but shape {list(shape)} needs {math.prod(shape)}",
        name,
    )


def check_finite(inputs: dict[str, np.ndarray]) -> None:
    """Refuse NaN and Infinity (including float overflow) in any float input."""
    for name, array in inputs.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _fail(
                f"input {name!r} contains NaN or Infinity (or a value too large for "
                f"{array.dtype.name}), which this server does not accept; start it with "
                "--allow-non-finite if the model handles them",
                name,
            )


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise _fail(f"input {name!r}: BYTES data must be strings", name)
        if len(flat) != math.prod(shape):
            raise count_error(name, len(flat), shape)
        return np.array(flat, dtype=object).reshape(shape)
    target = DTYPES[datatype]
    try:
        loose = np.asarray(data)
    except ValueError:
        raise _fail(
            f"input {name!r}: data is ragged: nested lists of unequal length", name
        ) from None
    if datatype == "UINT64" and loose.dtype.kind in "fO":
        # numpy reads ints beyond int64 mixed with small ones as float64: go by the values.
        flat = _flatten(data)
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64 for v in flat):
            loose = np.array(flat, dtype=np.uint64)
    if loose.size != math.prod(shape):
        raise count_error(name, loose.size, shape)
    if loose.size and loose.dtype.kind not in _KINDS.get(datatype, "iu"):
        raise _fail(
            f"input {name!r}: data must be {_describe(datatype)} for datatype {datatype}", name
        )
    if target.kind in "iu" and loose.size:
        info = np.iinfo(target)
        if loose.min() < info.min or loose.max() > info.max:
            raise _fail(
                f"input {name!r}: values must be within [{info.min}, {info.max}] for {datatype}",
                name,
            )
    return loose.astype(target, copy=False).reshape(shape)


def _describe(datatype: str) -> str:
    if datatype == "BOOL":
        return "true/false values"
    if datatype.startswith("FP"):
        return "numbers"
    return "integers"


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview | bytes,
    field: str = "binary_data_size",
) -> np.ndarray:  # fmt: skip
    """A tensor from its raw little-endian bytes; ``field`` names them in error messages."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _unpack_bytes(name, raw)
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


def _unpack_bytes(name: str, raw: memoryview | bytes) -> list[str | bytes]:
    items: list[str | bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _fail(f"input {name!r}: BYTES element length is cut off", name)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _fail(f"input {name!r}: a BYTES element runs past its binary data", name)
        item = bytes(raw[offset : offset + length])
        try:  # text for string models; anything else (an image, say) stays bytes
            items.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            items.append(item)
        offset += length
    return items


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


def _json_data(array: np.ndarray) -> Any:
    flat = array.ravel()
    if array.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if array.dtype == np.float16:
        return flat.astype(np.float32)
    return flat


def encode_infer_response(
    model_name: str,
    model_version: int | None,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when any output is binary."""
    wanted = request.outputs or [RequestedOutput(name) for name in outputs]
    entries, blobs = [], []
    for item in wanted:
        array = outputs[item.name]
        entry: dict[str, Any] = {
            "name": item.name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if item.binary if item.binary is not None else request.binary_output:
            blob = (
                pack_bytes(array)
                if entry["datatype"] == "BYTES"
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        response["model_version"] = str(model_version)
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
