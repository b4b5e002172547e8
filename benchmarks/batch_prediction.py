"""Batch prediction end to end, next to in-process onnxruntime, in one run.

    .venv/bin/python benchmarks/batch_prediction.py [--rows 1000000] [--small-rows 100000]

- ``modelport batch`` (the CLI, as a user runs it) scores a Parquet file of the large demo MLP's
  inputs (1024 float32 features a row, 1000 float32 outputs stored a row) into SQLite and into
  PostgreSQL; rows/s end to end (process start to exit) and the process's peak memory, for the
  small and the large file;
- in-process onnxruntime on the same rows at the batch size the job chose, one call at a time
  on all cores and a call per core on one-thread sessions: the faster is the limit;
- lookups of random keys from the large stores through ``serve --store``: p50 and p99 of one
  HTTP GET at a time (httpx, keep-alive), once PostgreSQL has vacuumed, analyzed and written
  out what it was given (steady state, not the minutes of background work after a bulk load).
Ratios are what to read: these machines drift (more on a busy host).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

import modelport
from modelport.demo import mlp_onnx
from modelport.testing import run_server

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
FEATURES = 1024


def write_inputs(path: Path, rows: int, seed: int = 0) -> None:
    """Random features in row groups of 20k rows, written piece by piece (never all in memory)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.string()), ("input", pa.list_(pa.float32(), FEATURES))])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, rows, 20_000):
            n = min(20_000, rows - start)
            x = rng.standard_normal((n, FEATURES), dtype=np.float32)
            values = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
            ids = pa.array([f"r{i}" for i in range(start, start + n)])
            writer.write_table(pa.table({"id": ids, "input": values}, schema=schema))


def score(repo: Path, source: Path, store: str) -> tuple[float, float, int]:
    """Run the CLI; (seconds, peak RSS in MiB, batch size it chose)."""
    command = [
        sys.executable, "-m", "modelport", "batch", "mlp-large", "--repo", str(repo),
        "--input", str(source), "--key", "id", "--store", store, "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out = process.stdout.read() if process.stdout else ""
    err = process.stderr.read() if process.stderr else ""
    if status != 0:
        raise SystemExit(f"modelport batch failed:\n{out}\n{err}")
    batch = re.search(r"batch size (\d+)", err)
    return seconds, usage.ru_maxrss / 1024, int(batch.group(1)) if batch else 0


def in_process(model_path: Path, source: Path, batch: int, rows: int) -> dict[str, float]:
    """Rows/s of bare onnxruntime over ``rows`` rows already in memory, two ways: one call at
    a time on a session with a thread per core, and a call per core on one-thread sessions."""
    import onnxruntime as ort

    table = pq.ParquetFile(source).read_row_groups([0]).column("input").combine_chunks()
    x = table.flatten().to_numpy().reshape(-1, FEATURES)[:rows]
    cores = os.cpu_count() or 1
    rates = {}
    for label, threads, callers in (("1 call, threads=cores", 0, 1),
                                    ("calls=cores, threads=1", 1, cores)):  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), options, ["CPUExecutionProvider"])
        _run_slice(session, session.get_inputs()[0].name, x, batch, 0)
        started = time.perf_counter()
        run = functools.partial(_run_slice, session, session.get_inputs()[0].name, x, batch)
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(run, range(0, len(x), batch)))
        rates[label] = len(x) / (time.perf_counter() - started)
    return rates


def _run_slice(session: Any, name: str, x: np.ndarray, batch: int, start: int) -> None:
    session.run(None, {name: x[start : start + batch]})


def lookups(repo: Path, store: str, rows: int, count: int = 2000) -> tuple[float, float]:
    keys = np.random.default_rng(1).integers(0, rows, count)
    times = []
    with run_server(repo, "--store", store, "--no-access-log") as server, httpx.Client() as client:
        for key in keys[:100]:  # warm up
            client.get(f"{server.url}/v2/models/mlp-large/predictions/r{key}")
        for key in keys:
            started = time.perf_counter()
            response = client.get(f"{server.url}/v2/models/mlp-large/predictions/r{key}")
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def settle(stores: list[str]) -> None:
    """Let PostgreSQL finish digesting the bulk load before lookups are timed: vacuum and
    analyze the new tables and write their pages out, as autovacuum and the checkpointer would
    do in the minutes after (on two cores, lookups timed meanwhile measure that work)."""
    for store in stores:
        engine = sa.create_engine(store.replace("postgresql", "postgresql+psycopg", 1),
                                  isolation_level="AUTOCOMMIT")  # fmt: skip
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
            conn.execute(sa.text("CHECKPOINT"))
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-batch-"))
    database = f"modelport_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{POSTGRES.replace('postgresql', 'postgresql+psycopg')}/postgres",
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    try:
        repo = modelport.Repository.init(work / "models")
        modelport.add_model(repo, "mlp-large", mlp_onnx())
        model_path = next((work / "models" / "mlp-large" / "1").glob("*.onnx"))
        files = {}
        for rows in (args.small_rows, args.rows):
            files[rows] = work / f"in-{rows}.parquet"
            print(f"writing {rows:,} rows of inputs ...", file=sys.stderr)
            write_inputs(files[rows], rows)
        results = []
        batch = 0
        for store_kind in ("sqlite", "postgresql"):
            for rows in (args.small_rows, args.rows):
                if store_kind == "sqlite":
                    store = str(work / f"store-{rows}.db")
                else:
                    name = f"{database}_{rows}"
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                    store = f"{POSTGRES}/{name}"
                print(f"scoring {rows:,} rows into {store_kind} ...", file=sys.stderr)
                seconds, peak, batch = score(work / "models", files[rows], store)
                results.append((store_kind, rows, store, seconds, peak))
        rates = in_process(model_path, files[args.small_rows], batch, 20_000)
        limit = max(rates.values())
        settle([store for kind, _, store, _, _ in results if kind == "postgresql"])

        print(f"\nmlp-large (1024 -> 1000 float32), {os.cpu_count()} cores, batch size {batch}")
        print(f"{'store':<11} {'rows':>10} {'seconds':>8} {'rows/s':>8} {'of limit':>9} "
              f"{'peak MiB':>9} {'lookup p50 ms':>14} {'p99 ms':>7}")  # fmt: skip
        for label, rate in rates.items():
            print(f"{'in-process':<11} {'':>10} {'':>8} {rate:>8,.0f} {rate / limit:>9.0%}  "
                  f"onnxruntime alone, {label}")  # fmt: skip
        peaks: dict[str, dict[int, float]] = {}
        for store_kind, rows, store, seconds, peak in results:
            rate = rows / seconds
            peaks.setdefault(store_kind, {})[rows] = peak
            p50 = p99 = ""
            if rows == args.rows:
                low, high = lookups(work / "models", store, rows)
                p50, p99 = f"{low:.2f}", f"{high:.2f}"
            print(f"{store_kind:<11} {rows:>10,} {seconds:>8.1f} {rate:>8,.0f} "
                  f"{rate / limit:>9.0%} {peak:>9.0f} {p50:>14} {p99:>7}")  # fmt: skip
        for store_kind, by_rows in peaks.items():
            ratio = by_rows[args.rows] / by_rows[args.small_rows]
            print(f"peak memory {store_kind}: {args.rows:,} rows / {args.small_rows:,} rows = "
                  f"{ratio:.2f}x")  # fmt: skip
    finally:
        with admin.connect() as conn:
            for rows in (args.small_rows, args.rows):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}_{rows}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
