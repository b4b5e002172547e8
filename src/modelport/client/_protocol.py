"""The Open Inference Protocol's REST messages as the client speaks them; no I/O here.

Request bodies from arrays, arrays from answers, and the one table that turns an HTTP
status or a transport failure into a modelport error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt
import orjson

from modelport.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    ModelportError,
    OverloadedError,
    PredictionError,
    ServiceUnreachableError,
)
from modelport.rows import column, frame_columns, is_frame, is_records, records_columns
from modelport.signature import DATATYPES, dtype_name

Array: TypeAlias = npt.NDArray[Any]
Outputs: TypeAlias = dict[str, Array]
Version: TypeAlias = "int | str | None"

# Status -> error; anything else is a plain ModelportError. 502 is a proxy that lost the service.
_STATUS_ERRORS: dict[int, type[ModelportError]] = {
    400: InvalidInputError,
    404: ModelNotFoundError,
    500: PredictionError,
    502: OverloadedError,
    503: OverloadedError,
    504: DeadlineExceededError,
}
_NUMPY_DTYPES = {
    v2: np.dtype(object if name == "string" else name) for name, v2 in DATATYPES.items()
}


def model_path(name: str, version: Version = None, suffix: str = "") -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


def full_url(base: httpx.URL, path: str) -> str:
    """For messages: httpx's base URL keeps no slash at its end when it has no path."""
    return f"{str(base).rstrip('/')}/{path.lstrip('/')}"


def auth_headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def encode_request(inputs: Mapping[str, npt.ArrayLike], outputs: Sequence[str] | None) -> bytes:
    """The JSON body of an infer request: flat row-major data, shape and datatype per input."""
    tensors = []
    for name, value in inputs.items():
        array = np.asarray(value)
        try:
            datatype = DATATYPES[dtype_name(array.dtype)]
        except ValueError:
            raise InvalidInputError(
                f"input {name!r}: {array.dtype} has no Open Inference Protocol datatype; "
                f"convert it to one of {', '.join(DATATYPES)}",
                name,
            ) from None
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "data": _data(name, array),
            }
        )
    body: dict[str, Any] = {"inputs": tensors}
    if outputs is not None:
        body["outputs"] = [{"name": output} for output in outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _data(name: str, array: Array) -> Any:
    if array.dtype.kind not in "USO":
        # orjson serializes native-endian, C-contiguous arrays without a Python list in between.
        return np.ascontiguousarray(array.ravel(), dtype=array.dtype.newbyteorder("="))
    data = []
    for item in array.ravel().tolist():
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        elif not isinstance(item, str):
            raise InvalidInputError(
                f"input {name!r}: BYTES tensors hold str or bytes, got {type(item).__name__}", name
            )
        data.append(item)
    return data


def decode_outputs(answer: Any, path: str) -> Outputs:
    """Arrays from an infer response, reshaped to each output's shape."""
    try:
        return {
            tensor["name"]: np.array(
                tensor["data"], dtype=_NUMPY_DTYPES[tensor["datatype"]]
            ).reshape(tensor["shape"])
            for tensor in answer["outputs"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelportError(
            f"the answer to POST {path} is not an infer response this client can read "
            f"({exc!r}); is it an Open Inference Protocol server sending outputs as JSON data?"
        ) from None


_DTYPES = {v2: name for name, v2 in DATATYPES.items()}


def table_inputs(metadata: Mapping[str, Any], inputs: Any) -> dict[str, Any]:
    """A DataFrame or a list of ``{column: value}`` rows as the model's named inputs, each
    column typed as the model's metadata says (rows.py reads each value)."""
    specs = {t["name"]: t for t in metadata.get("inputs", [])}
    dtypes = {name: _DTYPES.get(t.get("datatype", ""), "float64") for name, t in specs.items()}
    if is_frame(inputs) and len(specs) == 1 and next(iter(specs)) not in map(str, inputs.columns):
        given: Mapping[str, Any] = {next(iter(specs)): inputs.to_numpy()}  # one matrix
    elif is_frame(inputs):
        given = frame_columns(inputs)
        unknown = [n for n in given if n not in specs]
        if unknown:
            raise InvalidInputError(
                f"unknown column {unknown[0]!r}; the model takes {', '.join(map(repr, specs))}",
                unknown[0],
            )
    else:
        given = records_columns(inputs, list(specs))
    named: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in given:
            raise InvalidInputError(
                f"missing column {name!r}; the model takes {', '.join(map(repr, specs))}", name
            )
        dtype = dtypes[name]
        if list(spec.get("shape", [])) == [-1, 1]:
            values = column(name, dtype, given[name])
        else:
            values = np.asarray(given[name])
        if dtype != "string" and np.can_cast(values.dtype, dtype, "same_kind"):
            values = values.astype(dtype)  # the server takes the datatype it declares
        named[name] = values
    return named


def is_table(inputs: Any) -> bool:
    return is_frame(inputs) or is_records(inputs)


def single_input_name(metadata: Mapping[str, Any], model: str) -> str:
    """The input to name a bare array after; only single-input models have one."""
    names = [tensor["name"] for tensor in metadata.get("inputs", [])]
    if len(names) != 1:
        raise InvalidInputError(
            f"model {model!r} has inputs {names}; pass a dict of arrays keyed by input name"
        )
    return str(names[0])


def read_answer(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ModelportError(
            f"{response.request.url} answered HTTP {response.status_code} with a body that is "
            "not JSON; is the URL that of an Open Inference Protocol server?"
        ) from None


def error_from_response(response: httpx.Response) -> ModelportError:
    """The modelport error for a non-2xx answer, carrying the server's message."""
    try:
        message = str(orjson.loads(response.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    status, request = response.status_code, response.request
    message = f"{message} (HTTP {status} from {request.method} {request.url})"
    if status in (401, 403):
        return ModelportError(f"{message}; pass the service's token as token=...")
    error = _STATUS_ERRORS.get(status, ModelportError)
    if error is OverloadedError:
        return OverloadedError(message, _retry_after_s(response))
    return error(message)


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return 0.0  # absent, or an HTTP date: no hint beyond our own backoff


def error_from_transport(exc: httpx.TransportError, url: str, timeout_s: float) -> ModelportError:
    if isinstance(exc, httpx.TimeoutException):
        error: ModelportError = DeadlineExceededError(
            f"{url} did not answer within timeout_s={timeout_s:g} ({type(exc).__name__}); "
            "raise timeout_s, or pass fallback=... to answer without the service"
        )
    else:
        error = ServiceUnreachableError(
            f"cannot reach the model service at {url} ({type(exc).__name__}: {exc}); "
            "is it running and is the URL right?"
        )
    error.__cause__ = exc
    return error
