"""modelport.serverless: Lambda's HTTP events through the service, in process (no runtime
client: test_lambda_package.py runs the real one). Answers are the REST door's own."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http

import modelport
from lambda_events import function_url, http_api, rest_api
from modelport.serverless.app import LambdaApp, lambda_config, repository_from
from modelport.serverless.events import MAX_BODY_BYTES, MAX_RESPONSE_BYTES

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], np.float32)
SHAPES = [http_api, rest_api, function_url]


@pytest.fixture(scope="module")
def lambda_repo(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: bytes) -> Path:
    root = tmp_path_factory.mktemp("lambda") / "models"
    repo = modelport.Repository.init(root)
    modelport.add_model(repo, "tiny", tiny_onnx)
    return root


@pytest.fixture(scope="module")
def app(lambda_repo: Path) -> LambdaApp:
    return LambdaApp.start(lambda_repo, lambda_config({}))


def infer_body(rows: np.ndarray = X) -> str:
    data = rows.tolist()
    return json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape),
                                   "datatype": "FP32", "data": data}]})  # fmt: skip


def body_of(reply: dict[str, Any]) -> Any:
    raw = base64.b64decode(reply["body"]) if reply["isBase64Encoded"] else reply["body"]
    return json.loads(raw)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_event_shape_reaches_the_same_routes(
    app: LambdaApp, lambda_repo: Path, shape: Any
) -> None:
    expected = modelport.load(lambda_repo / "tiny" / "1").predict(X)["logits"]
    reply = app(shape("POST", "/v2/models/tiny/infer", infer_body()))
    assert reply["statusCode"] == 200, reply
    assert reply["headers"]["content-type"] == "application/json"
    assert reply["headers"]["model-version"] == "1"
    (output,) = body_of(reply)["outputs"]
    np.testing.assert_allclose(np.array(output["data"]).reshape(2, 3), expected, rtol=1e-6)
    v1 = app(shape("POST", "/v1/models/tiny:predict", json.dumps({"instances": X.tolist()})))
    assert reply["statusCode"] == 200, v1
    np.testing.assert_allclose(np.array(body_of(v1)["predictions"]), expected, rtol=1e-6)
    for path, answer in [
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/tiny/ready", {"name": "tiny", "ready": True}),
    ]:
        reply = app(shape("GET", path))
        assert (reply["statusCode"], body_of(reply)) == (200, answer)
    metadata = body_of(app(shape("GET", "/v2/models/tiny")))
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert "binary_tensor_data" in body_of(app(shape("GET", "/v2")))["extensions"]


def test_binary_tensors_travel_base64_both_ways(app: LambdaApp, lambda_repo: Path) -> None:
    item = triton_http.InferInput("input", list(X.shape), "FP32")
    item.set_data_from_numpy(X, binary_data=True)
    wanted = [triton_http.InferRequestedOutput("logits", binary_data=True)]
    body, json_size = triton_http.InferenceServerClient.generate_request_body([item], wanted)
    headers = {"inference-header-content-length": str(json_size),
               "content-type": "application/octet-stream"}  # fmt: skip
    for shape in SHAPES:
        reply = app(shape("POST", "/v2/models/tiny/infer", body, headers, binary=True))
        assert reply["statusCode"] == 200, reply
        assert reply["isBase64Encoded"] is True
        length = int(reply["headers"]["inference-header-content-length"])
        result = triton_http.InferenceServerClient.parse_response_body(
            base64.b64decode(reply["body"]), header_length=length
        )
        expected = modelport.load(lambda_repo / "tiny" / "1").predict(X)["logits"]
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("event", "status", "message"),
    [
        (["not", "an", "object"], 400, "not an HTTP event"),
        ({"Records": [{"eventSource": "aws:s3"}]}, 400, "its keys: Records"),
        ({"version": "2.0", "rawPath": "/v2"}, 400, "requestContext must be an object"),
        (http_api("POST", "/v2/models/tiny/infer", "{bad"), 400, "malformed JSON"),
        (http_api("POST", "/v2/models/tiny/infer", "{}"), 400, "inputs"),
        (dict(http_api("POST", "/v2/models/tiny/infer"), body=7), 400, "body must be a string"),
        (dict(http_api("POST", "/v2/models/tiny/infer", "x"), isBase64Encoded=True), 400,
         "not base64"),
        (http_api("POST", "/v2/models/nope/infer", infer_body()), 404, "nope"),
        (http_api("GET", "/v2/nowhere"), 404, "no such endpoint"),
        (http_api("DELETE", "/v2/models/tiny/infer"), 405, "use POST"),
        (rest_api("POST", "/v2/models/tiny/infer", b"\x00" * (MAX_BODY_BYTES + 1), binary=True),
         413, "10 MB"),
        (http_api("POST", "/v2/models/tiny/infer", "[" * (MAX_BODY_BYTES + 1)), 413, "10 MB"),
    ],
)  # fmt: skip
def test_malformed_events_get_the_rest_doors_4xx_json(
    app: LambdaApp, event: Any, status: int, message: str
) -> None:
    reply = app(event)
    assert reply["statusCode"] == status, reply
    assert reply["headers"]["content-type"] == "application/json"
    error = body_of(reply)["error"]
    assert message in error


def test_an_answer_over_lambdas_6_mb_is_refused_with_what_to_do(app: LambdaApp) -> None:
    rows = np.ones((MAX_RESPONSE_BYTES // 20, 4), np.float32)  # 5 MB in, ~11 MB of JSON out
    item = triton_http.InferInput("input", list(rows.shape), "FP32")
    item.set_data_from_numpy(rows, binary_data=True)
    as_json = [triton_http.InferRequestedOutput("logits", binary_data=False)]
    body, json_size = triton_http.InferenceServerClient.generate_request_body([item], as_json)
    headers = {"inference-header-content-length": str(json_size)}
    reply = app(http_api("POST", "/v2/models/tiny/infer", body, headers, binary=True))
    assert reply["statusCode"] == 413
    assert "fewer rows" in body_of(reply)["error"]


def test_the_request_id_is_lambdas(app: LambdaApp) -> None:
    class Context:
        aws_request_id = "8f507cfc-example-4697-b07a-ac58fc914c95"

    reply = app(http_api("GET", "/v2/health/ready"), Context())
    assert reply["headers"]["x-request-id"] == Context.aws_request_id


def test_the_environment_says_where_the_models_are() -> None:
    with pytest.raises(modelport.ModelportError, match="MODELPORT_REPOSITORY is not set"):
        repository_from({})
    assert repository_from({"MODELPORT_REPOSITORY": "/models"}) == Path("/models")
    config = lambda_config({"MODELPORT_TRUST_CODE": "1", "MODELPORT_CACHE": "off"})
    assert (config.trust_code, config.trust_pickle, config.cache) == (True, False, "off")
