"""Boosted trees (XGBoost, LightGBM, CatBoost) as fitted objects and as their native files,
converted to ONNX with the parity check and compared on rows they never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport.errors import ConversionError
from test_cli import ok

TOLERANCE = 1e-4
# allow_writing_files=False: CatBoost writes catboost_info/ into the working folder otherwise.
QUIET_CATBOOST = {"iterations": 20, "verbose": 0, "allow_writing_files": False}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 6)), columns=[f"x{i}" for i in range(6)])
    return {
        "x": x,
        "binary": (x.x0 + x.x1 * x.x2 > 0).astype(int),
        "three": np.digitize(x.x0 + x.x3, [-0.5, 0.5]),
        "amount": 3 * x.x0 - x.x1 + x.x2 * x.x3,
        "unseen": pd.DataFrame(rng.normal(size=(50, 6)), columns=x.columns),
    }


def fitted(kind: str, data: dict[str, Any]) -> Any:
    import catboost
    import lightgbm
    import xgboost

    x = data["x"]
    models = {
        "xgboost-binary": lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=3),
        "xgboost-three": lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=3),
        "xgboost-regressor": lambda: xgboost.XGBRegressor(n_estimators=20, max_depth=3),
        "lightgbm-binary": lambda: lightgbm.LGBMClassifier(n_estimators=20, verbose=-1),
        "lightgbm-three": lambda: lightgbm.LGBMClassifier(n_estimators=20, verbose=-1),
        "lightgbm-regressor": lambda: lightgbm.LGBMRegressor(n_estimators=20, verbose=-1),
        "catboost-binary": lambda: catboost.CatBoostClassifier(**QUIET_CATBOOST),
        "catboost-regressor": lambda: catboost.CatBoostRegressor(**QUIET_CATBOOST),
    }
    target = data[kind.split("-")[1]] if not kind.endswith("regressor") else data["amount"]
    return models[kind]().fit(x, target)


def expected_of(model: Any, rows: Any) -> tuple[str, np.ndarray]:
    if hasattr(model, "predict_proba"):
        return "probabilities", model.predict_proba(rows)
    return "variable", np.asarray(model.predict(rows)).reshape(-1, 1)


@pytest.mark.parametrize(
    "kind",
    ["xgboost-binary", "xgboost-three", "xgboost-regressor", "lightgbm-binary",
     "lightgbm-three", "lightgbm-regressor", "catboost-binary", "catboost-regressor"],
)  # fmt: skip
def test_a_fitted_model_matches_on_unseen_rows(
    kind: str, data: dict[str, Any], tmp_path: Path
) -> None:
    model = fitted(kind, data)
    repo = modelport.Repository.init(tmp_path / "models")
    manifest = modelport.add_model(repo, "trees", model, sample_input=data["x"].head(64))
    library = kind.split("-")[0]
    assert manifest.metadata["framework"] == library
    assert manifest.metadata[library] == __import__(library).__version__
    output, expected = expected_of(model, data["unseen"])
    with repo.load("trees") as served:
        got = served.predict(data["unseen"].to_numpy(np.float32))
    np.testing.assert_allclose(got[output].reshape(expected.shape), expected, atol=TOLERANCE)
    if output == "probabilities":
        np.testing.assert_array_equal(got["label"], model.predict(data["unseen"]).ravel())


def test_native_files_import(data: dict[str, Any], tmp_path: Path) -> None:
    xgb = fitted("xgboost-three", data)
    xgb.save_model(tmp_path / "model.json")
    lgb = fitted("lightgbm-binary", data)
    lgb.booster_.save_model(tmp_path / "model.txt")  # a Booster: no scikit-learn wrapper
    cat = fitted("catboost-binary", data)
    cat.save_model(str(tmp_path / "model.cbm"))
    unseen = data["unseen"]
    # From the CLI, with a CSV sample and JSON rows to predict:
    data["x"].head(64).to_csv(tmp_path / "sample.csv", index=False)
    (tmp_path / "rows.json").write_text(json.dumps(unseen.to_numpy().tolist()))
    repo = tmp_path / "models"
    ok("import", tmp_path / "model.json", "--name", "xgb", "--repo", repo,
       "--sample-input", tmp_path / "sample.csv")  # fmt: skip
    out = json.loads(ok("predict", "xgb", "--repo", repo, "--input", tmp_path / "rows.json"))
    got = out["outputs"]["probabilities"]
    np.testing.assert_allclose(got, xgb.predict_proba(unseen), atol=TOLERANCE)
    # From Python:
    repository = modelport.Repository.open(repo)
    for name, model in (("model.txt", lgb), ("model.cbm", cat)):
        modelport.add_model(repository, "other", tmp_path / name, sample_input=data["x"][:64])
        with repository.load("other") as served:
            got = served.predict(unseen.to_numpy(np.float32))["probabilities"]
        np.testing.assert_allclose(got, model.predict_proba(unseen), atol=TOLERANCE, err_msg=name)


def test_a_sample_of_the_wrong_width_is_named(data: dict[str, Any], tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    with pytest.raises(ConversionError, match="fitted on 6 features; the sample has 4"):
        modelport.add_model(
            repo, "trees", fitted("xgboost-binary", data), sample_input=np.ones((5, 4))
        )


def test_lightgbm_at_the_end_of_a_dataframe_pipeline(churn: Any, tmp_path: Path) -> None:
    import lightgbm
    from sklearn.pipeline import Pipeline

    pipeline, frame, unseen = churn
    left = pipeline.predict(frame)  # any labels will do: the tree must agree with itself
    boosted = Pipeline(
        [("columns", pipeline.named_steps["columns"]),
         ("model", lightgbm.LGBMClassifier(n_estimators=20, verbose=-1))]
    ).fit(frame, left)  # fmt: skip
    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "boosted", boosted, sample_input=frame.head(64))
    with repo.load("boosted") as model:
        got = model.predict(unseen)
    np.testing.assert_allclose(got["probabilities"], boosted.predict_proba(unseen), atol=TOLERANCE)


def test_a_dataframe_is_taken_in_the_fitted_column_order(
    data: dict[str, Any], tmp_path: Path
) -> None:
    model = fitted("xgboost-binary", data)
    repo = modelport.Repository.init(tmp_path / "models")
    manifest = modelport.add_model(repo, "trees", model, sample_input=data["x"].head(64))
    assert manifest.metadata["columns"] == [f"x{i}" for i in range(6)]
    shuffled = data["unseen"][["x5", "x3", "x1", "x0", "x2", "x4"]]
    with repo.load("trees") as served:
        got = served.predict(shuffled)["probabilities"]
        with pytest.raises(modelport.InvalidInputError, match="missing column 'x5'"):
            served.predict(shuffled.drop(columns="x5"))
    np.testing.assert_allclose(got, model.predict_proba(data["unseen"]), atol=TOLERANCE)
