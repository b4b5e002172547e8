"""Stored batch predictions served as lookups by the real server: fresh, stale, missing, and
computed live when the request brings the features."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

import modelport
from batch_support import features, postgres_database, write_parquet
from modelport.batch import Store, open_source, score_table
from modelport.config import BatchConfig
from modelport.demo import mlp_onnx
from modelport.testing import RunningServer, run_server

X = features(100)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, modelport.Model, str]]:
    """tiny:2 scored row0..row99 into a store; row5 made two hours old; served with
    --max-age 1h and --write-back."""
    folder = tmp_path_factory.mktemp("lookups")
    repo = modelport.Repository.init(folder / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=4))
    databases = postgres_database() if request.param == "postgresql" else None
    url = next(databases) if databases else str(folder / "p.db")
    with Store(url) as store, repo.load("tiny") as model:
        source = open_source(str(write_parquet(folder / "x.parquet", X)))
        score_table(model, source, store, BatchConfig(key="id"))
        with store.engine.begin() as conn:
            conn.execute(sa.text(
                "UPDATE modelport_predictions SET scored_at = scored_at - 7200 WHERE key = 'row5'"
            ))  # fmt: skip
            conn.execute(sa.text(  # as if tiny:1 had scored it: older than the served version
                "UPDATE modelport_predictions SET version = 1 WHERE key = 'row9'"
            ))  # fmt: skip
    try:
        with repo.load("tiny") as model, run_server(
            repo.root, "--store", url, "--max-age", "1h", "--write-back", "--no-access-log"
        ) as server:  # fmt: skip
            yield server, model, url
    finally:
        if databases:
            databases.close()


def test_a_stored_prediction_comes_back_with_its_version_and_age(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, model, _ = served
    answer = httpx.get(f"{server.url}/v2/models/tiny/predictions/row1").json()
    assert answer["model_name"] == "tiny"
    assert (answer["found"], answer["source"], answer["stale"]) == (True, "store", False)
    assert answer["model_version"] == "2"
    assert 0 <= answer["age_s"] < 600
    assert answer["scored_at"].endswith("+00:00")
    np.testing.assert_allclose(
        answer["outputs"]["logits"], model.predict(X[1:2])["logits"][0], rtol=1e-6
    )


def test_an_old_prediction_is_marked_stale_and_a_missing_one_is_404(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, _, _ = served
    stale = httpx.get(f"{server.url}/v2/models/tiny/predictions/row5").json()
    assert (stale["stale"], stale["stale_reason"]) == (True, "age")
    assert stale["age_s"] > 7000
    older = httpx.get(f"{server.url}/v2/models/tiny/predictions/row9").json()
    assert (older["stale"], older["stale_reason"], older["model_version"]) == (True, "version", "1")
    missing = httpx.get(f"{server.url}/v2/models/tiny/predictions/nobody")
    assert missing.status_code == 404
    assert "no stored prediction of model 'tiny' for key 'nobody'" in missing.json()["error"]


def test_many_keys_at_once_and_live_answers_for_stale_or_missing_keys(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, model, _ = served
    url = f"{server.url}/v2/models/tiny/predictions"
    answer = httpx.post(url, json={"keys": ["row2", "row5", "gone"]}).json()
    found = {p["key"]: p for p in answer["predictions"]}
    assert list(found) == ["row2", "row5", "gone"]
    assert (found["row2"]["stale"], found["row5"]["stale"], found["gone"]["found"]) == (
        False, True, False,
    )  # fmt: skip

    new = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    body = {
        "keys": ["row2", "row5", "new1"],
        "inputs": {"row2": {"input": [9, 9, 9, 9]}, "row5": {"input": X[5].tolist()},
                   "new1": {"input": new[0].tolist()}},
    }  # fmt: skip
    live = {p["key"]: p for p in httpx.post(url, json=body).json()["predictions"]}
    assert live["row2"]["source"] == "store"  # fresh: its stored answer, features or not
    assert (live["row5"]["source"], live["row5"]["stale"]) == ("live", False)
    assert live["new1"]["source"] == "live"
    np.testing.assert_allclose(
        live["new1"]["outputs"]["logits"], model.predict(new)["logits"][0], rtol=1e-6
    )
    np.testing.assert_allclose(
        live["row5"]["outputs"]["logits"], model.predict(X[5:6])["logits"][0], rtol=1e-6
    )

    # --write-back stored them: now they are fresh stored answers.
    again = httpx.get(f"{url}/new1").json()
    assert (again["source"], again["stale"], again["model_version"]) == ("store", False, "2")
    assert httpx.get(f"{url}/row5").json()["stale"] is False


def test_one_bad_key_fails_the_request_before_anything_is_computed(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, _, _ = served
    url = f"{server.url}/v2/models/tiny/predictions"
    body = {"keys": ["n1", "n2"], "inputs": {"n1": {"input": [1, 2, 3, 4]}, "n2": {"input": [1]}}}
    response = httpx.post(url, json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("inputs['n2']: input 'input'")
    assert httpx.get(f"{url}/n1").status_code == 404  # n1 was not computed nor stored


def test_lookup_metrics_and_prediction_age(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, _, _ = served
    httpx.get(f"{server.url}/v2/models/tiny/predictions/row3")
    httpx.get(f"{server.url}/v2/models/tiny/predictions/absent")
    page = httpx.get(f"{server.url}/metrics").text
    assert 'modelport_prediction_lookups_total{model="tiny",result="hit"}' in page
    assert 'modelport_prediction_lookups_total{model="tiny",result="miss"}' in page
    (age,) = [
        line
        for line in page.splitlines()
        if line.startswith('modelport_predictions_age_seconds{model="tiny"}')
    ]
    assert 0 <= float(age.split()[-1]) < 600


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"keys": "row1"}, 400, 'the body must be {"keys": [...]}'),
        ({"keys": []}, 400, "keys must hold 1 to 1000 keys, got 0"),
        ({"keys": [1]}, 400, "each key must be a string"),
        ({"keys": ["a"], "inputs": {"b": {}}}, 400, "inputs given for keys not asked for: ['b']"),
        ({"keys": ["a"], "inputs": {"a": [1, 2]}}, 400, "inputs['a'] must be an object"),
        ({"keys": ["a"], "inputs": {"a": {"input": [1, 2]}}}, 400, "inputs['a']: input 'input'"),
        ({"keys": ["a"], "inputs": {"a": {"wrong": [1, 2, 3, 4]}}}, 400, "inputs['a']: "),
    ],
)
def test_bad_lookups_are_refused_clearly(
    served: tuple[RunningServer, modelport.Model, str], body: object, status: int, message: str
) -> None:
    server, _, _ = served
    response = httpx.post(f"{server.url}/v2/models/tiny/predictions", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/tiny/predictions/row1").status_code == 200


def test_live_answers_need_the_model_served_here(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, _, _ = served
    body = {"keys": ["k"], "inputs": {"k": {"input": [1, 2, 3, 4]}}}
    response = httpx.post(f"{server.url}/v2/models/other/predictions", json=body)
    assert response.status_code == 404
    assert (
        "no model 'other' here: it is neither served nor in the prediction store"
        in (response.json()["error"])
    )
    assert httpx.get(f"{server.url}/v2/models/other/predictions/k").status_code == 404
    assert 'model="other"' not in httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/v2/models/..%2F..%2Fetc/predictions/k").status_code == 400


def test_a_server_without_a_store_says_how_to_get_one(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    with run_server(repo.root, "--no-access-log") as server:
        response = httpx.get(f"{server.url}/v2/models/tiny/predictions/row1")
    assert response.status_code == 404
    assert "start it with --store URL" in response.json()["error"]


def test_live_answers_are_bounded_per_request_and_written_back_in_one_transaction(
    served: tuple[RunningServer, modelport.Model, str],
) -> None:
    server, _, url = served
    endpoint = f"{server.url}/v2/models/tiny/predictions"
    keys = [f"bulk{i}" for i in range(101)]
    body = {"keys": keys, "inputs": {k: {"input": [1, 2, 3, 4]} for k in keys}}
    response = httpx.post(endpoint, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == (
        "inputs carries features for 101 keys; a request computes at most 100 keys live: "
        "send the others in further requests"
    )
    assert httpx.get(f"{endpoint}/bulk0").status_code == 404  # nothing computed nor stored

    body = {"keys": keys[:100], "inputs": {k: {"input": [1, 2, 3, 4]} for k in keys[:100]}}
    live = httpx.post(endpoint, json=body).json()["predictions"]
    assert {p["source"] for p in live} == {"live"}
    with Store(url) as store:
        stored = store.lookup("tiny", keys[:100])
    assert sorted(stored) == sorted(keys[:100])
    assert len({p.scored_at for p in stored.values()}) == 1  # one write: one time for all
