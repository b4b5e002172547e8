"""Rows and tables as a model's inputs: DataFrames, lists of ``{column: value}`` records, and
plain columns for models that take one input per column.

    model.predict(frame)                                   # a pandas DataFrame
    model.predict([{"plan": "pro", "tenure": 12}, ...])   # rows, the way people write them

A tabular model (a scikit-learn pipeline fitted on a DataFrame, say) takes each column as an
input of shape ``[-1, 1]``: strings as ``string``, numbers as ``int64``, ``float32`` or
``float64``. Here a column may come as a flat list or 1-D array, one value per row, and a
missing value (None, NaN) is what the converted pipeline expects: NaN for a float column, an
empty string for a text column. pandas is never imported: a DataFrame is recognized by shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelport.errors import InvalidInputError

MISSING_TEXT = ""  # what a missing value in a text column becomes (see convert/tabular.py)


def is_frame(value: Any) -> bool:
    """A pandas (or pandas-like) DataFrame: named columns with dtypes, without importing it."""
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "iloc")


def frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """Each column of a DataFrame as a 1-D array: numbers as they are, anything else (text,
    categories, pandas' nullable types) as Python objects."""
    columns: dict[str, np.ndarray] = {}
    for name in frame.columns:
        series = frame[name]
        numeric = isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf"
        columns[str(name)] = series.to_numpy() if numeric else series.to_numpy(dtype=object)
    return columns


def is_records(value: Any) -> bool:
    return type(value) is list and bool(value) and all(type(row) is dict for row in value)


def records_columns(records: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """``[{column: value}, ...]`` as ``{column: [values]}``; InvalidInputError names the row and
    the column that is missing or unknown."""
    wanted = set(names)
    for i, row in enumerate(records):
        if row.keys() != wanted:
            unknown = [k for k in row if k not in wanted]
            if unknown:
                raise InvalidInputError(
                    f"row {i}: unknown column {unknown[0]!r}; the model takes "
                    f"{', '.join(map(repr, names))}",
                    str(unknown[0]),
                )
            missing = next(n for n in names if n not in row)
            raise InvalidInputError(
                f"row {i}: missing column {missing!r}; the model takes "
                f"{', '.join(map(repr, names))}",
                missing,
            )
    return {name: [row[name] for row in records] for name in names}


def is_flat(value: Any) -> bool:
    """One value per row: a 1-D array (or pandas Series), or a list of scalars."""
    if isinstance(value, np.ndarray) or is_frame(value):
        return bool(value.ndim == 1)
    if hasattr(value, "ndim") and hasattr(value, "to_numpy"):  # a Series
        return bool(value.ndim == 1)
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and not isinstance(value[0], (list, tuple, np.ndarray))
    )


def column(name: str, dtype: str, values: Any) -> np.ndarray:
    """One column's values, one per row, as a ``[rows, 1]`` array of ``dtype``.

    Missing values: NaN in a float column, an empty string in a text column; an integer
    column has no room for one. Raises InvalidInputError naming the column and the row.
    """
    array = values if isinstance(values, np.ndarray) else None
    if array is not None and array.dtype != object:
        if dtype == "string" and array.dtype.kind not in "US":
            _refuse(name, dtype, 0, array[0] if len(array) else None)
        if dtype != "string" and array.dtype.kind not in "biuf":
            _refuse(name, dtype, 0, array[0] if len(array) else None)
        return array.reshape(-1, 1)
    items = list(values)
    if dtype == "string":
        out = np.empty(len(items), dtype=object)
        for i, value in enumerate(items):
            if isinstance(value, str):
                out[i] = value
            elif isinstance(value, bytes):
                out[i] = value.decode("utf-8", "replace")
            elif _missing(value):
                out[i] = MISSING_TEXT
            else:
                _refuse(name, dtype, i, value)
        return out.reshape(-1, 1)
    floats = np.dtype(dtype).kind == "f"
    kinds = set(map(type, items))
    if (floats or float not in kinds) and (
        kinds <= {int, float, bool} or all(isinstance(v, (int, float, np.number)) for v in items)
    ):
        try:
            return np.array(items).reshape(-1, 1)
        except (OverflowError, ValueError):
            pass
    out = np.empty(len(items), dtype=np.float64 if floats else np.int64)
    for i, value in enumerate(items):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            if floats and _missing(value):
                out[i] = math.nan
                continue
            _refuse(name, dtype, i, value)
        elif not floats and not float(value).is_integer():
            _refuse(name, dtype, i, value)
        else:
            out[i] = value
    return out.reshape(-1, 1)


def _missing(value: Any) -> bool:
    if value is None or type(value).__name__ == "NAType":  # pandas.NA, whose == is NA
        return True
    try:
        return bool(value != value)  # NaN, pandas' NA and NaT
    except (TypeError, ValueError):
        return False


def _refuse(name: str, dtype: str, row: int, value: Any) -> None:
    if dtype == "string":
        expected = "text"
    elif np.dtype(dtype).kind == "f":
        expected = f"a number ({dtype})"
    else:
        expected = f"a whole number ({dtype})"
    got = "a missing value" if _missing(value) else repr(value)[:40]
    raise InvalidInputError(f"column {name!r}, row {row}: expected {expected}, got {got}", name)
