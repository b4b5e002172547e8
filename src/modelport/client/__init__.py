"""Call a modelport service (or any Open Inference Protocol server) from Python.

    with modelport.Client("http://127.0.0.1:8000", fallback={"label": np.array([-1])}) as client:
        client.predict("digits", x)        # -> {"label": array([...]), ...}

``Client`` and ``AsyncClient`` share everything but their I/O:

    _protocol.py   request bodies, decoded outputs, the status -> error table
    _calls.py      the checks of a client's arguments; deadlines, retries, input naming and
                   fallbacks, as generators that yield what to send and when to wait
    _sync.py       Client: drives those with httpx.Client and time.sleep
    _async.py      AsyncClient: with httpx.AsyncClient and asyncio.sleep
"""

from modelport.client._async import AsyncClient
from modelport.client._calls import Fallback, FallbackFunction, Inputs, retry_delay_s
from modelport.client._protocol import (
    Array,
    Outputs,
    Version,
    decode_outputs,
    encode_request,
    error_from_response,
    error_from_transport,
    model_path,
    read_answer,
    single_input_name,
)
from modelport.client._sync import Client

__all__ = [
    "Array",
    "AsyncClient",
    "Client",
    "Fallback",
    "FallbackFunction",
    "Inputs",
    "Outputs",
    "Version",
    "decode_outputs",
    "encode_request",
    "error_from_response",
    "error_from_transport",
    "model_path",
    "read_answer",
    "retry_delay_s",
    "single_input_name",
]
