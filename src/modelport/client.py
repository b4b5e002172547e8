"""Call a modelport service (or any Open Inference Protocol server) from Python.

    with modelport.Client("http://127.0.0.1:8000", fallback={"label": np.array([-1])}) as client:
        client.predict("digits", x)        # -> {"label": array([...]), ...}

``Client`` and ``AsyncClient`` share everything but their I/O: the JSON encoding, the error
table, and the retry schedule are the plain functions and the ``_Budget`` below.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
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
)
from modelport.signature import DATATYPES, dtype_name

Array: TypeAlias = npt.NDArray[Any]
Inputs: TypeAlias = "npt.ArrayLike | Mapping[str, npt.ArrayLike]"
Outputs: TypeAlias = dict[str, Array]
FallbackFunction: TypeAlias = Callable[[str, Inputs, ModelportError], Mapping[str, npt.ArrayLike]]
Fallback: TypeAlias = "FallbackFunction | Mapping[str, npt.ArrayLike] | None"
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
# The service is down, slow or failing: what a fallback stands in for. 4xx errors are the
# caller's to fix, so they are always raised.
_OUTAGES = (OverloadedError, DeadlineExceededError, PredictionError)
_NUMPY_DTYPES = {
    v2: np.dtype(object if name == "string" else name) for name, v2 in DATATYPES.items()
}
_JSON = {"Content-Type": "application/json"}


def model_path(name: str, version: Version = None, suffix: str = "") -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


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


def single_input_name(metadata: Mapping[str, Any], model: str) -> str:
    """The input to name a bare array after; only single-input models have one."""
    names = [tensor["name"] for tensor in metadata.get("inputs", [])]
    if len(names) != 1:
        raise InvalidInputError(
            f"model {model!r} has inputs {names}; pass a dict of arrays keyed by input name"
        )
    return str(names[0])


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


def read_answer(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ModelportError(
            f"{response.request.url} answered HTTP {response.status_code} with a body that is "
            "not JSON; is the URL that of an Open Inference Protocol server?"
        ) from None


def _full_url(base: httpx.URL, path: str) -> str:
    """For messages: httpx's base URL keeps no slash at its end when it has no path."""
    return f"{str(base).rstrip('/')}/{path.lstrip('/')}"


def error_from_transport(exc: httpx.TransportError, url: str, timeout_s: float) -> ModelportError:
    if isinstance(exc, httpx.TimeoutException):
        error: ModelportError = DeadlineExceededError(
            f"{url} did not answer within timeout_s={timeout_s:g} ({type(exc).__name__}); "
            "raise timeout_s, or pass fallback=... to answer without the service"
        )
    else:
        error = OverloadedError(
            f"cannot reach the model service at {url} ({type(exc).__name__}: {exc}); "
            "is it running and is the URL right?",
            retry_after_s=0.0,
        )
    error.__cause__ = exc
    return error


def retry_delay_s(
    attempt: int, backoff_s: float, retry_after_s: float, remaining_s: float
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (0-based), or None to give up now.

    Exponential backoff with up to 10% jitter; a server's Retry-After wins when it is longer.
    A wait that would not leave time for another attempt is not worth starting.
    """
    delay = max(backoff_s * 2**attempt * (1 + 0.1 * random.random()), retry_after_s)
    return delay if delay < remaining_s else None


class _Budget:
    """One call's deadline and retries: the I/O-free half of every request loop."""

    def __init__(self, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.timeout_s, self.retries_left, self.backoff_s = timeout_s, retries, backoff_s
        self.deadline = time.monotonic() + timeout_s
        self.attempt = 0

    def remaining_s(self, url: str) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{url} did not answer within timeout_s={self.timeout_s:g}")
        return remaining

    def retry_delay_s(self, error: ModelportError) -> float | None:
        """How long to wait before retrying after ``error``; None means raise it."""
        if not isinstance(error, OverloadedError) or self.retries_left <= 0:
            return None
        delay = retry_delay_s(
            self.attempt, self.backoff_s, error.retry_after_s, self.deadline - time.monotonic()
        )
        if delay is not None:
            self.retries_left -= 1
            self.attempt += 1
        return delay


@dataclass(frozen=True)
class _Options:
    """What both clients are built with, checked once."""

    timeout_s: float
    retries: int
    backoff_s: float
    fallback: Fallback

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0")

    def budget(self) -> _Budget:
        return _Budget(self.timeout_s, self.retries, self.backoff_s)

    def fall_back(self, name: str, inputs: Inputs, error: ModelportError) -> Outputs:
        """The fallback's answer to a failed predict, or ``error`` raised when there is none."""
        if self.fallback is None:
            raise error
        answer = self.fallback(name, inputs, error) if callable(self.fallback) else self.fallback
        return {key: np.asarray(value) for key, value in answer.items()}  # as the service's


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


class Client:
    """A blocking client for a modelport service.

        client = modelport.Client("http://127.0.0.1:8000", timeout_s=2.0, fallback=default)
        client.predict("digits", x)["label"]

    ``timeout_s`` bounds a whole call, retries and waits included. Overload (503), a lost
    connection and a proxy's 502 are retried ``retries`` times with exponential backoff
    from ``backoff_s``, honouring Retry-After when the deadline allows; 4xx never are.
    ``token`` is sent as ``Authorization: Bearer``. ``fallback`` (a mapping of array-likes, or a
    function ``(name, inputs, error) -> mapping``; its values come back as arrays) answers
    ``predict`` when the service is down, too slow or failing (OverloadedError,
    DeadlineExceededError, PredictionError); without it those are raised. InvalidInputError
    (400) and ModelNotFoundError (404) are always raised.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        token: str | None = None,
        fallback: Fallback = None,
    ) -> None:
        self._options = _Options(timeout_s, retries, backoff_s, fallback)
        self._input_names: dict[tuple[str, Version], str] = {}
        self._http = httpx.Client(base_url=url, headers=_headers(token))

    def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> Outputs:
        """Run model ``name`` on ``inputs``: one array for a single-input model, else a dict.

            client.predict("digits", {"input": x}, version=2, outputs=["label"])

        Returns the outputs (all, or those named) as arrays keyed by name.
        """
        budget, path = self._options.budget(), model_path(name, version, "/infer")
        try:
            if isinstance(inputs, Mapping):
                named = inputs
            else:
                named = {self._single_input_name(name, version, budget): inputs}
            answer = self._request("POST", path, budget, encode_request(named, outputs))
        except _OUTAGES as error:
            return self._options.fall_back(name, inputs, error)
        return decode_outputs(answer, path)

    def metadata(self, name: str, version: Version = None) -> dict[str, Any]:
        """A model's name, versions, platform, inputs and outputs: ``client.metadata("digits")``."""
        answer: dict[str, Any] = self._request(
            "GET", model_path(name, version), self._options.budget()
        )
        return answer

    def live(self) -> bool:
        """Whether the service is up; one attempt, False when it cannot be reached."""
        return self._probe("/v2/health/live")

    def ready(self) -> bool:
        """Whether the service takes requests now; one attempt, False when unreachable."""
        return self._probe("/v2/health/ready")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _single_input_name(self, name: str, version: Version, budget: _Budget) -> str:
        if (name, version) not in self._input_names:
            metadata = self._request("GET", model_path(name, version), budget)
            self._input_names[name, version] = single_input_name(metadata, name)
        return self._input_names[name, version]

    def _probe(self, path: str) -> bool:
        try:
            return self._http.get(path, timeout=self._options.timeout_s).is_success
        except httpx.TransportError:
            return False

    def _request(self, method: str, path: str, budget: _Budget, body: bytes | None = None) -> Any:
        url = _full_url(self._http.base_url, path)
        while True:
            timeout = budget.remaining_s(url)
            try:
                response = self._http.request(
                    method, path, content=body, headers=_JSON, timeout=timeout
                )
            except httpx.TransportError as exc:
                error = error_from_transport(exc, url, budget.timeout_s)
            else:
                if response.is_success:
                    return read_answer(response)
                error = error_from_response(response)
            delay = budget.retry_delay_s(error)
            if delay is None:
                raise error
            time.sleep(delay)


class AsyncClient:
    """The asyncio twin of ``Client``: same arguments, same behaviour, awaitable methods.

    async with modelport.AsyncClient("http://127.0.0.1:8000") as client:
        outputs = await client.predict("digits", x)
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        token: str | None = None,
        fallback: Fallback = None,
    ) -> None:
        self._options = _Options(timeout_s, retries, backoff_s, fallback)
        self._input_names: dict[tuple[str, Version], str] = {}
        self._http = httpx.AsyncClient(base_url=url, headers=_headers(token))

    async def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> Outputs:
        """Run model ``name`` on ``inputs``; see ``Client.predict``."""
        budget, path = self._options.budget(), model_path(name, version, "/infer")
        try:
            if isinstance(inputs, Mapping):
                named = inputs
            else:
                named = {await self._single_input_name(name, version, budget): inputs}
            answer = await self._request("POST", path, budget, encode_request(named, outputs))
        except _OUTAGES as error:
            return self._options.fall_back(name, inputs, error)
        return decode_outputs(answer, path)

    async def metadata(self, name: str, version: Version = None) -> dict[str, Any]:
        """A model's name, versions, platform, inputs and outputs."""
        answer: dict[str, Any] = await self._request(
            "GET", model_path(name, version), self._options.budget()
        )
        return answer

    async def live(self) -> bool:
        """Whether the service is up; one attempt, False when it cannot be reached."""
        return await self._probe("/v2/health/live")

    async def ready(self) -> bool:
        """Whether the service takes requests now; one attempt, False when unreachable."""
        return await self._probe("/v2/health/ready")

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _single_input_name(self, name: str, version: Version, budget: _Budget) -> str:
        if (name, version) not in self._input_names:
            metadata = await self._request("GET", model_path(name, version), budget)
            self._input_names[name, version] = single_input_name(metadata, name)
        return self._input_names[name, version]

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.get(path, timeout=self._options.timeout_s)).is_success
        except httpx.TransportError:
            return False

    async def _request(
        self, method: str, path: str, budget: _Budget, body: bytes | None = None
    ) -> Any:
        url = _full_url(self._http.base_url, path)
        while True:
            timeout = budget.remaining_s(url)
            try:
                response = await self._http.request(
                    method, path, content=body, headers=_JSON, timeout=timeout
                )
            except httpx.TransportError as exc:
                error = error_from_transport(exc, url, budget.timeout_s)
            else:
                if response.is_success:
                    return read_answer(response)
                error = error_from_response(response)
            delay = budget.retry_delay_s(error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
