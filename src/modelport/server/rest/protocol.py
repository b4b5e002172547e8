"""Open Inference Protocol REST messages: JSON and binary tensor requests in, responses out.

Pure functions over bytes and numpy arrays; nothing here knows about the ASGI app. Every
malformed message raises InvalidInputError naming the field and what was expected.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
import orjson

from modelport.config import ServerLimits
from modelport.errors import InvalidInputError
from modelport.rows import records_columns
from modelport.server.tensors import (
    DTYPES,
    InferRequest,
    RequestedOutput,
    check_shape,
    check_strings,
    count_error,
    datatype_of,
    from_bytes,
    json_inputs,
    pack_bytes,
    parse_json,
    shaped_values,
)
from modelport.signature import NUMBERS, Signature, json_array

_KINDS = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}  # others: integers
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_NULLABLE = NUMBERS | {type(None)}
_ARRAY_CODES = {"FP32": "f", "FP64": "d"}  # the array module's codes for C float and double


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
    check_strings(inputs.items(), limits)
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


def _parse_tensor(
    index: int, tensor: Any, binary: memoryview, header_length: int | None, limits: ServerLimits
) -> tuple[str, str, np.ndarray, int]:
    """One input tensor: name, datatype, array, and the bytes of the binary part it used."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise _fail(f"inputs[{index}] must be an object with a string 'name'")
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
        return name, datatype, from_bytes(name, datatype, shape, binary[:size], limits), size
    if "data" not in tensor:
        raise _fail(f"input {name!r} needs 'data' (or binary_data_size)", name)
    return name, datatype, _from_json(name, datatype, shape, tensor["data"], limits), 0


def _from_json(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, limits: ServerLimits
) -> np.ndarray:
    code = _ARRAY_CODES.get(datatype)
    if code is not None and type(data) is list and len(data) <= limits.max_elements:
        # Most requests: one flat list of numbers for FP32/FP64. The array module takes it
        # at C speed and refuses anything but numbers (TypeError: null, text, a nested list;
        # OverflowError: an integer beyond any float), which the walk below then names. Too
        # large for the type makes inf, refused as such later.
        try:
            numbers = array(code, data)
        except (TypeError, OverflowError):
            pass
        else:
            if len(numbers) != math.prod(shape):
                raise count_error(name, len(numbers), shape)
            return np.frombuffer(numbers, DTYPES[datatype]).reshape(shape)
    found = shaped_values(name, data, shape, limits)
    if datatype == "BYTES":
        if not found.kinds <= {str}:
            raise _fail(f"input {name!r}: BYTES data must be strings", name)
        return np.array(found.values, dtype=object).reshape(shape)
    if datatype in _FLOATS and None.__class__ in found.kinds and found.kinds <= _NULLABLE:
        # null: JSON's missing number, NaN (refused later except in a tabular model's column).
        values = [math.nan if v is None else v for v in found.values]
        return np.array(values, dtype=DTYPES[datatype]).reshape(shape)
    if not found.kinds <= NUMBERS:
        raise _fail(
            f"input {name!r}: data must be {_describe(datatype)} for datatype {datatype}", name
        )
    if datatype in _FLOATS and bool not in found.kinds:  # numbers to floats
        # Too large for the type: inf, refused as such. The array module converts at C speed
        # and overflows to inf quietly, which numpy does only under an errstate (a context
        # manager costs as much as the conversion).
        try:
            if code is not None:
                return np.frombuffer(array(code, found.values), DTYPES[datatype]).reshape(shape)
            with np.errstate(over="ignore"):
                return np.array(found.values, dtype=DTYPES[datatype]).reshape(shape)
        except OverflowError:  # an integer beyond any float: refused below
            pass
    loose = json_array(found, (len(found.values),))
    if loose.size and loose.dtype.kind not in _KINDS.get(datatype, "iu"):
        raise _fail(
            f"input {name!r}: data must be {_describe(datatype)} for datatype {datatype}", name
        )
    target = DTYPES[datatype]
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


def _fail(message: str, name: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, name)


def parse_v1_request(body: bytes, signature: Signature, limits: ServerLimits) -> tuple[int, Any]:
    """How many instances a V1 ``{"instances": [...]}`` body holds, and the inputs they make
    (the ``:predict`` form)."""
    message = parse_json(body, limits)
    instances = message.get("instances") if isinstance(message, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError('the body must be {"instances": [...]}, a non-empty list')
    if all(isinstance(i, dict) for i in instances):  # {column: value}: names the row's fault
        values = records_columns(instances, signature.input_names)
    elif len(signature.inputs) == 1:
        values = {signature.inputs[0].name: instances}
    else:  # validate_inputs says how many inputs the model takes
        return len(instances), instances
    inputs = json_inputs(values, limits)  # arrays before numpy may choose a dtype
    check_strings(inputs.items(), limits)
    return len(instances), inputs
