from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from modelport.server.rest.openapi import docs_html, openapi_spec

DIGITS: dict[str, Any] = {
    "versions": [1, 2],
    "platform": "onnx_onnxv1",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2, 3]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}
PAIRS: dict[str, Any] = {
    "versions": [7],
    "platform": "python",
    "inputs": [
        {"name": "ids", "datatype": "INT32", "shape": [-1]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, 4]},
        {"name": "text", "datatype": "BYTES", "shape": [2]},
    ],
    "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1, 1]}],
}
MODEL = "/v2/models/{model_name}"
VERSION = MODEL + "/versions/{model_version}"
ENDPOINTS = {
    "/v2/health/live": {"get"},
    "/v2/health/ready": {"get"},
    "/v2": {"get"},
    "/v2/models/stats": {"get"},
    MODEL: {"get"},
    VERSION: {"get"},
    MODEL + "/ready": {"get"},
    VERSION + "/ready": {"get"},
    MODEL + "/stats": {"get"},
    VERSION + "/stats": {"get"},
    MODEL + "/config": {"get"},
    VERSION + "/config": {"get"},
    MODEL + "/infer": {"post"},
    VERSION + "/infer": {"post"},
    "/v1/models/{model_name}:predict": {"post"},
    "/v1/models/{model_name}/versions/{model_version}:predict": {"post"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
    "/docs": {"get"},
}


@pytest.fixture
def spec() -> dict[str, Any]:
    return openapi_spec("1.2.3", {"digits": DIGITS, "pairs": PAIRS})


@pytest.mark.parametrize("models", [{}, {"digits": DIGITS, "pairs": PAIRS}, {"<script>": DIGITS}])
def test_spec_is_valid_openapi_3_1(models: dict[str, dict[str, Any]]) -> None:
    spec = openapi_spec("1.2.3", models)
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["version"] == "1.2.3"


def test_lookup_endpoints_appear_with_a_store() -> None:
    spec = openapi_spec("1.2.3", {"digits": DIGITS}, lookups=True)
    validate(spec)
    assert set(spec["paths"]) - set(ENDPOINTS) == {
        MODEL + "/predictions/{key}",
        MODEL + "/predictions",
    }
    lookup = spec["paths"][MODEL + "/predictions"]["post"]["requestBody"]["content"]
    example = lookup["application/json"]["examples"]["digits"]["value"]
    assert example["inputs"]["customer-2"] == {"x": [[0.0] * 3] * 2}


def test_graphql_appears_when_the_server_has_it() -> None:
    spec = openapi_spec("1.2.3", {"digits": DIGITS}, graphql=True)
    validate(spec)
    assert set(spec["paths"]) - set(ENDPOINTS) == {"/graphql"}
    body = spec["paths"]["/graphql"]["post"]["requestBody"]["content"]["application/json"]
    assert "query" in body["examples"]["models"]["value"]


def test_every_endpoint_with_its_methods(spec: dict[str, Any]) -> None:
    assert {path: set(item) for path, item in spec["paths"].items()} == ENDPOINTS
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_errors_and_shared_schemas(spec: dict[str, Any]) -> None:
    infer = spec["paths"][MODEL + "/infer"]["post"]
    assert set(infer["responses"]) == {
        "200",
        "400",
        "401",
        "404",
        "408",
        "413",
        "500",
        "503",
        "504",
    }
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "Retry-After" in infer["responses"]["503"]["headers"]
    assert "503" in spec["paths"]["/v2/health/ready"]["get"]["responses"]
    assert "400" in spec["paths"][VERSION]["get"]["responses"]
    schemas = spec["components"]["schemas"]
    assert {"TensorMetadata", "InferRequest", "InferResponse", "Error"} <= set(schemas)
    assert schemas["Datatype"]["enum"] == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    assert set(schemas["InferResponse"]["properties"]) == {
        "model_name", "model_version", "id", "parameters", "outputs",
    }  # fmt: skip


def test_bearer_everywhere_but_health(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    for path, item in spec["paths"].items():
        for op in item.values():
            open_probe = path.startswith("/v2/health/")
            assert ("security" in op) is open_probe
            assert ("401" in op["responses"]) is not open_probe


def test_binary_tensor_extension_documented(spec: dict[str, Any]) -> None:
    for path in (MODEL + "/infer", VERSION + "/infer"):
        infer = spec["paths"][path]["post"]
        headers = [p["name"] for p in infer["parameters"] if p["in"] == "header"]
        assert headers == ["Inference-Header-Content-Length"]
        assert set(infer["requestBody"]["content"]) == {
            "application/json",
            "application/octet-stream",
        }
        for word in ("binary_data_size", "binary_data_output", "binary_data"):
            assert word in infer["description"]
    parameters = spec["components"]["schemas"]["TensorParameters"]["properties"]
    assert set(parameters) == {"binary_data_size", "binary_data"}


def test_model_examples(spec: dict[str, Any]) -> None:
    metadata = spec["paths"][MODEL]["get"]["responses"]["200"]["content"]["application/json"]
    assert metadata["examples"]["digits"]["value"] == {
        "name": "digits",
        **DIGITS,
        "versions": ["1", "2"],
    }
    infer = spec["paths"][MODEL + "/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert infer["examples"]["digits"]["value"] == {
        "inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0.0] * 6}]
    }
    assert infer["examples"]["pairs"]["value"]["inputs"] == [
        {"name": "ids", "shape": [1], "datatype": "INT32", "data": [0]},
        {"name": "mask", "shape": [1, 4], "datatype": "BOOL", "data": [False] * 4},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["", ""]},
    ]
    predict = spec["paths"]["/v1/models/{model_name}:predict"]["post"]["requestBody"]
    examples = predict["content"]["application/json"]["examples"]
    assert examples["digits"]["value"] == {"instances": [[[0.0] * 3] * 2]}
    assert examples["pairs"]["value"] == {
        "instances": [{"ids": 0, "mask": [False] * 4, "text": ""}]
    }
    name = spec["paths"][MODEL]["get"]["parameters"][0]
    assert set(name["examples"]) == {"digits", "pairs"}


def test_spec_shares_nothing_with_its_input() -> None:
    models = {"digits": {**DIGITS, "inputs": [dict(DIGITS["inputs"][0])]}}
    spec = openapi_spec("1", models)
    spec["components"]["schemas"]["Error"]["properties"].clear()
    spec["paths"][MODEL]["get"]["responses"]["200"]["content"]["application/json"]["examples"][
        "digits"
    ]["value"]["inputs"][0]["name"] = "changed"
    assert models["digits"]["inputs"][0]["name"] == "x"
    assert openapi_spec("1", {})["components"]["schemas"]["Error"]["properties"]


def test_docs_page_escapes_model_names_and_lists_every_path() -> None:
    page = docs_html(openapi_spec("1.2.3", {"<script>": DIGITS, "pairs": PAIRS}))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert "%3Cscript%3E" in page  # the curl example quotes the name into the URL
    for path in ENDPOINTS:
        assert path in page
    for text in ("1.2.3", "curl -s", "Inference-Header-Content-Length", "bearer token"):
        assert text in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # runs offline
    assert page.count("<table>") == 2  # one signature per model


def test_docs_page_without_models() -> None:
    page = docs_html(openapi_spec("0.0.1", {}))
    assert "No models loaded" in page
    assert "/v2/health/ready" in page


def test_control_and_shadow_endpoints_appear_when_the_server_has_them() -> None:
    from modelport.config import ServerConfig
    from modelport.server.engine import Engine
    from modelport.server.rest.control import ControlRoutes

    assert "control" not in {t["name"] for t in openapi_spec("1.2.3", {"digits": DIGITS})["tags"]}
    config = ServerConfig(control=True, shadows=("digits=2",))

    async def no_body(*_: Any) -> bytes:
        return b""

    spec = ControlRoutes(Engine(config), config, no_body).document(
        openapi_spec("1.2.3", {"digits": DIGITS})
    )
    validate(spec)
    assert set(spec["paths"]) - set(ENDPOINTS) == {
        "/v2/repository/index",
        "/v2/repository/models/{model_name}/load",
        "/v2/repository/models/{model_name}/unload",
        "/v2/shadow",
    }
    load = spec["paths"]["/v2/repository/models/{model_name}/load"]["post"]
    assert {"401", "403", "404", "409"} <= set(load["responses"])
    assert "control" in {tag["name"] for tag in spec["tags"]}
