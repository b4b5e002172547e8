"""From table columns to model inputs: the mapping, and per-row checks that turn bad rows into
rejects instead of failed runs."""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from modelport.batch.codec import pack_rows
from modelport.errors import BatchError
from modelport.rows import MISSING_TEXT
from modelport.signature import Signature, TensorSpec


@dataclass(frozen=True)
class Plan:
    """Which columns feed which input: one list column, or one column per feature."""

    columns: dict[str, tuple[str, ...]]
    key: str | None

    def describe(self) -> str:
        parts = [f"{name} <- {_short(cols)}" for name, cols in self.columns.items()]
        return "; ".join(parts)


@dataclass
class Prepared:
    """A chunk ready for the model: inputs for the rows that passed, and why the others
    did not (row offset within the chunk -> reason). ``keys`` has every row's key."""

    keys: list[str]
    rows: np.ndarray  # offsets of the good rows within the chunk
    inputs: dict[str, np.ndarray]
    rejects: dict[int, str]


def parse_mapping(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["x=a,b,c", "y=img_*"]`` -> {"x": ("a", "b", "c"), "y": ("img_*",)}."""
    mapping: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, columns = item.partition("=")
        if not sep or not name.strip() or not columns.strip():
            raise BatchError(f"--map {item!r}: expected INPUT=COLUMN[,COLUMN...] or INPUT=PATTERN*")
        mapping[name.strip()] = tuple(c.strip() for c in columns.split(",") if c.strip())
    return mapping


def plan_columns(
    signature: Signature, columns: Sequence[str], mapping: Mapping[str, Sequence[str]],
    key: str | None,
) -> Plan:  # fmt: skip
    """Decide once, from the source's column names, which columns feed each input."""
    unknown = set(mapping) - set(signature.input_names)
    if unknown:
        raise BatchError(
            f"--map names {', '.join(sorted(unknown))}, which the model does not take; its "
            f"inputs are {', '.join(signature.input_names)}"
        )
    if key is not None and key not in columns:
        raise BatchError(f"--key {key!r} is not a column; the source has {_short(columns)}")
    features = [c for c in columns if c != key]
    plan: dict[str, tuple[str, ...]] = {}
    for spec in signature.inputs:
        if spec.name in mapping:
            chosen = _expand(mapping[spec.name], features)
        elif spec.name in features:
            chosen = (spec.name,)
        elif len(signature.inputs) == 1 and len(features) == _width(spec):
            chosen = tuple(features)  # every column but the key, in order
        else:
            raise BatchError(
                f"cannot tell which columns feed input {spec.name!r} ({spec.dtype}, shape "
                f"{list(spec.shape)}): name a column {spec.name!r}, or pass --map "
                f"{spec.name}=COL1,COL2,... or --map '{spec.name}=PREFIX*'; the source has "
                f"{len(features)} columns: {_short(features)}"
            )
        width = _width(spec)
        if len(chosen) > 1 and width != len(chosen):
            raise BatchError(
                f"input {spec.name!r} takes {width if width > 0 else 'a dynamic number of'} "
                f"features per row (shape {list(spec.shape)}) but {len(chosen)} columns map "
                f"to it: {_short(chosen)}"
            )
        plan[spec.name] = chosen
    return Plan(plan, key)


def prepare(
    batch: pa.RecordBatch, plan: Plan, signature: Signature, first_row: int | None,
    allow_non_finite: bool = False,
) -> Prepared:  # fmt: skip
    """Inputs for the good rows of ``batch``; every other row gets a reason."""
    n = batch.num_rows
    rejects: dict[int, str] = {}
    keys = _keys(batch, plan.key, first_row, rejects)
    inputs: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        columns = plan.columns[spec.name]
        if len(columns) == 1 and _is_list(batch.column(columns[0]).type):
            values = _list_column(batch.column(columns[0]), columns[0], spec, rejects)
        elif spec.dtype == "string":
            values = np.array(batch.column(columns[0]).to_pylist(), dtype=object)
            for i in np.flatnonzero(pc.is_null(batch.column(columns[0])).to_numpy(False)):
                if _tabular(spec):  # a tabular model's column: missing text is data
                    values[i] = MISSING_TEXT
                else:
                    rejects.setdefault(int(i), f"missing feature {columns[0]!r}")
        else:
            if len(columns) == 1 and _width(spec) > 1:
                raise BatchError(
                    f"column {columns[0]!r} holds one value per row but input {spec.name!r} "
                    f"takes {_width(spec)} (shape {list(spec.shape)}): store a list per row, "
                    "or map one column per feature with --map"
                )
            missing = _tabular(spec) and np.dtype(spec.dtype).kind == "f"  # NaN, as pandas has it
            values = np.column_stack(
                [_number_column(batch.column(c), c, rejects, missing) for c in columns]
            ) if len(columns) > 1 or len(spec.shape) > 1 else _number_column(
                batch.column(columns[0]), columns[0], rejects, missing
            )  # fmt: skip
        if spec.dtype != "string":
            values = _cast(values, spec, columns, rejects, allow_non_finite, _tabular(spec))
        inputs[spec.name] = values.reshape((n, *_row_shape(spec, values)))
    good = np.array([i for i in range(n) if i not in rejects], dtype=np.int64)
    if len(good) < n:
        inputs = {name: values[good] for name, values in inputs.items()}
    return Prepared(keys, good, inputs, rejects)


def input_hashes(inputs: Mapping[str, np.ndarray]) -> list[str]:
    """A digest of each row's features: a rerun skips rows whose features did not change."""
    arrays = list(inputs.values())
    if any(a.dtype == object for a in arrays):
        columns = [a.tolist() for a in arrays]
        return [_digest(orjson.dumps(row)) for row in zip(*columns, strict=True)]
    table = pack_rows(arrays)
    return [_digest(row.tobytes()) for row in table]


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _keys(
    batch: pa.RecordBatch, key: str | None, first_row: int | None, rejects: dict[int, str]
) -> list[str]:
    if key is None:
        if first_row is None:
            raise BatchError("rows read in parallel need a key column (--key)")
        return [str(first_row + i) for i in range(batch.num_rows)]
    column = batch.column(key)
    values = column.to_pylist()
    seen: dict[str, int] = {}
    keys: list[str] = []
    for i, value in enumerate(values):
        text = "" if value is None else str(value)
        if value is None or not text:
            rejects.setdefault(i, f"missing key {key!r}")
        elif text in seen:
            rejects.setdefault(i, f"duplicate key {text!r} in the same chunk")
        else:
            seen[text] = i
        keys.append(text)
    return keys


def _tabular(spec: TensorSpec) -> bool:
    """One input per column, as a pipeline fitted on a DataFrame takes them: a missing value
    goes to the model, whose imputers handle it."""
    return spec.shape == (-1, 1)


def _number_column(
    column: pa.Array, name: str, rejects: dict[int, str], missing_ok: bool = False
) -> np.ndarray:
    """A column as float64 (or int64), nulls (NaN where ``missing_ok``) and non-numbers
    recorded as rejects."""
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return np.asarray(column.to_numpy(zero_copy_only=False))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _parse_numbers(column, name, rejects)
    elif not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
              or pa.types.is_boolean(column.type)):  # fmt: skip
        raise BatchError(f"column {name!r} holds {column.type}, not numbers")
    if column.null_count and missing_ok:
        column = pc.fill_null(pc.cast(column, pa.float64()), math.nan)
    elif column.null_count:
        for i in np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False)):
            rejects.setdefault(int(i), f"missing feature {name!r}")
        column = pc.fill_null(column, 0)
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _parse_numbers(column: pa.Array, name: str, rejects: dict[int, str]) -> np.ndarray:
    values = np.zeros(len(column), dtype=np.float64)
    for i, text in enumerate(column.to_pylist()):
        if text is None or not text.strip():
            rejects.setdefault(i, f"missing feature {name!r}")
            continue
        try:
            values[i] = float(text)
        except ValueError:
            rejects.setdefault(i, f"feature {name!r}: {text[:40]!r} is not a number")
    return values


_NUMBERS = {pa.float16(), pa.float32(), pa.float64(), pa.int8(), pa.int16(), pa.int32(), pa.int64()}


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _list_column(
    column: pa.Array, name: str, spec: TensorSpec, rejects: dict[int, str]
) -> np.ndarray:
    width = _width(spec)
    if (
        pa.types.is_fixed_size_list(column.type) and column.type.list_size == width
        and column.null_count == 0 and column.values.null_count == 0
        and column.type.value_type in _NUMBERS
    ):  # fmt: skip
        # The common case for wide features: one buffer of numbers, no copy.
        flat = column.values.slice(column.offset * width, len(column) * width)
        return np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(len(column), width)
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
    if width <= 0:  # dynamic: every row must match the first good one
        good = lengths[lengths >= 0]
        width = int(good[0]) if len(good) else 0
    keep = lengths == width
    for i in np.flatnonzero(~keep):
        rejects.setdefault(
            int(i),
            f"missing feature {name!r}" if lengths[i] < 0
            else f"feature {name!r} has {lengths[i]} values; input {spec.name!r} takes {width}",
        )  # fmt: skip
    flat = pc.list_flatten(column if keep.all() else column.filter(pa.array(keep)))
    if _is_list(flat.type):
        raise BatchError(f"column {name!r} holds nested lists; store each row as a flat list")
    rows = np.flatnonzero(keep)
    if flat.null_count:
        at = np.repeat(rows, width)[pc.is_null(flat).to_numpy(zero_copy_only=False)]
        for i in np.unique(at):
            rejects.setdefault(int(i), f"feature {name!r} has a missing value")
        flat = pc.fill_null(flat, 0)
    values = np.zeros((len(column), width), dtype=np.float64)
    if pa.types.is_string(flat.type):
        bad: dict[int, str] = {}
        parsed = _parse_numbers(flat, name, bad)
        for j, reason in bad.items():
            rejects.setdefault(int(rows[j // width]), reason)
    else:
        parsed = flat.to_numpy(zero_copy_only=False)
    values[rows] = parsed.reshape(len(rows), width)
    return values


def _cast(
    values: np.ndarray, spec: TensorSpec, columns: Sequence[str], rejects: dict[int, str],
    allow_non_finite: bool, missing_ok: bool = False,
) -> np.ndarray:  # fmt: skip
    target = np.dtype(spec.dtype)
    flat = values.reshape(len(values), -1)
    if values.dtype.kind == "f":
        finite = np.isfinite(flat) | (np.isnan(flat) if missing_ok else False)
        if target.kind == "f" and not allow_non_finite:
            for i, j in zip(*np.nonzero(~finite), strict=True):
                rejects.setdefault(int(i), f"feature {_column(columns, j)!r} is {flat[i, j]}")
        elif target.kind in "iub":
            whole = finite & (flat == np.round(flat))
            for i, j in zip(*np.nonzero(~whole), strict=True):
                rejects.setdefault(
                    int(i), f"feature {_column(columns, j)!r}: {flat[i, j]} is not a whole number"
                )
            flat = np.where(whole, flat, 0)
    if target.kind in "iu":
        info = np.iinfo(target)
        out_of_range = (flat < info.min) | (flat > info.max)
        for i, j in zip(*np.nonzero(out_of_range), strict=True):
            rejects.setdefault(
                int(i), f"feature {_column(columns, j)!r}: {flat[i, j]} does not fit {spec.dtype}"
            )
        flat = np.where(out_of_range, 0, flat)
    return flat.astype(target, copy=False).reshape(values.shape)


def _row_shape(spec: TensorSpec, values: np.ndarray) -> tuple[int, ...]:
    shape = spec.shape[1:]
    if all(d > 0 for d in shape):
        return shape
    return tuple(values.shape[1:])


def _width(spec: TensorSpec) -> int:
    shape = spec.shape[1:]
    return math.prod(shape) if all(d > 0 for d in shape) else -1


def _column(columns: Sequence[str], j: int) -> str:
    return columns[j] if len(columns) > 1 else columns[0]


def _expand(patterns: Sequence[str], columns: Sequence[str]) -> tuple[str, ...]:
    chosen: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            # Natural order: pixel_2 before pixel_10, whatever order the file has them in.
            matched = sorted((c for c in columns if fnmatch.fnmatchcase(c, pattern)), key=_natural)
            if not matched:
                raise BatchError(
                    f"--map pattern {pattern!r} matches no column of {_short(columns)}"
                )
            chosen.extend(matched)
        elif pattern in columns:
            chosen.append(pattern)
        else:
            raise BatchError(
                f"--map names column {pattern!r}, which the source lacks; it has {_short(columns)}"
            )
    return tuple(chosen)


def _natural(name: str) -> list[tuple[int, str]]:
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]


def _short(columns: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")
