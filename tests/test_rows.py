"""One value per row: how rows.column reads a tabular model's column, and what it refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelport.errors import InvalidInputError
from modelport.rows import column, is_frame, is_records, records_columns


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        ("float32", [1, 2.5, None, float("nan")], [1.0, 2.5, np.nan, np.nan]),
        ("float32", np.array([1.5, np.nan]), [1.5, np.nan]),
        ("int64", [1, 2.0, np.int64(3)], [1, 2, 3]),
        ("string", ["a", b"b", None, float("nan")], ["a", "b", "", ""]),
        ("string", np.array(["x", "y"]), ["x", "y"]),
    ],
)
def test_a_column_becomes_rows_of_one(dtype: str, values: Any, expected: list[Any]) -> None:
    got = column("c", dtype, values)
    assert got.shape == (len(expected), 1)
    if dtype == "string":
        assert got.ravel().tolist() == expected
    else:
        np.testing.assert_array_equal(got.ravel().astype(float), np.array(expected, dtype=float))


@pytest.mark.parametrize(
    ("dtype", "values", "message"),
    [
        ("float32", [1.0, "two"], r"column 'c', row 1: expected a number \(float32\), got 'two'"),
        ("int64", [1, 2.5], r"column 'c', row 1: expected a whole number \(int64\), got 2.5"),
        ("int64", [1, None], "column 'c', row 1: expected a whole number .*, got a missing value"),
        ("string", ["a", 3], "column 'c', row 1: expected text, got 3"),
        ("float32", np.array(["1", "2"]), "column 'c', row 0: expected a number"),
    ],
)
def test_a_wrong_value_is_named_by_column_and_row(dtype: str, values: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as raised:
        column("c", dtype, values)
    assert raised.value.input_name == "c"


def test_rows_become_columns_and_a_wrong_row_is_named() -> None:
    rows = [{"a": 1, "b": "x"}, {"b": "y", "a": 2}]
    assert is_records(rows)
    assert not is_records([[1, 2]])
    assert records_columns(rows, ["a", "b"]) == {"a": [1, 2], "b": ["x", "y"]}
    with pytest.raises(InvalidInputError, match="row 1: missing column 'b'"):
        records_columns([{"a": 1, "b": "x"}, {"a": 2}], ["a", "b"])
    with pytest.raises(InvalidInputError, match="row 0: unknown column 'z'"):
        records_columns([{"a": 1, "b": "x", "z": 0}], ["a", "b"])


def test_a_frame_is_recognized_without_importing_pandas() -> None:
    import pandas as pd

    assert is_frame(pd.DataFrame({"a": [1]}))
    assert not is_frame({"a": [1]})
    assert not is_frame(np.ones((2, 2)))


def test_a_series_is_a_column() -> None:
    import pandas as pd

    from modelport.rows import is_flat

    series = pd.Series(["a", None, "c"], dtype=object)
    assert is_flat(series)
    assert column("s", "string", series).ravel().tolist() == ["a", "", "c"]
    assert not is_flat(pd.DataFrame({"a": [1]}))
