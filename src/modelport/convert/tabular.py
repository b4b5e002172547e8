"""Samples as tables: one typed ONNX input per DataFrame column, and the checks that come first.

    columns = column_types(frame)       # [("plan", "string"), ("tenure", "int64"), ...]
    feed(frame, columns)                # {"plan": array([["pro"], ...], dtype=object), ...}

Each column becomes a ``[-1, 1]`` tensor, as skl2onnx models a DataFrame: text and categories
as strings, integers as int64, other numbers as float32. A missing value is NaN in a float
column and an empty string in a text column (see rows.py, which does the same to requests).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from modelport import rows
from modelport.errors import ConversionError

Columns = list[tuple[str, str]]  # (name, modelport dtype) in the frame's order


def column_types(frame: Any, integers: str = "int64") -> Columns:
    """The dtype of each column's input: ``integers`` says what integer columns become."""
    types: Columns = []
    for name in frame.columns:
        dtype = frame[name].dtype
        categories = getattr(dtype, "categories", None)
        if categories is not None:  # pandas' categorical: typed as its categories are
            dtype = categories.dtype
        kind = getattr(dtype, "kind", "O")
        if not isinstance(dtype, np.dtype) and kind in "iuf":  # pandas' nullable numbers
            kind = "f"
        if kind in "iub":
            types.append((str(name), integers))
        elif kind == "f":
            types.append((str(name), "float64" if integers == "float64" else "float32"))
        else:
            types.append((str(name), "string"))
    return types


def feed(frame: Any, columns: Columns) -> dict[str, np.ndarray]:
    """The ONNX inputs for ``frame``: each column as a ``[rows, 1]`` array of its dtype."""
    values = rows.frame_columns(frame)
    result = {}
    for name, dtype in columns:
        array = rows.column(name, dtype, values[name])
        result[name] = array if dtype == "string" else array.astype(dtype)
    return result


def missing_as_nan(frame: Any) -> Any:
    """The frame with None in text columns as NaN, which scikit-learn's imputers look for (a
    Parquet file or JSON rows give None; CSV gives NaN): both travel as "" when served."""
    text = [c for c in frame.columns if frame[c].dtype == object and frame[c].isna().any()]
    if not text:
        return frame
    frame = frame.copy()
    for name in text:
        frame[name] = frame[name].where(frame[name].notna(), np.nan)
    return frame


def fitted_columns(estimator: Any) -> list[str] | None:
    """The column names the estimator was fitted on, when it was fitted on a DataFrame."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None or not all(isinstance(n, str) for n in names):
        return None
    return [str(n) for n in names]


def check_columns(estimator: Any, frame: Any) -> None:
    """ConversionError naming a column the estimator needs and the sample lacks, or one it
    has and the estimator never saw (scikit-learn itself would refuse it)."""
    fitted = fitted_columns(estimator) or []
    given = [str(c) for c in frame.columns]
    missing = [c for c in fitted if c not in given]
    if missing:
        raise ConversionError(
            f"the model was fitted on columns {', '.join(map(repr, fitted))}; the sample lacks "
            f"{missing[0]!r}"
        )
    extra = [c for c in given if c not in fitted]
    if extra:
        raise ConversionError(
            f"the sample has column {extra[0]!r}, which the model was not fitted on; it takes "
            f"{', '.join(map(repr, fitted))}: drop it from the sample"
        )


def check_width(fitted: Any, sample: np.ndarray) -> None:
    """ConversionError when the sample's width differs from the ``fitted`` number of features
    (scikit-learn's ``n_features_in_``) when that is known."""
    if isinstance(fitted, (int, np.integer)) and sample.shape[1] != fitted:
        raise ConversionError(
            f"the model was fitted on {fitted} features; the sample has {sample.shape[1]}: "
            "pass rows like those it was fitted on"
        )


def steps(estimator: Any) -> Iterator[tuple[str, Any]]:
    """Every step inside a pipeline, column transformer or union, with its name."""
    yield type(estimator).__name__, estimator
    for attribute in ("steps", "transformers_", "transformer_list"):
        for item in getattr(estimator, attribute, None) or []:
            if isinstance(item, tuple) and len(item) >= 2 and not isinstance(item[1], str):
                for name, inner in steps(item[1]):
                    yield (f"{item[0]}" if inner is item[1] else name), inner


def for_onnx(estimator: Any) -> Any:
    """A copy whose text imputers look for the empty string that stands for a missing value.

    scikit-learn's SimpleImputer finds NaN in text columns; ONNX string tensors cannot hold
    NaN, so a missing text value travels as "" and skl2onnx converts only string markers.
    The parity check, on the original, proves the two agree.
    """
    imputers = [
        s for _, s in steps(estimator) if type(s).__name__ == "SimpleImputer" and _on_text(s)
    ]
    if not imputers:
        return estimator
    clone = copy.deepcopy(estimator)
    for _, step in steps(clone):
        if type(step).__name__ == "SimpleImputer" and _on_text(step):
            step.missing_values = rows.MISSING_TEXT
    return clone


def _on_text(imputer: Any) -> bool:
    statistics = getattr(imputer, "statistics_", None)
    missing = imputer.missing_values
    return (
        statistics is not None
        and statistics.dtype == object
        and isinstance(missing, float)
        and missing != missing
    )


def unsupported_step(estimator: Any, message: str) -> str | None:
    """The name of the step skl2onnx has no converter for, read from its message."""
    for name, step in steps(estimator):
        cls = type(step)
        if f"{cls.__module__}.{cls.__qualname__}" in message or f"'{cls.__name__}'" in message:
            return f"{name!r} ({cls.__name__})" if name != cls.__name__ else cls.__name__
    return None


def from_columns(data: bytes, matrix: str, names: list[str]) -> bytes:
    """A model of one float32 ``matrix`` input as a model of one ``[-1, 1]`` float32 input per
    column, concatenated in ``names``' order into the matrix it takes."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    graph = model.graph
    (old,) = [i for i in graph.input if i.name == matrix]
    graph.input.remove(old)
    for name in names:
        graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None, 1]))
    graph.node.insert(0, helper.make_node("Concat", names, [matrix], axis=1, name="columns"))
    onnx.checker.check_model(model)
    result: bytes = model.SerializeToString()
    return result
