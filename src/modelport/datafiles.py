"""Reading model inputs from files (JSON, .npy, .npz, CSV) and writing outputs as JSON.

Formats:
- ``.json``: ``{"input_name": [[...]], ...}``, an Open Inference Protocol request
  (``{"inputs": [{"name", "shape", "datatype", "data"}]}``), ``{"instances": [...]}`` (rows, or
  objects of input name -> value), or a bare list for a one-input model;
- ``.npy``: one array; ``.npz``: one array per input name;
- ``.csv`` with a header: columns named like the model's inputs become those inputs; otherwise
  every column is a feature of the single input, one row per sample.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidInputError
from modelport.signature import Signature

FORMATS = (".json", ".npy", ".npz", ".csv")


def read_inputs(path: Path, signature: Signature) -> dict[str, Any]:
    """Inputs for ``signature`` from a file; InvalidInputError says what is wrong with it."""
    data = _read(path)
    if _is_csv(path):
        data = _csv_inputs(path, data, signature)
    if isinstance(data, Mapping):
        return dict(data)
    if len(signature.inputs) != 1:
        raise InvalidInputError(
            f"{path}: the model takes {len(signature.inputs)} inputs "
            f"({', '.join(signature.input_names)}): name each one (JSON object, .npz or CSV)"
        )
    return {signature.inputs[0].name: data}


def read_sample(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A sample input for import, before any signature exists: one array or named arrays."""
    data = _read(path)
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
        if not all(isinstance(i, dict) for i in instances):
            return instances
        names = list(instances[0])
        if any(sorted(i) != sorted(names) for i in instances):
            raise InvalidInputError(f"{path}: every instance needs the same keys, {names}")
        return {k: [i[k] for i in instances] for k in names}
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


def _csv_inputs(path: Path, rows: list[list[str]], signature: Signature) -> Any:
    """Columns named like the inputs become those inputs; otherwise the rows are one table."""
    header, body = rows[0], rows[1:]
    if not set(signature.input_names) <= set(header):
        return _table(path, rows)
    columns = {}
    for spec in signature.inputs:
        values = [row[header.index(spec.name)] for row in body]
        try:
            columns[spec.name] = np.array(values).astype(
                object if spec.dtype == "string" else spec.dtype
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"{path}: column {spec.name!r} is not {spec.dtype} ({exc})", spec.name
            ) from exc
    return columns


def _table(path: Path, rows: list[list[str]]) -> np.ndarray:
    try:
        return np.array(rows[1:], dtype=np.float64)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: every CSV value must be a number ({exc})") from exc


def to_json(value: Any) -> Any:
    """Arrays (and the numpy scalars and bytes inside them) as plain JSON values."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
