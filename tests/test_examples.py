"""The web app examples, run for real: a trained model, each app's own startup, HTTP requests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import modelport

pytest.importorskip("sklearn")
pytestmark = pytest.mark.slow  # trains and converts a model once for the module

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class Digits:
    path: Path  # the model folder, as MODELPORT_MODEL would name it
    x: np.ndarray  # rows of 64 features


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    repo = modelport.Repository.init(tmp_path_factory.mktemp("models"))
    modelport.add_model(repo, "digits", pipeline, sample_input=x[:32])
    return Digits(repo.root / "digits", x)


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples/<name>.py`` by path: examples/ is not a package."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@dataclass
class App:
    """A started example app: ``post(payload)`` sends POST /predict -> (status, JSON body)."""

    post: Callable[[Any], tuple[int, Any]]
    loads: list[str]  # every modelport.load the app made


@pytest.fixture(params=["fastapi_app", "flask_app"])
def app(
    request: pytest.FixtureRequest, digits: Digits, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    monkeypatch.setenv("MODELPORT_MODEL", str(digits.path))
    loads: list[str] = []
    real_load = modelport.load

    def recording_load(source: Any, **kwargs: Any) -> modelport.Model:
        loads.append(str(source))
        return real_load(source, **kwargs)

    monkeypatch.setattr(modelport, "load", recording_load)
    example = load_example(request.param, monkeypatch)
    if request.param == "fastapi_app":
        from fastapi.testclient import TestClient

        with TestClient(example.app) as client:  # entering runs the lifespan: the model loads
            assert client.get("/health").json() == {"status": "ok"}
            yield App(lambda payload: _httpx(client.post("/predict", json=payload)), loads)
    else:
        flask_client = example.create_app().test_client()
        assert flask_client.get("/health").get_json() == {"status": "ok"}
        yield App(lambda payload: _flask(flask_client.post("/predict", json=payload)), loads)


def _httpx(response: Any) -> tuple[int, Any]:
    return response.status_code, response.json()


def _flask(response: Any) -> tuple[int, Any]:
    return response.status_code, response.get_json()


@pytest.mark.parametrize("form", ["named", "bare list"])
def test_predicts_what_the_model_predicts(app: App, digits: Digits, form: str) -> None:
    rows = digits.x[:5]
    inputs = {"input": rows.tolist()} if form == "named" else rows.tolist()

    status, body = app.post({"inputs": inputs})

    assert status == 200
    with modelport.load(digits.path) as model:
        expected = model.predict(rows)
    assert body["outputs"].keys() == expected.keys()
    np.testing.assert_array_equal(body["outputs"]["label"], expected["label"])
    np.testing.assert_allclose(
        body["outputs"]["probabilities"], expected["probabilities"], rtol=1e-6
    )


def test_wrong_number_of_features_is_a_400_naming_the_input(app: App, digits: Digits) -> None:
    status, body = app.post({"inputs": {"input": digits.x[:2, :63].tolist()}})

    assert status == 400
    assert "'input'" in body["error"]
    assert "[2, 63]" in body["error"]


def test_wrong_input_name_is_a_400(app: App, digits: Digits) -> None:
    status, body = app.post({"inputs": {"pixels": digits.x[:1].tolist()}})

    assert status == 400
    assert body["error"] == "unknown input 'pixels'; the model takes 'input'"


def test_the_model_is_loaded_once_at_startup(app: App, digits: Digits) -> None:
    assert app.loads == [str(digits.path)]
    for _ in range(3):
        assert app.post({"inputs": digits.x[:1].tolist()})[0] == 200
    assert app.loads == [str(digits.path)]
