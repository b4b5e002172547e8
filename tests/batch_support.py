"""Shared pieces of the batch tests: stores on SQLite and PostgreSQL, tables to score."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import modelport
from modelport.demo import mlp_onnx

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
SLOW_MODEL = '''
import time

class Model:
    """Doubles its input, slowly, so that a test can stop a run halfway."""

    signature = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "double", "dtype": "float32", "shape": [-1, 4]},
            {"name": "negative", "dtype": "float32", "shape": [-1, 4]},
        ],
    }

    def load(self):
        pass

    def predict(self, batch):
        time.sleep(0.02)
        x = batch["input"]
        if (x == 13).any():
            raise ValueError("13 is unlucky")
        return {"double": x * 2, "negative": -x}
'''


def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"modelport_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{POSTGRES.replace('postgresql', 'postgresql+psycopg')}/postgres",
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "predictions.db")
    else:
        yield from postgres_database()


@pytest.fixture
def repo(tmp_path: Path) -> modelport.Repository:
    """tiny:1 (4 -> 3 MLP), tiny:2 (other weights) and slow:1 (a code model, x -> 2x, -x)."""
    repository = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repository, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repository, "tiny", mlp_onnx((4, 8, 3), seed=4))
    code = tmp_path / "slow_code"
    code.mkdir()
    (code / "model.py").write_text(SLOW_MODEL)
    modelport.add_model(repository, "slow", code, trust_code=True)
    return repository


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def write_parquet(path: Path, x: np.ndarray, row_group: int = 1000) -> Path:
    table = pa.table({"id": [f"row{i}" for i in range(len(x))], "input": list(x)})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def cli(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
