"""Tabular models: a pipeline fitted on a DataFrame, imported with one typed input per column,
then given DataFrames, rows and files the way people hold their data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport.errors import ConversionError, InvalidInputError
from test_cli import modelport as cli
from test_cli import ok

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, churn: Any) -> modelport.Repository:
    pipeline, frame, _ = churn
    repository = modelport.Repository.init(tmp_path_factory.mktemp("tabular") / "models")
    modelport.add_model(repository, "churn", pipeline, sample_input=frame.head(64))
    return repository


def test_a_dataframe_pipeline_takes_one_typed_input_per_column(
    repo: modelport.Repository, churn: Any
) -> None:
    pipeline, _, unseen = churn
    manifest = repo.manifest("churn")
    inputs = {s.name: (s.dtype, s.shape) for s in manifest.signature.inputs}
    assert inputs == {
        "plan": ("string", (-1, 1)),
        "region": ("string", (-1, 1)),
        # skl2onnx's SimpleImputer takes floats: integer columns come in as float32.
        "tenure_months": ("float32", (-1, 1)),
        "monthly_charges": ("float32", (-1, 1)),
        "support_calls": ("float32", (-1, 1)),
    }
    assert manifest.metadata["framework"] == "scikit-learn"
    assert unseen["plan"].isna().any()
    assert unseen["monthly_charges"].isna().any()
    with modelport.load(repo.root / "churn") as model:
        got = model.predict(unseen)
    np.testing.assert_allclose(got["probabilities"], pipeline.predict_proba(unseen), atol=TOLERANCE)
    assert (got["label"] == pipeline.predict(unseen)).mean() > 0.99


def test_rows_columns_and_frames_give_the_same_answer(
    repo: modelport.Repository, churn: Any
) -> None:
    pipeline, _, unseen = churn
    frame = unseen.head(20)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert any(r["plan"] is None for r in rows)  # a missing value, as JSON's null gives it
    columns = {name: frame[name].tolist() for name in frame.columns}
    with repo.load("churn") as model:
        answers = [model.predict(x)["probabilities"] for x in (frame, rows, columns)]
    for got in answers:
        np.testing.assert_allclose(got, pipeline.predict_proba(frame), atol=TOLERANCE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tenure_months": "ten"}, "column 'tenure_months', row 1: expected a number .*'ten'"),
        ({"plan": 3}, "column 'plan', row 1: expected text, got 3"),
        ({"plan": ...}, "row 1: missing column 'plan'"),
        ({"age": 40}, "row 1: unknown column 'age'"),
    ],
)
def test_a_bad_row_is_named_with_its_column(
    repo: modelport.Repository, churn: Any, change: dict[str, Any], message: str
) -> None:
    rows = churn[2].head(3).astype(object).to_dict("records")
    rows[1] = {k: v for k, v in {**rows[1], **change}.items() if v is not ...}
    with repo.load("churn") as model, pytest.raises(InvalidInputError, match=message):
        model.predict(rows)


def test_a_frame_missing_a_column_is_refused_by_name(
    repo: modelport.Repository, churn: Any
) -> None:
    with repo.load("churn") as model, pytest.raises(InvalidInputError, match="'region'"):
        model.predict(churn[2].drop(columns="region"))


def test_samples_that_do_not_fit_the_model_are_refused_before_onnxruntime_runs(
    repo: modelport.Repository, churn: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import LogisticRegression

    pipeline, frame, _ = churn
    with pytest.raises(ConversionError, match=r"fitted on columns .*; the sample lacks 'plan'"):
        modelport.add_model(repo, "churn", pipeline, sample_input=frame.drop(columns="plan"))
    wide = LogisticRegression().fit(np.random.default_rng(0).random((40, 30)), np.arange(40) % 2)
    with pytest.raises(ConversionError, match="fitted on 30 features; the sample has 4"):
        modelport.add_model(repo, "wide", wide, sample_input=np.ones((5, 4)))
    assert capfd.readouterr().err == ""  # onnxruntime's C++ log never reaches the terminal


def test_a_step_skl2onnx_cannot_convert_is_named(churn: Any, tmp_path: Path) -> None:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    class Squares(TransformerMixin, BaseEstimator):  # type: ignore[misc]
        def fit(self, x: Any, y: Any = None) -> Squares:
            return self

        def transform(self, x: Any) -> Any:
            return np.asarray(x) ** 2

    x = np.random.default_rng(0).random((40, 3))
    pipeline = Pipeline([("squares", Squares()), ("model", LogisticRegression())])
    pipeline.fit(x, np.arange(40) % 2)
    repository = modelport.Repository.init(tmp_path / "models")
    with pytest.raises(ConversionError, match=r"step 'squares' \(Squares\).*code model"):
        modelport.add_model(repository, "squares", pipeline, sample_input=x[:8])


def test_the_cli_imports_from_csv_and_predicts_csv_json_rows_and_parquet(
    churn: Any, tmp_path: Path
) -> None:
    pipeline, frame, unseen = churn
    frame.head(64).to_csv(tmp_path / "sample.csv", index=False)  # NaN: an empty field
    repo = tmp_path / "models"
    pickled = tmp_path / "churn.joblib"
    import joblib

    joblib.dump(pipeline, pickled)
    ok("import", pickled, "--name", "churn", "--repo", repo, "--trust-pickle",
       "--sample-input", tmp_path / "sample.csv")  # fmt: skip
    rows = unseen.head(8)
    expected = pipeline.predict_proba(rows)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    rows.to_parquet(tmp_path / "rows.parquet")
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    (tmp_path / "rows.json").write_text(json.dumps({"instances": records}))
    for name in ("rows.csv", "rows.parquet", "rows.json"):
        out = ok("predict", "churn", "--repo", repo, "--input", tmp_path / name)
        got = json.loads(out)["outputs"]["probabilities"]
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, err_msg=name)
        # float32 as float32: 0.5267865, not 0.5267865061759949
        assert not re.search(r"\d\.\d{10,}", out), out
    bad = tmp_path / "bad.csv"
    rows.assign(support_calls=["x"] + [1] * 7).to_csv(bad, index=False)
    failed = cli("predict", "churn", "--repo", repo, "--input", bad)
    assert failed.returncode == 1
    assert "column 'support_calls', row 0: expected a number (float32), got 'x'" in failed.stderr


def test_integer_columns_stay_int64_when_every_step_takes_them(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"city": rng.choice(["oslo", "rome"], 100), "rooms": rng.integers(1, 6, 100)}
    )
    price = (frame.rooms * 100 + (frame.city == "oslo") * 50).to_numpy(float)
    columns = ColumnTransformer(
        [("city", OneHotEncoder(), ["city"]), ("rooms", "passthrough", ["rooms"])]
    )
    pipeline = Pipeline([("columns", columns), ("model", LinearRegression())]).fit(frame, price)
    repo = modelport.Repository.init(tmp_path / "models")
    manifest = modelport.add_model(repo, "price", pipeline, sample_input=frame.head(20))
    assert {s.name: s.dtype for s in manifest.signature.inputs} == {
        "city": "string",
        "rooms": "int64",
    }
    with repo.load("price") as model:
        got = model.predict([{"city": "rome", "rooms": 3}, {"city": "oslo", "rooms": 1}])
        with pytest.raises(InvalidInputError, match="column 'rooms', row 0: expected a whole"):
            model.predict([{"city": "rome", "rooms": 2.5}])
    np.testing.assert_allclose(got["variable"].ravel(), [300, 150], atol=1e-3)


def test_a_lone_estimator_fitted_on_numbers_takes_its_columns_by_name(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=["a", "b", "c", "d"])
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    forest.fit(frame, (frame.a + frame.b > 0).astype(int))
    repo = modelport.Repository.init(tmp_path / "models")
    manifest = modelport.add_model(repo, "forest", forest, sample_input=frame.head(50))
    assert [(s.name, s.shape) for s in manifest.signature.inputs] == [
        (name, (-1, 1)) for name in "abcd"
    ]
    unseen = pd.DataFrame(rng.normal(size=(30, 4)), columns=["a", "b", "c", "d"])
    with repo.load("forest") as model:
        got = model.predict(unseen[["d", "c", "b", "a"]])  # by name, whatever the order
    np.testing.assert_allclose(got["probabilities"], forest.predict_proba(unseen), atol=TOLERANCE)


def test_a_parquet_sample_with_none_for_missing_text_imports(churn: Any, tmp_path: Path) -> None:
    from modelport.datafiles import read_sample

    pipeline, frame, unseen = churn
    frame.head(64).to_parquet(tmp_path / "sample.parquet")
    sample = read_sample(tmp_path / "sample.parquet")
    assert any(v is None for v in sample["plan"])  # Parquet's null, where CSV gives NaN
    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "churn", pipeline, sample_input=sample)
    with repo.load("churn") as model:
        got = model.predict(unseen)
    np.testing.assert_allclose(got["probabilities"], pipeline.predict_proba(unseen), atol=TOLERANCE)


def test_a_pipeline_that_learned_none_as_a_category_is_refused(churn: Any, tmp_path: Path) -> None:
    from tabular_models import churn_pipeline

    _, frame, _ = churn
    with_none = frame.astype({"plan": object}).where(frame.notna(), None)
    with_none["region"] = frame["region"]
    fitted = churn_pipeline(with_none, (frame.tenure_months < 12).to_numpy())
    repo = modelport.Repository.init(tmp_path / "models")
    with pytest.raises(ConversionError, match=r"learned None as a category of 'plan'.*fillna"):
        modelport.add_model(repo, "churn", fitted, sample_input=with_none.head(64))


def test_a_categorical_of_numbers_is_a_number_column(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"floor": pd.Categorical(rng.integers(1, 4, 200)), "x": rng.normal(size=200)}
    )
    left = ((frame.floor.astype(int) > 1) ^ (frame.x > 0)).astype(int)
    columns = ColumnTransformer([("floor", OneHotEncoder(), ["floor"])], remainder="passthrough")
    pipeline = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, left)
    repo = modelport.Repository.init(tmp_path / "models")
    manifest = modelport.add_model(repo, "floors", pipeline, sample_input=frame.head(50))
    assert manifest.signature.inputs[0].dtype == "int64"
    with repo.load("floors") as model:
        got = model.predict([{"floor": 2, "x": 0.5}])["probabilities"]
    expected = pipeline.predict_proba(frame.head(1).assign(floor=pd.Categorical([2]), x=0.5))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
