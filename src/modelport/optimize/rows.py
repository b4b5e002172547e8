"""Rows for calibration, evaluation and training, read from a file and checked against a model.

    rows = read_rows(Path("eval.csv"), model.signature, labels="digit")
    rows.inputs      # {"input": float32 [n, 64]}, validated like any prediction's inputs
    rows.labels      # the "digit" column, or None

Files: CSV (a header), Parquet, ``.npz`` (one array per input, and the labels array),
``.npy`` (the one input; no labels) and JSON (``{"input": [[...]], "digit": [...]}``). A
column named like an input becomes that input; a model with one input otherwise takes every
column but the labels, in order, reshaped to the input's fixed dims when their product matches
(64 columns for an input of shape ``[-1, 1, 8, 8]``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidInputError, OptimizationError, require
from modelport.signature import Signature, validate_inputs

FORMATS = (".csv", ".parquet", ".npz", ".npy", ".json")


@dataclass(frozen=True)
class Rows:
    """Inputs ready for the model, their labels if any, and where they came from."""

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray) -> Rows:
        """The rows at ``index`` (an array of row numbers)."""
        labels = None if self.labels is None else self.labels[index]
        return Rows(self.path, {k: v[index] for k, v in self.inputs.items()}, labels, self.sha256)

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [
            {k: v[start : start + size] for k, v in self.inputs.items()}
            for start in range(0, self.count, size)
        ]

    def lineage(self) -> dict[str, Any]:
        """What the manifest records about these rows."""
        return {"file": self.path.name, "sha256": self.sha256, "rows": self.count}


def read_rows(
    path: Path, signature: Signature, labels: str | None = None, min_rows: int = 1, role: str = ""
) -> Rows:
    """Read ``path`` for a model of ``signature``; InvalidInputError names what does not fit.

    ``role`` ("calibration", "eval"...) words the error when there are fewer than ``min_rows``.
    """
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist")
    columns = _columns(path)
    label_values = None
    if labels is not None:
        if labels not in columns:
            found = ", ".join(map(repr, list(columns)[:8])) or "none"
            raise InvalidInputError(
                f"{path}: labels column {labels!r} is not there (columns: {found})", labels
            )
        label_values = np.asarray(columns.pop(labels))
    inputs = _inputs(path, columns, signature)
    try:
        checked = validate_inputs(signature, inputs)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}", exc.input_name) from None
    counts = {name: len(array) for name, array in checked.items()}
    count = min(counts.values())
    if len(set(counts.values())) > 1:
        raise InvalidInputError(f"{path}: the inputs have different row counts {counts}")
    if label_values is not None and len(label_values) != count:
        raise InvalidInputError(
            f"{path}: labels column {labels!r} has {len(label_values)} rows, the inputs {count}",
            labels,
        )
    if count < min_rows:
        raise OptimizationError(
            f"{path}: {count} rows is too few{' to ' + role if role else ''}; at least "
            f"{min_rows} are needed (a few hundred representative rows is better)"
        )
    return Rows(path, checked, label_values, _sha256(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _columns(path: Path) -> dict[str, Any]:
    """The file's columns (or arrays) by name, in file order."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _csv_columns(path)
        if suffix == ".parquet":
            require("pyarrow", "batch")
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return {name: table.column(name).to_numpy() for name in table.column_names}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, list):
                return {"": data}
            if isinstance(data, dict):
                return dict(data)
            raise InvalidInputError(f"{path}: JSON rows must be an object of columns or a list")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: cannot read rows ({exc})") from exc
    raise InvalidInputError(
        f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(FORMATS)}"
    )


def _csv_columns(path: Path) -> dict[str, Any]:
    with path.open(newline="") as f:
        table = list(csv.reader(f))
    if len(table) < 2:
        raise InvalidInputError(f"{path}: a CSV needs a header row and at least one row")
    header, body = table[0], table[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidInputError(
                f"{path}: line {number} has {len(row)} values, the header {len(header)}"
            )
    columns: dict[str, Any] = {}
    for index, name in enumerate(header):
        values = [row[index] for row in body]
        try:
            columns[name] = np.array(values, dtype=np.float64)
        except ValueError:
            columns[name] = np.array(values, dtype=object)  # text: labels may be names
    return columns


def _inputs(path: Path, columns: dict[str, Any], signature: Signature) -> dict[str, Any]:
    names = signature.input_names
    if all(name in columns for name in names):
        return {spec.name: _shaped(columns[spec.name], spec.shape) for spec in signature.inputs}
    if len(names) != 1:
        missing = next(name for name in names if name not in columns)
        raise InvalidInputError(
            f"{path}: no column named {missing!r}; the model takes {', '.join(map(repr, names))}",
            missing,
        )
    spec = signature.inputs[0]
    if not columns:
        raise InvalidInputError(f"{path}: no columns left for input {spec.name!r}", spec.name)
    if len(columns) == 1:
        return {spec.name: _shaped(next(iter(columns.values())), spec.shape)}
    for name, values in columns.items():
        array = np.asarray(values)
        if array.ndim != 1 or array.dtype.kind not in "biuf":
            raise InvalidInputError(
                f"{path}: column {name!r} is not numeric; every column but the labels is a "
                f"feature of input {spec.name!r} (shape {_shape_text(spec.shape)})",
                spec.name,
            )
    stacked = np.stack([np.asarray(v) for v in columns.values()], axis=1)
    return {spec.name: _shaped(stacked, spec.shape)}


def _shaped(values: Any, shape: tuple[int, ...]) -> Any:
    """A table of rows as the input's fixed dims, when only the layout differs."""
    array = values if isinstance(values, np.ndarray) else None
    if array is None:
        return values  # JSON lists: validate_inputs reads them and says what is wrong
    fixed = shape[1:]
    if array.ndim >= 1 and fixed and all(d > 0 for d in fixed):
        width = math.prod(fixed)
        if array.ndim != len(shape) and math.prod(array.shape[1:]) == width:
            return array.reshape((len(array), *fixed))
    if array.ndim == 1 and len(shape) == 2 and shape[1] == 1:
        return array.reshape(-1, 1)
    return array


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"
