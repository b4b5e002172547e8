"""Tabular models and boosted trees served end to end: tritonclient (HTTP and gRPC) with one
tensor per column, V1 rows with curl, the Client with a DataFrame or a list of dicts, GraphQL,
and a batch run over Parquet with text columns looked up (and computed live) by the server."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import modelport
from modelport.batch import Store, open_source, score_table
from modelport.config import BatchConfig
from modelport.testing import RunningServer, free_port, run_server

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trees() -> dict[str, Any]:
    """XGBoost and LightGBM classifiers on a numeric frame, and rows they never saw."""
    import lightgbm
    import pandas as pd
    import xgboost

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 6)), columns=[f"x{i}" for i in range(6)])
    y = (x.x0 + x.x1 * x.x2 > 0).astype(int)
    return {
        "xgb": xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y),
        "lgb": lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y),
        "sample": x.head(64),
        "unseen": pd.DataFrame(rng.normal(size=(40, 6)), columns=x.columns),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tabular-server")


@pytest.fixture(scope="module")
def store(folder: Path, churn: Any, trees: dict[str, Any]) -> str:
    """The repository's churn model scored over a Parquet table with text columns."""
    pipeline, frame, unseen = churn
    repo = modelport.Repository.init(folder / "models")
    modelport.add_model(repo, "churn", pipeline, sample_input=frame.head(64))
    for name in ("xgb", "lgb"):
        modelport.add_model(repo, name, trees[name], sample_input=trees["sample"])
    table = unseen.assign(id=[f"c{i}" for i in range(len(unseen))])
    table.to_parquet(folder / "customers.parquet")
    url = str(folder / "predictions.db")
    with Store(url) as predictions, repo.load("churn") as model:
        source = open_source(str(folder / "customers.parquet"))
        summary = score_table(model, source, predictions, BatchConfig(key="id"))
    assert (summary.scored, summary.rejected) == (len(unseen), 0)  # missing values are data
    return url


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(folder: Path, store: str, grpc_port: int) -> Iterator[RunningServer]:
    with run_server(
        folder / "models", "--store", store, "--grpc-port", str(grpc_port), "--no-access-log"
    ) as running:
        yield running


def columns_of(frame: Any) -> dict[str, np.ndarray]:
    """One [rows, 1] array per column, as tritonclient sends them."""
    out = {}
    for name in frame.columns:
        values = frame[name].astype(object)
        if name in ("plan", "region"):
            out[name] = np.array([v if isinstance(v, str) else "" for v in values], dtype=object)
        else:
            out[name] = frame[name].to_numpy(np.float32)
    return {k: v.reshape(-1, 1) for k, v in out.items()}


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_sends_one_tensor_per_column(
    server: RunningServer, churn: Any, binary: bool
) -> None:
    import tritonclient.http as triton

    pipeline, _, unseen = churn
    rows = unseen.head(50)
    if not binary:  # JSON has no NaN: a missing number travels as null in V1 rows, or binary
        rows = rows.dropna(subset=["monthly_charges"])
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    metadata = client.get_model_metadata("churn")
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]} == {
        "plan": "BYTES", "region": "BYTES", "tenure_months": "FP32",
        "monthly_charges": "FP32", "support_calls": "FP32",
    }  # fmt: skip
    tensors = []
    for name, values in columns_of(rows).items():
        tensor = triton.InferInput(name, list(values.shape), "BYTES" if values.dtype == object
                                   else "FP32")  # fmt: skip
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    result = client.infer("churn", tensors)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), pipeline.predict_proba(rows), atol=TOLERANCE
    )


def test_tritonclient_grpc_and_the_trees(
    server: RunningServer, grpc_port: int, churn: Any, trees: dict[str, Any]
) -> None:
    import tritonclient.grpc as triton

    pipeline, _, unseen = churn
    rows = unseen.head(20)
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        tensors = []
        for name, values in columns_of(rows).items():
            tensor = triton.InferInput(name, list(values.shape), "BYTES" if values.dtype == object
                                       else "FP32")  # fmt: skip
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        got = client.infer("churn", tensors).as_numpy("probabilities")
        np.testing.assert_allclose(got, pipeline.predict_proba(rows), atol=TOLERANCE)
        x = trees["unseen"].to_numpy(np.float32)
        for name in ("xgb", "lgb"):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer(name, [tensor]).as_numpy("probabilities")
            expected = trees[name].predict_proba(trees["unseen"])
            np.testing.assert_allclose(got, expected, atol=TOLERANCE, err_msg=name)


def curl(url: str, body: Any) -> tuple[int, str]:
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
         "-d", json.dumps(body), url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


def test_v1_rows_with_curl(server: RunningServer, churn: Any) -> None:
    pipeline, _, unseen = churn
    rows = unseen.head(10)
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    assert any(r["plan"] is None for r in records) or any(
        r["monthly_charges"] is None for r in records
    )
    status, text = curl(f"{server.url}/v1/models/churn:predict", {"instances": records})
    assert status == 200, text
    predictions = json.loads(text)["predictions"]
    got = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(got, pipeline.predict_proba(rows), atol=TOLERANCE)
    assert [p["label"] for p in predictions] == pipeline.predict(rows).tolist()
    assert not re.search(r"\d\.\d{10,}", text), text  # float32 as float32
    records[3]["tenure_months"] = "three years"
    status, text = curl(f"{server.url}/v1/models/churn:predict", {"instances": records})
    assert status == 400
    assert "column 'tenure_months', row 3: expected a number" in json.loads(text)["error"]
    del records[3]["plan"]
    status, text = curl(f"{server.url}/v1/models/churn:predict", {"instances": records})
    assert (status, json.loads(text)["error"]) == (
        400, "row 3: missing column 'plan'; the model takes 'plan', 'region', 'tenure_months', "
        "'monthly_charges', 'support_calls'",
    )  # fmt: skip


def test_the_client_takes_a_dataframe_or_rows(
    server: RunningServer, churn: Any, trees: dict[str, Any]
) -> None:
    pipeline, _, unseen = churn
    rows = unseen.head(30)
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    with modelport.Client(server.url) as client:
        for given in (rows, records):
            got = client.predict("churn", given)
            np.testing.assert_allclose(
                got["probabilities"], pipeline.predict_proba(rows), atol=TOLERANCE
            )
            np.testing.assert_array_equal(got["label"], pipeline.predict(rows))
        with pytest.raises(modelport.InvalidInputError, match="row 0: unknown column 'age'"):
            client.predict("churn", [{**records[0], "age": 40}])
        got = client.predict("xgb", trees["unseen"])  # one matrix: the frame's values
        expected = trees["xgb"].predict_proba(trees["unseen"])
        np.testing.assert_allclose(got["probabilities"], expected, atol=TOLERANCE)


def test_graphql_takes_one_tensor_per_column(server: RunningServer, churn: Any) -> None:
    pipeline, _, unseen = churn
    rows = unseen.dropna(subset=["monthly_charges"]).head(4)  # JSON has no NaN
    # Nested [rows, 1] data, no datatype: the server reads each as its model's input declares.
    tensors = [{"name": name, "data": values.tolist()} for name, values in columns_of(rows).items()]
    query = (
        'mutation P($inputs: [TensorInput!]!) { predict(model: "churn", inputs: $inputs) '
        "{ outputs { name shape data } } }"
    )
    answer = httpx.post(
        f"{server.url}/graphql", json={"query": query, "variables": {"inputs": tensors}}
    ).json()
    assert "errors" not in answer, answer
    outputs = {o["name"]: o for o in answer["data"]["predict"]["outputs"]}
    got = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(got, pipeline.predict_proba(rows), atol=TOLERANCE)


def test_batch_answers_are_looked_up_and_new_rows_computed_live(
    server: RunningServer, churn: Any
) -> None:
    pipeline, _, unseen = churn
    url = f"{server.url}/v2/models/churn/predictions"
    keys = [f"c{i}" for i in range(len(unseen))]
    found = httpx.post(url, json={"keys": keys}).json()["predictions"]
    stored = np.array([p["outputs"]["probabilities"] for p in found])
    np.testing.assert_allclose(stored, pipeline.predict_proba(unseen), atol=TOLERANCE)
    row = {"plan": "pro", "region": "west", "tenure_months": 3, "monthly_charges": None,
           "support_calls": 7}  # fmt: skip
    body = {"keys": ["new"], "inputs": {"new": row}}
    (live,) = httpx.post(url, json=body).json()["predictions"]
    assert live["source"] == "live"
    import pandas as pd

    expected = pipeline.predict_proba(pd.DataFrame([row]).astype({"monthly_charges": float}))
    np.testing.assert_allclose(live["outputs"]["probabilities"], expected[0], atol=TOLERANCE)


def test_batch_into_postgresql_stores_the_same_answers(
    folder: Path, store: str, churn: Any
) -> None:
    from batch_support import postgres_database

    pipeline, _, unseen = churn
    databases = postgres_database()
    url = next(databases)
    try:
        with (
            Store(url) as predictions,
            modelport.Repository.open(folder / "models").load("churn") as model,
        ):
            source = open_source(str(folder / "customers.parquet"))
            summary = score_table(model, source, predictions, BatchConfig(key="id"))
            assert (summary.scored, summary.rejected) == (len(unseen), 0)
            keys = [f"c{i}" for i in range(len(unseen))]
            found = predictions.lookup("churn", keys)
            stored = np.array([found[k].outputs["probabilities"] for k in keys])
        np.testing.assert_allclose(stored, pipeline.predict_proba(unseen), atol=TOLERANCE)
    finally:
        databases.close()


def test_the_docs_show_a_row_and_the_row_predicts(server: RunningServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    predict = spec["paths"]["/v1/models/{model_name}:predict"]["post"]["requestBody"]
    example = predict["content"]["application/json"]["examples"]["churn"]["value"]
    assert example == {
        "instances": [{"plan": "", "region": "", "tenure_months": 0.0, "monthly_charges": 0.0,
                       "support_calls": 0.0}]
    }  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/models/churn:predict", json=example)
    assert answer.status_code == 200, answer.text


def test_the_async_client_takes_rows_too(server: RunningServer, churn: Any) -> None:
    import asyncio

    pipeline, _, unseen = churn
    rows = unseen.head(5)
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")

    async def main() -> Any:
        async with modelport.AsyncClient(server.url) as client:
            return await client.predict("churn", records)

    got = asyncio.run(main())
    np.testing.assert_allclose(got["probabilities"], pipeline.predict_proba(rows), atol=TOLERANCE)
