"""GraphQL at /graphql on the real server process, spoken to over HTTP with httpx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import server_models
from modelport.testing import RunningServer, run_server
from test_server import X, reference

PREDICT = """
mutation Predict($model: String!, $inputs: [TensorInput!]!, $version: Int, $outputs: [String!]) {
  predict(model: $model, inputs: $inputs, version: $version, outputs: $outputs) {
    model version outputs { name datatype shape data }
  }
}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.build(tmp_path_factory.mktemp("graphql") / "models")


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with run_server(
        repo, "--trust-code", "--version-policy", "all", "--max-body-bytes", "100000"
    ) as running:
        yield running


def ask(wire: httpx.Client, query: str, **variables: Any) -> tuple[int, dict[str, Any]]:
    response = wire.post("/graphql", json={"query": query, "variables": variables})
    return response.status_code, response.json()


def test_models_versions_and_signatures(wire: httpx.Client) -> None:
    status, body = ask(
        wire,
        "{ models { name versions { version platform inputs { name datatype shape } "
        "outputs { name datatype shape } } } }",
    )
    assert status == 200, body
    models = {m["name"]: m for m in body["data"]["models"]}
    assert sorted(models) == ["slow", "tiny", "types", "whoami", "whoami-live"]
    assert models["tiny"]["versions"] == [
        {
            "version": version,
            "platform": "onnx_onnxv1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        }
        for version in (1, 2)
    ]
    assert models["slow"]["versions"][0]["platform"] == "python"
    status, one = ask(wire, '{ model(name: "tiny") { name } nope: model(name: "nope") { name } }')
    assert one == {"data": {"model": {"name": "tiny"}, "nope": None}}


def test_predict_nested_flat_and_per_version(wire: httpx.Client, repo: Path) -> None:
    for version in (1, 2):
        status, body = ask(wire, PREDICT, model="tiny", version=version,
                           inputs=[{"name": "input", "data": X}])  # fmt: skip
        assert status == 200, body
        prediction = body["data"]["predict"]
        assert (prediction["model"], prediction["version"]) == ("tiny", version)
        (output,) = prediction["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [2, 3])
        np.testing.assert_allclose(output["data"], reference(repo, version, X), rtol=1e-6)
    flat = [v for row in X for v in row]
    _, shaped = ask(wire, PREDICT, model="tiny", inputs=[{"name": "input", "data": flat,
                                                           "shape": [2, 4]}])  # fmt: skip
    np.testing.assert_allclose(
        shaped["data"]["predict"]["outputs"][0]["data"], reference(repo, 2, X), rtol=1e-6
    )


def test_predict_with_literals_and_an_output_subset(wire: httpx.Client) -> None:
    inputs = (
        ", ".join(
            f'{{name: "in_{t}", data: [[1, 0]]}}'
            for t in server_models.V2_TYPES
            if t not in ("BYTES", "BOOL")
        )
        + ', {name: "in_BOOL", data: [[true, false]]}, {name: "in_BYTES", data: [["a", "b"]]}'
    )
    status, body = ask(
        wire,
        f'mutation {{ predict(model: "types", inputs: [{inputs}], '
        f'outputs: ["out_BYTES", "out_INT8"]) {{ outputs {{ name data }} }} }}',
    )
    assert status == 200, body
    assert body["data"]["predict"]["outputs"] == [
        {"name": "out_BYTES", "data": [["a", "b"]]},
        {"name": "out_INT8", "data": [[1, 0]]},
    ]


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("wrong shape", {"model": "tiny", "inputs": [{"name": "input", "data": [[1, 2, 3]]}]},
     "INVALID_INPUT", "input 'input': expected shape [?, 4], got [1, 3]"),
    ("ragged", {"model": "tiny", "inputs": [{"name": "input", "data": [[1, 2, 3, 4], [1]]}]},
     "INVALID_INPUT", "expected a float32 array, got a value numpy cannot read"),
    ("shape vs data", {"model": "tiny", "inputs": [{"name": "input", "data": [1, 2, 3],
                                                     "shape": [1, 4]}]},
     "INVALID_INPUT", "data has 3 values but shape [1, 4] needs 4"),
    ("strings for floats", {"model": "tiny", "inputs": [{"name": "input",
                                                          "data": [["a", "b", "c", "d"]]}]},
     "INVALID_INPUT", "expected dtype float32"),
    ("unknown input", {"model": "tiny", "inputs": [{"name": "x", "data": [[1, 2, 3, 4]]}]},
     "INVALID_INPUT", "unknown input 'x'"),
    ("duplicate input",
     {"model": "tiny", "inputs": [{"name": "input", "data": [[1, 2, 3, 4]]}] * 2},
     "INVALID_INPUT", "appears more than once"),
    ("unknown output", {"model": "tiny", "inputs": [{"name": "input", "data": [[1, 2, 3, 4]]}],
                        "outputs": ["nope"]},
     "INVALID_INPUT", "unknown output 'nope'"),
    ("unknown model", {"model": "nope", "inputs": []}, "NOT_FOUND", "no model named 'nope'"),
    ("unknown version", {"model": "tiny", "version": 9, "inputs": []}, "NOT_FOUND",
     "has no version 9"),
    ("malicious name", {"model": "../etc", "inputs": []}, "INVALID_INPUT",
     "invalid model name '../etc'"),
    ("too large for float32", {"model": "tiny", "inputs": [{"name": "input",
                                                             "data": [[1e39, 0, 0, 0]]}]},
     "INVALID_INPUT", "NaN or Infinity"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("variables", "code", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_predictions_are_graphql_errors(
    wire: httpx.Client, variables: dict[str, Any], code: str, message: str
) -> None:
    status, body = ask(wire, PREDICT, **variables)
    assert status == 200
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["path"] == ["predict"]
    assert error["extensions"]["code"] == code
    assert message in error["message"]
    ok, _ = ask(wire, PREDICT, model="tiny", inputs=[{"name": "input", "data": X}])
    assert ok == 200


def test_a_model_that_raises_is_internal_without_internals(
    wire: httpx.Client, server: RunningServer
) -> None:
    _, body = ask(wire, PREDICT, model="slow", inputs=[{"name": "seconds", "data": [-1.0]}])
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "INTERNAL"
    assert re.fullmatch(
        r"the model failed on this request; the server log has the details "
        r"\(request id [0-9a-f]{32}\)",
        error["message"],
    )
    assert "negative seconds" in server.log


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "{ models { name "}, 400, "Syntax Error"),
        ({"query": "{ models { nope } }"}, 400, "Cannot query field 'nope'"),
        ({"query": PREDICT, "variables": {"model": "tiny"}}, 400, "$inputs"),
        ({"query": 42}, 400, '{"query": "...", "variables": {...}}'),
        ({"query": "{ models { name } }", "variables": [1]}, 400, "'variables' must be"),
        ({"query": "{ models " + "{ name " * 200 + "}" * 201}, 400, "nested deeper than"),
    ],
    ids=["syntax", "unknown field", "missing variable", "no query", "bad variables", "deep"],
)
def test_documents_that_cannot_run_are_400s(
    wire: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    response = wire.post("/graphql", json=body)
    assert response.status_code == status
    assert message in response.json()["errors"][0]["message"]


def test_body_limit_and_method(wire: httpx.Client) -> None:
    response = wire.post("/graphql", content=b" " * 100_001)
    assert response.status_code == 413
    assert "over the limit of 100000" in response.json()["errors"][0]["message"]
    assert wire.get("/graphql").status_code == 405


def test_predictions_share_the_cache_and_metrics(wire: httpx.Client) -> None:
    data = [[7.0, 7.0, 7.0, 7.0]]
    for _ in range(2):
        ask(wire, PREDICT, model="tiny", version=1, inputs=[{"name": "input", "data": data}])
    metrics = wire.get("/metrics").text
    hits = re.search(
        r'modelport_cache_total\{event="hit",model="tiny",version="1"\} (\S+)', metrics
    )
    assert hits is not None
    assert float(hits[1]) >= 1
    assert 'modelport_requests_total{model="tiny",status="404",version="9"}' not in metrics
    assert 'modelport_requests_total{model="tiny",status="200",version="1"}' in metrics


def test_a_token_guards_graphql(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    query = {"query": "{ models { name } }"}
    with run_server(repo, "--trust-code", "--token-file", str(token_file)) as server:
        refused = httpx.post(f"{server.url}/graphql", json=query)
        assert refused.status_code == 401
        assert "access token" in refused.json()["errors"][0]["message"]
        allowed = httpx.post(
            f"{server.url}/graphql", json=query, headers={"Authorization": "Bearer s3cret"}
        )
        assert allowed.status_code == 200
        assert len(allowed.json()["data"]["models"]) == 5


def test_without_the_extra_graphql_says_what_to_install(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in that fails to import as a missing package does, ahead of the real one.
    shadow = tmp_path / "shadow" / "graphql"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'graphql\'", name="graphql")\n'
    )
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    with run_server(repo, "--trust-code", "--trust-code") as server:
        response = httpx.post(f"{server.url}/graphql", json={"query": "{ models { name } }"})
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert response.status_code == 501
    assert 'pip install "modelport[graphql]"' in response.json()["errors"][0]["message"]
