"""Client and AsyncClient against a real HTTP server: a small Open Inference Protocol fake
served by uvicorn on a free loopback port, which can be told to be busy, slow or failing.
At the end, the same clients through an httpx transport: modelport's own service in process,
and canned answers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn

import modelport
from modelport.client import AsyncClient, Client, retry_delay_s
from modelport.errors import (
    DeadlineExceededError,
    ModelportError,
    OverloadedError,
    ServiceUnreachableError,
)

DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
# name -> (versions, input names); "echo" returns its inputs, "double" answers y = x * 2.
MODELS = {"echo": ([1], ["a", "b"]), "double": ([1, 2], ["x"])}


@dataclass
class FakeService:
    """Enough of the V2 REST API for a client; each knob shapes the next answers."""

    busy: int = 0  # answer this many requests with 503 first
    retry_after: str = "0"
    delay_s: float = 0.0
    failure: tuple[int, str] | None = None
    token: str | None = None
    ready: bool = True
    seen: list[tuple[str, str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.seen.append((method, path, orjson.loads(body) if body else None))
        status, answer, headers = await self.answer(method, path, body, dict(scope["headers"]))
        headers = [(b"content-type", b"application/json"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    async def answer(
        self, method: str, path: str, body: bytes, headers: dict[bytes, bytes]
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if path == "/v2/health/live":
            return 200, {"live": True}, []
        if path == "/v2/health/ready":
            return (200 if self.ready else 503), {"ready": self.ready}, []
        if self.token and headers.get(b"authorization") != f"Bearer {self.token}".encode():
            return 401, {"error": "missing or wrong bearer token"}, []
        await asyncio.sleep(self.delay_s)
        if self.busy:
            self.busy -= 1
            return 503, {"error": "queue full"}, [(b"retry-after", self.retry_after.encode())]
        if self.failure:
            return self.failure[0], {"error": self.failure[1]}, []
        parts = path.split("/")[3:]  # name [versions v] [infer]
        name, version = parts[0], int(parts[2]) if parts[1:2] == ["versions"] else None
        if name not in MODELS or (version is not None and version not in MODELS[name][0]):
            return 404, {"error": f"model {name!r} version {version} not found"}, []
        if method == "GET":
            specs = [{"name": n, "datatype": "FP32", "shape": [-1, 2]} for n in MODELS[name][1]]
            return 200, {"name": name, "versions": ["1"], "inputs": specs, "outputs": specs}, []
        request = orjson.loads(body)
        outputs = []
        for tensor in request["inputs"]:
            array = np.array(tensor["data"], dtype=DTYPES[tensor["datatype"]])
            if name == "double":
                tensor = {**tensor, "name": "y", "data": (array * 2).tolist()}
            outputs.append(tensor)
        wanted = [o["name"] for o in request.get("outputs", outputs)]
        outputs = [o for o in outputs if o["name"] in wanted]
        return 200, {"model_name": name, "model_version": "1", "outputs": outputs}, []


@dataclass
class Served:
    url: str
    fake: FakeService

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.fake(scope, receive, send)  # a fresh fake per test, one server per module


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}", FakeService())
    config = uvicorn.Config(served, log_level="error", lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield served
    server.should_exit = True
    thread.join(5)
    sock.close()


@pytest.fixture
def service(served: Served) -> Served:
    served.fake = FakeService()
    return served


@pytest.fixture
def down_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def infer_calls(fake: FakeService) -> list[Any]:
    return [body for method, path, body in fake.seen if path.endswith("/infer")]


SAMPLES = {
    "bool": np.array([[True, False, True], [False, False, True]]),
    "uint8": np.array([[0, 1, 255]], dtype=np.uint8),
    "uint16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "uint32": np.array([[0], [2**32 - 1]], dtype=np.uint32),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "int8": np.array([[-128, 0, 127]], dtype=np.int8),
    "int16": np.array([[-(2**15), 2**15 - 1]], dtype=np.int16),
    "int32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "int64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "float16": np.array([[0.1, -2.5, 65504]], dtype=np.float16),
    "float32": np.array([[0.1, 1e-30], [3.4e38, -1.5]], dtype=np.float32),
    "float64": np.array([[0.1, 1e-300, np.pi]]),
    "str": np.array([["a", "héllo", ""]]),
}


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_predict_round_trips_each_datatype(service: Served, kind: str) -> None:
    sent = SAMPLES[kind]
    with Client(service.url) as client:
        got = client.predict("echo", {"a": sent, "b": sent.T})
    assert set(got) == {"a", "b"}
    for name, array in [("a", sent), ("b", sent.T)]:
        assert got[name].shape == array.shape
        if kind == "str":
            assert got[name].dtype == object
            assert got[name].tolist() == array.tolist()
        else:
            assert got[name].dtype == array.dtype
            np.testing.assert_array_equal(got[name], array)


def test_bytes_and_lists_are_accepted_as_inputs(service: Served) -> None:
    with Client(service.url) as client:
        got = client.predict("echo", {"a": np.array([b"ab", b"c"]), "b": [[1.5, 2.5]]})
    assert got["a"].tolist() == ["ab", "c"]
    np.testing.assert_array_equal(got["b"], np.array([[1.5, 2.5]]))


def test_a_bare_array_is_named_from_the_metadata_once(service: Served) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    with Client(service.url) as client:
        first = client.predict("double", x)
        second = client.predict("double", x + 1)
    np.testing.assert_array_equal(first["y"], x * 2)
    np.testing.assert_array_equal(second["y"], (x + 1) * 2)
    assert [m for m, path, _ in service.fake.seen if m == "GET"] == ["GET"]


def test_version_and_outputs_reach_the_server(service: Served) -> None:
    with Client(service.url) as client:
        got = client.predict("double", {"x": np.ones(2)}, version=2, outputs=["y"])
    np.testing.assert_array_equal(got["y"], [2.0, 2.0])
    _, path, body = service.fake.seen[-1]
    assert path == "/v2/models/double/versions/2/infer"
    assert body["outputs"] == [{"name": "y"}]


def test_metadata(service: Served) -> None:
    with Client(service.url) as client:
        assert client.metadata("double")["inputs"][0]["name"] == "x"
        with pytest.raises(modelport.ModelNotFoundError, match="'double' version 9 not found"):
            client.metadata("double", version=9)


def test_a_multi_input_model_needs_a_dict(service: Served) -> None:
    with Client(service.url) as client, pytest.raises(modelport.InvalidInputError, match="dict"):
        client.predict("echo", np.ones(2))


def test_a_dtype_without_a_datatype_is_refused_before_sending(service: Served) -> None:
    with Client(service.url) as client, pytest.raises(modelport.InvalidInputError, match="complex"):
        client.predict("echo", {"a": np.ones(2, dtype=np.complex64)})
    assert service.fake.seen == []


def test_503_is_retried_until_it_succeeds(service: Served) -> None:
    service.fake.busy = 2
    with Client(service.url, retries=3, backoff_s=0.01) as client:
        got = client.predict("double", {"x": np.ones(1)})
    np.testing.assert_array_equal(got["y"], [2.0])
    assert len(infer_calls(service.fake)) == 3


def test_503_after_every_retry_raises_overloaded(service: Served) -> None:
    service.fake.busy = 10
    with (
        Client(service.url, retries=2, backoff_s=0.01) as client,
        pytest.raises(OverloadedError, match="queue full"),
    ):
        client.predict("double", {"x": np.ones(1)})
    assert len(infer_calls(service.fake)) == 3


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(service: Served) -> None:
    service.fake.busy, service.fake.retry_after = 1, "30"
    start = time.monotonic()
    with Client(service.url, timeout_s=2.0) as client, pytest.raises(OverloadedError) as caught:
        client.predict("double", {"x": np.ones(1)})
    assert time.monotonic() - start < 1.0
    assert caught.value.retry_after_s == 30.0
    assert len(infer_calls(service.fake)) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, modelport.InvalidInputError),
        (404, modelport.ModelNotFoundError),
        (500, modelport.PredictionError),
        (503, OverloadedError),
        (504, DeadlineExceededError),
        (501, ModelportError),
    ],
)
def test_statuses_map_to_modelport_errors(
    service: Served, status: int, error: type[Exception]
) -> None:
    service.fake.failure = (status, f"the server says {status}")
    with Client(service.url, retries=0) as client, pytest.raises(error) as caught:
        client.predict("double", {"x": np.ones(1)})
    assert f"the server says {status}" in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)


def test_4xx_is_neither_retried_nor_covered_by_the_fallback(service: Served) -> None:
    service.fake.failure = (400, "input 'x': expected float32, got a string")
    with (
        Client(service.url, retries=3, fallback={"y": np.zeros(1)}) as client,
        pytest.raises(modelport.InvalidInputError, match="expected float32"),
    ):
        client.predict("double", {"x": np.ones(1)})
    assert len(infer_calls(service.fake)) == 1


def test_a_slow_service_answers_with_the_fallback_value(service: Served) -> None:
    service.fake.delay_s = 1.0
    default = {"y": [-1.0]}  # any array-like: answered as an array, as the service would
    start = time.monotonic()
    with Client(service.url, timeout_s=0.2, fallback=default) as client:
        got = client.predict("double", {"x": np.ones(1)})
    assert time.monotonic() - start < 0.6
    assert isinstance(got["y"], np.ndarray)
    np.testing.assert_array_equal(got["y"], [-1.0])


def test_a_slow_service_without_fallback_raises_deadline_exceeded(service: Served) -> None:
    service.fake.delay_s = 1.0
    with (
        Client(service.url, timeout_s=0.2) as client,
        pytest.raises(DeadlineExceededError, match=r"timeout_s=0\.2"),
    ):
        client.predict("double", {"x": np.ones(1)})


def test_a_failing_model_answers_with_the_fallback(service: Served) -> None:
    service.fake.failure = (500, "model raised ZeroDivisionError")
    with Client(service.url, fallback={"y": np.zeros(1)}) as client:
        assert list(client.predict("double", {"x": np.ones(1)})) == ["y"]


def test_a_service_that_is_down_calls_the_fallback_with_the_error(down_url: str) -> None:
    calls: list[tuple[str, Any, ModelportError]] = []

    def fallback(name: str, inputs: Any, error: ModelportError) -> dict[str, np.ndarray]:
        calls.append((name, inputs, error))
        return {"y": np.zeros(1)}

    x = np.ones(1)
    with Client(down_url, retries=2, backoff_s=0.01, fallback=fallback) as client:
        got = client.predict("double", x)
    np.testing.assert_array_equal(got["y"], [0.0])
    [(name, inputs, error)] = calls
    assert name == "double"
    assert inputs is x
    assert isinstance(error, ServiceUnreachableError)
    assert isinstance(error, ConnectionError)
    assert down_url in str(error)


def test_a_service_that_is_down_raises_naming_the_url(down_url: str) -> None:
    with (
        Client(down_url, retries=1, backoff_s=0.01) as client,
        pytest.raises(ServiceUnreachableError, match="cannot reach the model service") as raised,
    ):
        client.predict("double", {"x": np.ones(1)})
    assert f"{down_url.rstrip('/')}/v2/models/double" in str(raised.value)


def test_health(service: Served, down_url: str) -> None:
    with Client(service.url) as client:
        assert client.live()
        assert client.ready()
        service.fake.ready = False
        assert not client.ready()
    with Client(down_url) as client:
        assert not client.live()
        assert not client.ready()


def test_the_token_travels_as_a_bearer_header(service: Served) -> None:
    service.fake.token = "s3cret"
    with Client(service.url) as client, pytest.raises(ModelportError, match="token"):
        client.predict("double", {"x": np.ones(1)})
    with Client(service.url, token="s3cret") as client:
        np.testing.assert_array_equal(client.predict("double", {"x": np.ones(1)})["y"], [2.0])


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Client("http://127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        Client("http://127.0.0.1:1", retries=-1)


def test_retry_delay_backs_off_exponentially_with_small_jitter() -> None:
    delays = [retry_delay_s(n, 0.1, 0.0, 60.0) for n in range(4)]
    for n, delay in enumerate(delays):
        assert delay is not None
        assert 0.1 * 2**n <= delay <= 0.11 * 2**n
    assert retry_delay_s(0, 0.1, 2.0, 60.0) == 2.0  # Retry-After, when longer, wins
    assert retry_delay_s(0, 0.1, 2.0, 1.5) is None  # and gives up when past the deadline
    assert retry_delay_s(5, 0.1, 0.0, 1.0) is None


# AsyncClient: the same behaviour, awaited.


def test_async_round_trip_and_metadata(service: Served) -> None:
    async def main() -> tuple[dict[str, np.ndarray], dict[str, Any], bool, bool]:
        async with AsyncClient(service.url) as client:
            got = await client.predict("echo", {"a": SAMPLES["str"], "b": SAMPLES["bool"]})
            return got, await client.metadata("double"), await client.live(), await client.ready()

    got, metadata, live, ready = asyncio.run(main())
    assert got["a"].tolist() == SAMPLES["str"].tolist()
    np.testing.assert_array_equal(got["b"], SAMPLES["bool"])
    assert metadata["name"] == "double"
    assert live
    assert ready


def test_async_bare_array_and_retry_on_503(service: Served) -> None:
    service.fake.busy = 2

    async def main() -> dict[str, np.ndarray]:
        async with AsyncClient(service.url, backoff_s=0.01) as client:
            return await client.predict("double", np.ones((1, 2), dtype=np.float32))

    got = asyncio.run(main())
    np.testing.assert_array_equal(got["y"], [[2.0, 2.0]])
    assert got["y"].dtype == np.float32


def test_async_errors_map_and_are_not_retried(service: Served) -> None:
    service.fake.failure = (404, "no model called 'nope'")

    async def main() -> None:
        async with AsyncClient(service.url, retries=3) as client:
            await client.predict("double", {"x": np.ones(1)})

    with pytest.raises(modelport.ModelNotFoundError, match="no model called 'nope'"):
        asyncio.run(main())
    assert len(infer_calls(service.fake)) == 1


def test_async_timeout_and_outage_use_the_fallback(service: Served, down_url: str) -> None:
    service.fake.delay_s = 1.0
    errors: list[ModelportError] = []

    def fallback(name: str, inputs: Any, error: ModelportError) -> dict[str, np.ndarray]:
        errors.append(error)
        return {"y": np.zeros(1)}

    async def main() -> None:
        async with AsyncClient(service.url, timeout_s=0.2, fallback=fallback) as slow:
            await slow.predict("double", {"x": np.ones(1)})
        async with AsyncClient(down_url, backoff_s=0.01, fallback=fallback) as down:
            await down.predict("double", {"x": np.ones(1)})
            assert not await down.live()

    asyncio.run(main())
    assert [type(e) for e in errors] == [DeadlineExceededError, ServiceUnreachableError]


def test_async_without_fallback_raises(down_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(down_url, retries=0) as client:
            await client.predict("double", {"x": np.ones(1)})

    with pytest.raises(ServiceUnreachableError, match=down_url):
        asyncio.run(main())


# transport=...: no network. AsyncClient calls modelport's own service in process.


def test_async_client_through_asgi_transport_predicts_in_process(
    repo: modelport.Repository, tiny_onnx: bytes
) -> None:
    import onnxruntime as ort

    from modelport.config import ServerConfig
    from modelport.server.registry import load_registry
    from modelport.server.service import create_app

    modelport.add_model(repo, "tiny", tiny_onnx)
    app = create_app(repo.root, ServerConfig())
    app.registry = load_registry(repo.root, app.config)  # ASGITransport runs no lifespan
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    transport = httpx.ASGITransport(app=app)

    async def main() -> tuple[bool, dict[str, Any], dict[str, np.ndarray], list[Exception]]:
        errors: list[Exception] = []
        try:
            async with AsyncClient("http://localhost", transport=transport) as client:
                ready, metadata = await client.ready(), await client.metadata("tiny")
                got = await client.predict("tiny", x)
                for name, bad in (("tiny", np.ones((1, 3), np.float32)), ("nope", x)):
                    try:
                        await client.predict(name, {"input": bad})
                    except ModelportError as exc:
                        errors.append(exc)
        finally:
            await app.stop()  # what the lifespan does at shutdown: unloads the models
        return ready, metadata, got, errors

    ready, metadata, got, errors = asyncio.run(main())
    expected = ort.InferenceSession(tiny_onnx).run(None, {"input": x})[0]
    assert ready
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-6)
    [invalid, missing] = errors
    assert isinstance(invalid, modelport.InvalidInputError)
    assert "expected shape [?, 4]" in str(invalid)
    assert isinstance(missing, modelport.ModelNotFoundError)
    assert "no model named 'nope'" in str(missing)


def test_a_mock_transport_answers_the_blocking_client() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"error": "queue full"}, headers={"Retry-After": "0"})
        if len(seen) == 2:
            raise httpx.ConnectError("connection refused", request=request)
        y = {"name": "y", "datatype": "FP32", "shape": [1], "data": [2.0]}
        return httpx.Response(200, json={"outputs": [y]})

    transport = httpx.MockTransport(answer)
    with Client("http://models.test", transport=transport, backoff_s=0.01, token="t") as client:
        got = client.predict("double", {"x": np.ones(1, np.float32)})
    np.testing.assert_array_equal(got["y"], [2.0])
    assert [str(r.url) for r in seen] == ["http://models.test/v2/models/double/infer"] * 3
    assert seen[0].headers["authorization"] == "Bearer t"
    assert orjson.loads(seen[0].content)["inputs"][0]["data"] == [1.0]


def test_a_transport_of_the_other_kind_is_refused_at_once() -> None:
    asgi = httpx.ASGITransport(app=FakeService())  # httpx runs ASGI apps from asyncio only
    with pytest.raises(TypeError, match=r"async only\): pass it to modelport\.AsyncClient"):
        Client("http://models.test", transport=asgi)  # type: ignore[arg-type]
    wsgi = httpx.WSGITransport(app=lambda environ, start_response: [])
    with pytest.raises(TypeError, match=r"pass it to modelport\.Client"):
        AsyncClient("http://models.test", transport=wsgi)  # type: ignore[arg-type]
