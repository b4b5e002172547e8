"""Reading model inputs from files (JSON, .npy, .npz, CSV) and writing outputs as JSON.

Formats:
- ``.json``: ``{"input_name": [[...]], ...}``, an Open Inference Protocol request
  (``{"inputs": [{"name", "shape", "datatype", "data"}]}``), ``{"instances": [...]}`` (rows, or
  objects of input name -> value), or a bare list for a one-input model;
- ``.npy``: one array; ``.npz``: one array per input name;
- ``.csv`` with a header, ``.parquet``: columns named like the model's inputs become those
  inputs (a tabular model takes one per column; an empty CSV field is a missing value);
  otherwise every column is a feature of the single input, one row per sample.

A sample for import (``read_sample``) from CSV or Parquet is a pandas DataFrame when pandas is
installed, so that a pipeline fitted on one sees its columns by name and type.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelport.errors import InvalidInputError, installed, require
from modelport.rows import is_records, records_columns
from modelport.signature import Signature

FORMATS = (".json", ".npy", ".npz", ".csv", ".parquet")


def read_inputs(path: Path, signature: Signature) -> dict[str, Any]:
    """Inputs for ``signature`` from a file; InvalidInputError says what is wrong with it."""
    if _is_parquet(path):
        return _parquet_inputs(path, signature)
    data = _read(path)
    if _is_csv(path):
        data = _csv_inputs(path, data, signature)
    if is_records(data):
        try:
            return records_columns(data, signature.input_names)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{path}: {exc}", exc.input_name) from None
    if isinstance(data, Mapping):
        return dict(data)
    if len(signature.inputs) != 1:
        raise InvalidInputError(
            f"{path}: the model takes {len(signature.inputs)} inputs "
            f"({', '.join(signature.input_names)}): name each one (JSON object, .npz or CSV)"
        )
    return {signature.inputs[0].name: data}


def read_sample(path: Path) -> Any:
    """A sample input for import, before any signature exists: one array, named arrays, or
    (CSV and Parquet, with pandas installed) a DataFrame."""
    if (_is_csv(path) or _is_parquet(path)) and installed("pandas"):
        return _frame(path)
    if _is_parquet(path):
        raise InvalidInputError(f"{path}: a Parquet sample needs pandas: pip install pandas")
    data = _read(path)
    if is_records(data):
        names = list(data[0])
        if installed("pandas"):
            import pandas as pd

            return pd.DataFrame(records_columns(data, names))
        data = records_columns(data, names)
    try:
        if isinstance(data, Mapping):
            return {k: np.asarray(v) for k, v in data.items()}
        return _table(path, data) if _is_csv(path) else np.asarray(data)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: the sample is not a rectangular array ({exc})") from exc


def _read(path: Path) -> Any:
    """The file's content: an array, a dict of arrays or JSON values, or CSV rows."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".json":
            return _from_json(path, json.loads(path.read_text()))
        if suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if len(rows) < 2:
                raise InvalidInputError(f"{path}: a CSV needs a header row and at least one row")
            if any(len(row) != len(rows[0]) for row in rows):
                raise InvalidInputError(f"{path}: every CSV row needs {len(rows[0])} columns")
            return rows
    except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInputError(f"{path}: cannot read inputs ({exc})") from exc
    raise InvalidInputError(
        f"{path}: unsupported input file type {suffix or '(none)'}; use {', '.join(FORMATS)}"
    )


def _from_json(path: Path, data: Any) -> Any:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: JSON input must be an object or a list")
    if "instances" in data:
        instances = data["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInputError(f"{path}: 'instances' must be a non-empty list")
        return instances  # rows of values, or {column: value} objects
    if "inputs" in data:
        return _v2_inputs(path, data["inputs"])
    return data


def _v2_inputs(path: Path, tensors: Any) -> dict[str, Any]:
    if not isinstance(tensors, list):
        raise InvalidInputError(f"{path}: 'inputs' must be a list of tensors")
    result: dict[str, Any] = {}
    for tensor in tensors:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if not isinstance(name, str) or "data" not in tensor:
            raise InvalidInputError(
                f"{path}: each entry of 'inputs' needs a string 'name' and 'data'"
            )
        array = np.asarray(tensor["data"])
        if "shape" in tensor:
            try:
                array = array.reshape(tensor["shape"])
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(
                    f"{path}: input {name!r}: data of {array.size} values does not fit shape "
                    f"{tensor['shape']}"
                ) from exc
        result[name] = array
    return result


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _frame(path: Path) -> Any:
    import pandas as pd

    try:
        if _is_parquet(path):
            return pd.read_parquet(path)
        frame = pd.read_csv(path)
    except (ValueError, OSError, ImportError) as exc:
        raise InvalidInputError(f"{path}: cannot read the sample ({exc})") from exc
    if frame.empty:
        raise InvalidInputError(f"{path}: a CSV needs a header row and at least one row")
    return frame


def _parquet_inputs(path: Path, signature: Signature) -> dict[str, Any]:
    require("pyarrow", "batch")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read inputs ({exc})") from exc
    names = signature.input_names
    if set(names) <= set(table.column_names):
        return {name: table.column(name).to_pylist() for name in names}
    if len(names) != 1:
        missing = next(n for n in names if n not in table.column_names)
        raise InvalidInputError(f"{path}: no column {missing!r}; the model takes {names}", missing)
    try:
        columns = [np.asarray(c.to_numpy(), dtype=np.float64) for c in table.columns]
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{path}: every column must hold numbers ({exc})") from exc
    return {names[0]: np.column_stack(columns)}


def _csv_inputs(path: Path, rows: list[list[str]], signature: Signature) -> Any:
    """Columns named like the inputs become those inputs; otherwise the rows are one table."""
    header, body = rows[0], rows[1:]
    if not set(signature.input_names) <= set(header):
        return _table(path, rows)
    columns: dict[str, Any] = {}
    for spec in signature.inputs:
        values = [row[header.index(spec.name)] for row in body]
        if spec.shape == (-1, 1):  # a tabular model's column: rows.py reads each value
            columns[spec.name] = values if spec.dtype == "string" else list(map(_number, values))
            continue
        try:
            columns[spec.name] = np.array(values).astype(
                object if spec.dtype == "string" else spec.dtype
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"{path}: column {spec.name!r} is not {spec.dtype} ({exc})", spec.name
            ) from exc
    return columns


def _number(text: str) -> Any:
    """A CSV field as a number, None when empty, itself when neither (refused by name)."""
    if not text.strip():
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _table(path: Path, rows: list[list[str]]) -> np.ndarray:
    try:
        return np.array(rows[1:], dtype=np.float64)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: every CSV value must be a number ({exc})") from exc


def to_json(value: Any) -> Any:
    """Arrays (and the numpy scalars and bytes inside them) as plain JSON values; float32 as
    the shortest decimal that is the same float32 (0.1, not 0.10000000149011612)."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32:
            return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
        return to_json(value.tolist())
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.float32):
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    if isinstance(value, np.generic):
        return value.item()
    return value
