"""Reading model inputs from files (JSON, .npy, .npz, CSV) and writing outputs as JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidInputError
from modelport.signature import Signature

FORMATS = (".json", ".npy", ".npz", ".csv")


def read_inputs(path: Path, signature: Signature) -> dict[str, Any]:
    """Inputs for ``signature`` from a file.

    - ``.json``: ``{"input_name": [[...]], ...}``, an Open Inference Protocol request
      (``{"inputs": [{"name", "shape", "datatype", "data"}]}``), ``{"instances": [...]}``, or a
      bare list for a one-input model;
    - ``.npy``: one array for a one-input model; ``.npz``: one array per input name;
    - ``.csv`` with a header: columns named like inputs become those inputs; otherwise every
      column is a feature of the single input, one row per sample.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _single(signature, np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".json":
            return _from_json(json.loads(path.read_text()), signature)
        if suffix == ".csv":
            return _from_csv(path, signature)
    except (ValueError, json.JSONDecodeError, OSError) as exc:
        raise InvalidInputError(f"{path}: cannot read inputs ({exc})") from exc
    raise InvalidInputError(
        f"{path}: unsupported input file type {suffix or '(none)'}; use {', '.join(FORMATS)}"
    )


def _single(signature: Signature, value: Any) -> dict[str, Any]:
    if len(signature.inputs) != 1:
        raise InvalidInputError(
            f"the model takes {len(signature.inputs)} inputs "
            f"({', '.join(signature.input_names)}): name each one (JSON object, .npz or CSV)"
        )
    return {signature.inputs[0].name: value}


def _from_json(data: Any, signature: Signature) -> dict[str, Any]:
    if isinstance(data, list):
        return _single(signature, data)
    if not isinstance(data, dict):
        raise InvalidInputError("JSON input must be an object or a list")
    if "instances" in data:
        instances = data["instances"]
        if instances and all(isinstance(i, dict) for i in instances):
            return {k: [i[k] for i in instances] for k in instances[0]}
        return _single(signature, instances)
    if isinstance(data.get("inputs"), list):
        tensors = {}
        for tensor in data["inputs"]:
            if not isinstance(tensor, dict) or "name" not in tensor:
                raise InvalidInputError("each entry of 'inputs' needs a 'name'")
            array = np.asarray(tensor.get("data"))
            tensors[tensor["name"]] = array.reshape(tensor["shape"]) if "shape" in tensor else array
        return tensors
    return data


def _from_csv(path: Path, signature: Signature) -> dict[str, Any]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise InvalidInputError(f"{path}: a CSV input needs a header row and at least one row")
    header, body = rows[0], rows[1:]
    names = signature.input_names
    if set(names) <= set(header):
        return {
            spec.name: np.array([row[header.index(spec.name)] for row in body]).astype(
                object if spec.dtype == "string" else spec.dtype
            )
            for spec in signature.inputs
        }
    return _single(signature, np.array(body, dtype=np.float64))


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


def read_sample(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A sample input for import, before any signature exists: one array or named arrays."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                return {k: np.asarray(v) for k, v in data.items()}
            return np.asarray(data)
        if suffix == ".csv":
            return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (ValueError, json.JSONDecodeError, OSError) as exc:
        raise InvalidInputError(f"{path}: cannot read the sample ({exc})") from exc
    raise InvalidInputError(
        f"{path}: unsupported sample file type {suffix or '(none)'}; use {', '.join(FORMATS)}"
    )
