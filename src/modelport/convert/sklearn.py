"""scikit-learn estimators and pipelines to ONNX (via skl2onnx), with a parity check.

    onnx_bytes = sklearn_to_onnx(pipeline, X[:32])         # one numeric matrix
    onnx_bytes = sklearn_to_onnx(pipeline, frame.head(64))  # fitted on a DataFrame

An estimator fitted on a numeric array takes one float32 tensor named ``input`` of shape
``[-1, n_features]``. One fitted on a DataFrame (``feature_names_in_``) takes one ``[-1, 1]``
input per column, typed from the sample (see tabular.py): ColumnTransformer, OneHotEncoder,
OrdinalEncoder, SimpleImputer and the rest of skl2onnx's converters see the columns they were
fitted on. Classifiers give ``label`` and ``probabilities`` (a plain tensor, not a list of
maps); regressors ``variable``; transformers their transform.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from modelport.convert import tabular
from modelport.convert.parity import Tolerance, assert_close, check_labels, quiet_session
from modelport.convert.trees import library_of, register_trees
from modelport.errors import ConversionError, require
from modelport.rows import is_frame

INPUT_NAME = "input"


def sklearn_to_onnx(
    estimator: Any,
    sample: Any,
    tolerance: Tolerance = Tolerance(),
    target_opset: int | None = None,
) -> bytes:
    """Convert a fitted estimator; raise ConversionError if it fails or loses parity."""
    require("skl2onnx", "sklearn")
    if is_frame(sample) and tabular.fitted_columns(estimator) is not None:
        return _from_frame(estimator, sample, tolerance, target_opset)
    matrix = np.asarray(sample.to_numpy() if is_frame(sample) else sample)
    if matrix.ndim != 2:
        raise ConversionError(
            f"the sample input must be a 2-D array (rows x features), got shape "
            f"{list(matrix.shape)}"
        )
    if matrix.dtype.kind not in "biuf":
        raise ConversionError(
            "the sample holds text, but the model takes one numeric matrix; a model that takes "
            "text columns must be fitted on a pandas DataFrame (so it knows its columns' names)"
        )
    tabular.check_width(getattr(estimator, "n_features_in_", None), matrix)
    inputs = [(INPUT_NAME, "float32", matrix.shape[1])]
    data = _convert(estimator, estimator, inputs, target_opset)
    _checked(estimator, data, matrix, {INPUT_NAME: matrix.astype(np.float32)}, tolerance)
    return data


def _from_frame(estimator: Any, frame: Any, tolerance: Tolerance, opset: int | None) -> bytes:
    tabular.check_columns(estimator, frame)
    given = frame[tabular.fitted_columns(estimator)]
    frame = tabular.missing_as_nan(given)  # None in text columns as NaN, as imputers expect
    _check_none_is_nan(estimator, given)  # served, None and NaN are both "missing"
    converted = tabular.for_onnx(estimator)
    columns = tabular.column_types(frame)
    try:
        data = _convert(estimator, converted, [(n, t, 1) for n, t in columns], opset)
    except ConversionError as exc:
        numeric = [(n, "float32") for n, _ in columns]
        if any(t == "string" for _, t in columns):
            if not any(t == "int64" for _, t in columns):
                raise
            # Some converters (SimpleImputer's) take floats only: integer columns as float32.
            columns = tabular.column_types(frame, integers="float32")
            data = _convert(estimator, converted, [(n, t, 1) for n, t in columns], opset)
        elif "at most 1 input" in str(exc.__cause__):
            # A lone estimator takes one matrix: convert it so, then feed it the columns.
            inside = "__matrix__"  # a name no column has: the Concat's output
            matrix = _convert(estimator, converted, [(inside, "float32", len(columns))], opset)
            data = tabular.from_columns(matrix, inside, [n for n, _ in numeric])
            columns = numeric
        else:
            columns = numeric  # integer columns as float32, as above
            data = _convert(estimator, converted, [(n, t, 1) for n, t in columns], opset)
    _checked(estimator, data, frame, tabular.feed(frame, columns), tolerance)
    return data


def _check_none_is_nan(estimator: Any, given: Any) -> None:
    """A served model takes a missing value one way, as NaN: refuse a pipeline whose encoder
    learned None as a category (fitted with None, which SimpleImputer does not replace)."""
    for name, step in tabular.steps(estimator):
        if any(any(c is None for c in categories) for categories in _categories(step)):
            columns = [c for c in given.columns if given[c].dtype == object]
            raise ConversionError(
                f"step {name!r} learned None as a category of {', '.join(map(repr, columns))}: "
                "fitted with None for missing values, which SimpleImputer does not replace, the "
                "pipeline tells None from NaN; served, a missing value is one thing. Fit it with "
                "NaN for missing values (frame.fillna(np.nan)), then import it again"
            )


def _categories(step: Any) -> list[Any]:
    categories = getattr(step, "categories_", None)
    return list(categories) if isinstance(categories, list) else []


def _convert(
    original: Any, estimator: Any, inputs: list[tuple[str, str, int]], target_opset: int | None
) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common import data_types

    kinds = {
        "float32": data_types.FloatTensorType,
        "float64": data_types.DoubleTensorType,
        "int64": data_types.Int64TensorType,
        "string": data_types.StringTensorType,
    }
    final = getattr(estimator, "_final_estimator", estimator)
    options: dict[int, dict[str, Any]] = {}
    if hasattr(final, "predict_proba"):
        options[id(final)] = {"zipmap": False}
    opset: int | dict[str, int] | None = target_opset
    if any(library_of(step) for _, step in tabular.steps(estimator)):
        from skl2onnx import get_latest_tested_opset_version

        # Tree thresholds are data values: scale in float64, then cast, as the original does,
        # or rows on a threshold fall on the other side of it.
        for _, step in tabular.steps(estimator):
            if type(step).__name__ == "StandardScaler":
                options[id(step)] = {"div": "div_cast"}

        register_trees()  # XGBoost or LightGBM inside a pipeline: onnxmltools' converters
        opset = {"": target_opset or get_latest_tested_opset_version(), "ai.onnx.ml": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converter deprecation noise is not the user's concern
        try:
            onx = convert_sklearn(
                estimator,
                initial_types=[(n, kinds[t]([None, width])) for n, t, width in inputs],
                options=options or None,
                target_opset=opset,
            )
        except Exception as exc:
            step = tabular.unsupported_step(original, str(exc))
            if step is not None and "Unable to find" in str(exc):
                where = (
                    step
                    if step == type(original).__name__
                    else f"step {step} of {type(original).__name__}"
                )
                raise ConversionError(
                    f"skl2onnx has no converter for {where}; "
                    "replace it with a step skl2onnx converts, or import the model as a code "
                    "model (a folder with model.py that loads and calls it)"
                ) from exc
            raise ConversionError(
                f"skl2onnx cannot convert {type(original).__name__}: {exc}"
            ) from exc
    data: bytes = onx.SerializeToString()
    return data


def _checked(
    estimator: Any, data: bytes, sample: Any, feed: dict[str, np.ndarray], tolerance: Tolerance
) -> None:
    try:
        _check_parity(estimator, data, sample, feed, tolerance)
    except ConversionError as exc:
        if not any(library_of(step) == "xgboost" for _, step in tabular.steps(estimator)):
            raise
        raise ConversionError(
            f"{exc}. XGBoost's thresholds are data values, and steps before it compute in "
            "float32 in ONNX: rows on a threshold move across it. Trees need no scaling: leave "
            "it out before XGBoost, or use LightGBM or a code model"
        ) from exc
    except Exception as exc:
        raise ConversionError(
            f"{type(estimator).__name__} raised on the sample input (shape "
            f"{list(sample.shape)}): {exc}; pass rows the estimator was fitted on"
        ) from exc


def _check_parity(
    estimator: Any, data: bytes, sample: Any, feed: dict[str, np.ndarray], tolerance: Tolerance
) -> None:
    try:
        session = quiet_session(data)
        results = session.run(None, feed)
    except Exception as exc:
        raise ConversionError(f"the converted model fails in onnxruntime: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, results, strict=True))
    if "probabilities" in values and hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(sample)
        assert_close("probabilities", proba, values["probabilities"], tolerance)
        check_labels(proba, np.asarray(estimator.predict(sample)), values["label"], tolerance)
    elif hasattr(estimator, "predict"):
        expected = np.asarray(estimator.predict(sample), dtype=np.float64)
        assert_close(names[0], expected, values[names[0]].reshape(expected.shape), tolerance)
    else:
        expected = np.asarray(estimator.transform(sample), dtype=np.float64)
        assert_close(names[0], expected, values[names[0]], tolerance)


def sklearn_metadata() -> dict[str, str]:
    import skl2onnx
    import sklearn

    return {
        "framework": "scikit-learn",
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
    }
