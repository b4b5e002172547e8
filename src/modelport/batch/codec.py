"""Predictions as compact bytes: one blob per row, its layout recorded once per run.

Numeric outputs are stored as their raw little-endian row bytes, output after output (about
the size of the numbers themselves, and no per-row encoding work); a model with any text or
object output stores each row as JSON instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]  # of one row

    @property
    def nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    fields: tuple[Field, ...]
    format: str = "raw"  # or "json"

    @classmethod
    def of(cls, outputs: dict[str, np.ndarray]) -> Layout:
        fields = tuple(
            Field(name, _little(array.dtype).str, tuple(array.shape[1:]))
            for name, array in outputs.items()
        )
        raw = all(np.dtype(f.dtype).kind in "biuf" for f in fields)
        return cls(fields, "raw" if raw else "json")

    def encode(self, outputs: dict[str, np.ndarray]) -> list[bytes]:
        """One blob per row of ``outputs`` (all with the same number of rows)."""
        if self.format == "json":
            names = [f.name for f in self.fields]
            columns = [outputs[n].tolist() for n in names]
            return [
                orjson.dumps(dict(zip(names, row, strict=True)))
                for row in zip(*columns, strict=False)
            ]
        table = pack_rows([np.asarray(outputs[f.name], dtype=f.dtype) for f in self.fields])
        return [row.tobytes() for row in table]

    def decode(self, blob: bytes) -> dict[str, Any]:
        """One row's outputs: numpy values (JSON encoders that know numpy keep float32's own
        precision: 1.5205988e-08, not 1.5205987580202418e-08)."""
        if self.format == "json":
            decoded: dict[str, Any] = orjson.loads(blob)
            return decoded
        values: dict[str, Any] = {}
        offset = 0
        for f in self.fields:
            array = np.frombuffer(blob, f.dtype, math.prod(f.shape), offset).reshape(f.shape)
            values[f.name] = array if f.shape else array[()]
            offset += f.nbytes
        return values

    def to_json(self) -> str:
        fields = [{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.fields]
        return orjson.dumps({"format": self.format, "fields": fields}).decode()

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = orjson.loads(text)
        fields = tuple(Field(f["name"], f["dtype"], tuple(f["shape"])) for f in data["fields"])
        return cls(fields, data["format"])


def pack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays' rows side by side as one byte table: row i holds every array's row i."""
    rows = len(arrays[0])
    parts = [np.ascontiguousarray(a).reshape(rows, -1).view(np.uint8) for a in arrays]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _little(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
