"""Open Inference Protocol gRPC messages: ModelInferRequest in, ModelInferResponse out.

Pure functions over protobuf messages and numpy arrays, like modelport.server.rest.protocol for
REST; nothing here knows about the gRPC server. Every malformed request raises
InvalidInputError naming the input, the field and what was expected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelport.config import ServerLimits
from modelport.errors import InvalidInputError
from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb
from modelport.server.tensors import (
    DTYPES,
    STRING_OVERHEAD,
    InferRequest,
    RequestedOutput,
    check_shape,
    check_strings,
    datatype_of,
    from_bytes,
    pack_bytes,
    strings_error,
)

# The typed field of InferTensorContents that carries each datatype; FP16 has none.
CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = tuple(dict.fromkeys(CONTENTS.values()))
# The width each typed field holds on the wire; narrower datatypes are range-checked from it.
_WIRE = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def _fail(message: str, name: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, name)


def parse_infer_request(message: pb.ModelInferRequest, limits: ServerLimits) -> InferRequest:
    """Named input arrays from a request with typed ``contents`` or ``raw_input_contents``.

    ``binary_output`` of the result is true unless the request's parameter
    ``binary_data_output`` is false: the answer then comes in ``raw_output_contents``, as
    Triton answers, whichever way the inputs came.
    """
    if not message.inputs:
        raise _fail("'inputs' must list at least one tensor")
    raw = message.raw_input_contents
    if raw:
        if len(raw) != len(message.inputs):
            raise _fail(
                f"raw_input_contents has {len(raw)} entries but the request has "
                f"{len(message.inputs)} inputs; send one entry per input, in order"
            )
        mixed = [t.name for t in message.inputs if t.HasField("contents")]
        if mixed:
            raise _fail(
                f"input {mixed[0]!r} sets 'contents' but the request also has "
                "raw_input_contents; send every input one way or the other",
                mixed[0],
            )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise _fail(f"inputs[{i}] needs a name")
        if name in inputs:
            raise _fail(f"input {name!r} appears more than once", name)
        datatype = tensor.datatype
        if datatype not in DTYPES:
            raise _fail(
                f"input {name!r}: unknown datatype {datatype!r}; expected one of "
                f"{', '.join(DTYPES)}",
                name,
            )
        shape = check_shape(name, list(tensor.shape), limits)
        if raw:
            array = from_bytes(name, datatype, shape, raw[i], limits, f"raw_input_contents[{i}]")
        else:
            array = _from_contents(name, datatype, shape, tensor.contents, limits)
        inputs[name] = array
        datatypes[name] = datatype
    check_strings(inputs.items(), limits)
    outputs = [RequestedOutput(o.name) for o in message.outputs] or None
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=message.id or None,
        outputs=outputs,
        binary_output=_raw_output_wanted(message),
    )


def _raw_output_wanted(message: pb.ModelInferRequest) -> bool:
    wanted = message.parameters.get("binary_data_output")
    if wanted is None:
        return True
    if wanted.WhichOneof("parameter_choice") != "bool_param":
        raise _fail("parameter 'binary_data_output' must be a bool_param")
    return wanted.bool_param


def _from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents,
    limits: ServerLimits,
) -> np.ndarray:  # fmt: skip
    field = CONTENTS.get(datatype)
    if field is None:
        raise _fail(
            f"input {name!r}: {datatype} has no typed contents field; send it in "
            "raw_input_contents",
            name,
        )
    for other in _FIELDS:
        if other != field and len(getattr(contents, other)):
            raise _fail(
                f"input {name!r}: datatype {datatype} travels in contents.{field}, but "
                f"contents.{other} is set",
                name,
            )
    values: Any = getattr(contents, field)
    if len(values) != math.prod(shape):
        raise _fail(
            f"input {name!r}: contents.{field} has {len(values)} values but shape "
            f"{list(shape)} needs {math.prod(shape)}",
            name,
        )
    if datatype == "BYTES":
        # Before decoding any.
        if sum(map(len, values)) + STRING_OVERHEAD * len(values) > limits.max_string_bytes:
            raise strings_error(name, limits)
        items: list[str | bytes] = []
        for item in values:
            try:  # text for string models; anything else (an image, say) stays bytes
                items.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                items.append(item)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    wire: np.ndarray = np.array(values, dtype=_WIRE[field])
    target = DTYPES[datatype]
    if target != wire.dtype and wire.size:
        info = np.iinfo(target)
        if wire.min() < info.min or wire.max() > info.max:
            raise _fail(
                f"input {name!r}: values must be within [{info.min}, {info.max}] for {datatype}",
                name,
            )
    return wire.astype(target, copy=False).reshape(shape)


def encode_infer_response(
    model_name: str,
    model_version: int,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> pb.ModelInferResponse:
    """The response: raw contents unless the request asked for typed contents and every
    output has a typed field (FP16 and BF16 have none)."""
    names = [o.name for o in request.outputs] if request.outputs else list(outputs)
    datatypes = {name: datatype_of(outputs[name]) for name in names}
    raw = request.binary_output or any(d not in CONTENTS for d in datatypes.values())
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=str(model_version), id=request.id or ""
    )
    for name in names:
        array, datatype = outputs[name], datatypes[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(_raw(array, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.ravel()
            )
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return response


def _raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return pack_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
