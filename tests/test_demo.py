import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport.datafiles import read_inputs

TRUSTED = modelport.LoadOptions(trust_code=True)  # digits-code is modelport's own code model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo repository, built the way README command 1 builds it."""
    path = tmp_path_factory.mktemp("demo") / "demo-models"
    return path, run_demo(path)


def run_demo(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "modelport", "demo", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_builds_every_model_and_shows_a_prediction(demo: tuple[Path, str]) -> None:
    path, output = demo
    names = ["digits", "digits-cnn", "digits-code", "mlp-large"]
    assert modelport.Repository.open(path).names() == names
    for name in names:
        assert f"{name}:1 -> " in output
        assert (path / "_samples" / f"{name}.json").is_file()
    assert f"modelport predict digits --repo {path}" in output


@pytest.mark.parametrize("name", ["digits", "digits-cnn", "digits-code"])
def test_demo_digit_models_recognize_digits(demo: tuple[Path, str], digits: Any, name: str) -> None:
    x, y = digits
    model = modelport.load(demo[0] / name, options=TRUSTED)
    if name == "digits":
        predicted = model.predict(x)["label"]
    elif name == "digits-cnn":
        predicted = model.predict(x.reshape(-1, 1, 8, 8) / 16)["output"].argmax(axis=1)
    else:
        images = (x.reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
        out = model.predict({"image": images})
        predicted = out["digit"]
        assert (
            out["name"][0]
            == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
                out["digit"][0]
            ]
        )
        assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()
    assert (predicted == y).mean() > 0.95


def test_demo_samples_fit_their_models(demo: tuple[Path, str]) -> None:
    path, _ = demo
    repo = modelport.Repository.open(path)
    for name in repo.names():
        model = repo.load(name, options=TRUSTED)
        outputs = model.predict(read_inputs(path / "_samples" / f"{name}.json", model.signature))
        assert all(len(v) == 2 for v in outputs.values())


def test_large_mlp_has_the_serving_workload_shape(demo: tuple[Path, str]) -> None:
    model = modelport.load(demo[0] / "mlp-large")
    assert model.signature.inputs[0].shape == (-1, 1024)
    assert model.signature.outputs[0].shape == (-1, 1000)


def test_running_the_demo_again_reuses_the_repository(demo: tuple[Path, str]) -> None:
    path, _ = demo
    assert "building" not in run_demo(path)
    assert modelport.Repository.open(path).versions("digits") == [1]


def test_demo_requests_work_against_the_served_demo(demo: tuple[Path, str]) -> None:
    import httpx

    from modelport.testing import run_server

    path, _ = demo
    with run_server(path, "--trust-code") as server:
        for name in modelport.Repository.open(path).names():
            request = (path / "_samples" / f"{name}.v2.json").read_bytes()
            response = httpx.post(f"{server.url}/v2/models/{name}/infer", content=request)
            assert response.status_code == 200, response.text
            assert all(o["shape"][0] == 2 for o in response.json()["outputs"])


def test_the_demo_scores_the_digits_in_batch_and_serves_them_as_lookups(
    demo: tuple[Path, str], digits: Any
) -> None:
    import httpx

    from modelport.testing import run_server

    path, out = demo
    assert "Batch prediction: 1,797 rows of digits-table.csv scored by digits:1" in out
    assert "1,797 unchanged" in run_demo(path)  # the second run skips what it scored
    status = subprocess.run(
        [sys.executable, "-m", "modelport", "batch", "status", "--store",
         str(path / "_predictions.db"), "--max-age", "24h"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "digits" in status.stdout
    _, y = digits
    store = str(path / "_predictions.db")
    with run_server(path, "--store", store, "--trust-code") as server:
        answer = httpx.get(f"{server.url}/v2/models/digits/predictions/d42").json()
    assert answer["outputs"]["label"] == int(y[42])
    assert answer["stale"] is False
