"""Rows for quantize, distill and bench: files of every kind, checked against a signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport.errors import InvalidInputError, OptimizationError
from modelport.optimize.rows import read_rows
from modelport.optimize.scoring import task_of
from modelport.signature import Signature, TensorSpec

IMAGES = Signature(
    (TensorSpec("input", "float32", (-1, 1, 2, 2)),), (TensorSpec("output", "float32", (-1, 3)),)
)
TWO = Signature(
    (TensorSpec("a", "float32", (-1, 1)), TensorSpec("b", "int64", (-1,))),
    (TensorSpec("label", "int64", (-1,)), TensorSpec("probabilities", "float32", (-1, 3))),
)


def test_a_wide_csv_becomes_the_one_input_and_its_labels(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("p0,p1,digit,p2,p3\n1,2,7,3,4\n5,6,1,7,8\n")
    rows = read_rows(path, IMAGES, labels="digit")
    assert rows.count == 2
    assert rows.inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(rows.inputs["input"][1].ravel(), [5, 6, 7, 8])
    np.testing.assert_array_equal(rows.labels, [7, 1])
    assert rows.lineage()["rows"] == 2
    assert len(rows.lineage()["sha256"]) == 64


def test_named_columns_parquet_npz_and_json(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"b": [1, 2, 3], "y": [0, 1, 2], "a": [0.5, 1.5, 2.5]})
    pq.write_table(table, tmp_path / "rows.parquet")
    rows = read_rows(tmp_path / "rows.parquet", TWO, labels="y")
    assert rows.inputs["a"].shape == (3, 1)
    assert rows.inputs["b"].dtype == np.int64
    np.savez(tmp_path / "rows.npz", a=np.ones((4, 1)), b=np.arange(4), y=np.arange(4))
    assert read_rows(tmp_path / "rows.npz", TWO, labels="y").count == 4
    (tmp_path / "rows.json").write_text(json.dumps({"a": [[1.0]], "b": [2], "y": [1]}))
    assert read_rows(tmp_path / "rows.json", TWO, labels="y").labels.tolist() == [1]  # type: ignore[union-attr]


def test_what_does_not_fit_is_named(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("p0,p1,name\n1,2,x\n")
    with pytest.raises(InvalidInputError, match="column 'name' is not numeric"):
        read_rows(csv, IMAGES)
    with pytest.raises(InvalidInputError, match=r"input 'input': expected rank 4 with shape "
                       r"\[\?, 1, 2, 2\], got rank 2"):  # fmt: skip
        read_rows(csv, IMAGES, labels="name")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(InvalidInputError, match="labels column 'y' is not there"):
        read_rows(tmp_path / "x.npy", IMAGES, labels="y")
    with pytest.raises(OptimizationError, match="3 rows is too few to calibrate; at least 16"):
        read_rows(tmp_path / "x.npy", IMAGES, min_rows=16, role="calibrate")
    np.savez(tmp_path / "two.npz", a=np.ones((4, 1)), b=np.arange(3))
    with pytest.raises(InvalidInputError, match="different row counts"):
        read_rows(tmp_path / "two.npz", TWO)
    np.savez(tmp_path / "one.npz", a=np.ones((4, 1)))
    with pytest.raises(InvalidInputError, match="no column named 'b'"):
        read_rows(tmp_path / "one.npz", TWO)
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InvalidInputError, match=r"unsupported file type \.txt"):
        read_rows(tmp_path / "x.txt", IMAGES)


def test_what_a_model_predicts_is_read_from_its_signature() -> None:
    assert task_of(IMAGES).kind == "classifier"
    assert task_of(IMAGES).argmax
    assert task_of(TWO).output == "label"
    assert not task_of(TWO).argmax
    value = Signature(IMAGES.inputs, (TensorSpec("price", "float64", (-1, 1)),))
    assert task_of(value).kind == "regressor"
    assert task_of(value).score(np.array([[1.0], [2.0], [3.0]]), np.array([1, 2, 3])) == 1.0
    classes = task_of(IMAGES)
    assert classes.score(np.array([1, 2, 0, 0]), np.array([1.0, 2.0, 1.0, 0.0])) == 0.75
