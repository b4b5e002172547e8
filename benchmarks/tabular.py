"""A churn-like scikit-learn pipeline (ColumnTransformer + OneHotEncoder over text,
categorical, integer and float columns, with missing values) one row at a time: in
scikit-learn, through ``modelport.load``, and served.

    .venv/bin/python benchmarks/tabular.py
    .venv/bin/python benchmarks/tabular.py --seconds 10 --rows 2000

In process, each call predicts one row the way a user would hold it: a one-row DataFrame for
scikit-learn's ``predict_proba``, a ``{column: value}`` dict for ``modelport.load``. Served,
``modelport serve --max-batch-size 64`` runs pinned to CPU 0 and ``wrk`` on CPU 1 POSTs V1
``{"instances": [{column: value}]}`` bodies, one row each, cycling through 200 rows, at 1 and
64 connections. Before any load, the served answer is checked against scikit-learn. The
target (issue 15): served rows/s at c=64 at least 3x scikit-learn's own single-row predict.
The pipeline and its data come from tests/tabular_models.py.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import modelport
from modelport.testing import run_server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from tabular_models import churn, churn_pipeline  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def in_process(call: Callable[[int], Any], rows: int, seconds: float) -> tuple[float, float]:
    """Rows per second and the median latency (ms) of ``call(i)``, one row per call."""
    for i in range(20):  # warm up
        call(i % rows)
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call(len(times) % rows)
        times.append(time.perf_counter() - t)
    return len(times) / (time.perf_counter() - started), statistics.median(times) * 1e3


def wrk(url: str, script: Path, connections: int, seconds: int) -> tuple[float, float, str]:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
            "--latency", "--timeout", "10s", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    if not (rps and p50):
        raise RuntimeError(f"wrk said:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return (
        float(rps.group(1)),
        float(p50.group(1)) * UNITS[p50.group(2)],
        f"{errors.group(1)} non-2xx" if errors else "",
    )


def wrk_script(work: Path, records: list[dict[str, Any]]) -> Path:
    """A wrk script that POSTs one row per request, cycling through ``records``."""
    bodies = [json.dumps({"instances": [r]}) for r in records]
    (work / "bodies.json").write_text("\n".join(bodies))
    script = work / "rows.lua"
    script.write_text(
        f'local bodies = {{}}\nfor line in io.lines("{work / "bodies.json"}") do '
        "bodies[#bodies + 1] = line end\nlocal i = 0\n"
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
    )
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--rows", type=int, default=200, help="distinct rows cycled through")
    args = parser.parse_args()

    frame, left = churn(2000)
    pipeline = churn_pipeline(frame, left)
    unseen, _ = churn(args.rows, seed=1)
    records = unseen.astype(object).where(unseen.notna(), None).to_dict("records")
    one_row_frames = [unseen.iloc[[i]] for i in range(len(unseen))]
    results: list[tuple[str, float, float, str]] = []

    rate, p50 = in_process(lambda i: pipeline.predict_proba(one_row_frames[i]), args.rows,
                           args.seconds)  # fmt: skip
    results.append(("scikit-learn predict_proba, one-row DataFrame", rate, p50, ""))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        repo = modelport.Repository.init(work / "models")
        modelport.add_model(repo, "churn", pipeline, sample_input=frame.head(200))
        with repo.load("churn") as model:
            rate, p50 = in_process(lambda i: model.predict([records[i]]), args.rows, args.seconds)
        results.append(("modelport.load predict, one {column: value} row", rate, p50, ""))
        script = wrk_script(work, records)
        with run_server(work / "models", "--no-access-log", "--max-batch-size", "64") as server:
            subprocess.run(["taskset", "-p", "-c", "0", str(server.process.pid)],
                           check=True, capture_output=True)  # fmt: skip
            url = f"{server.url}/v1/models/churn:predict"
            answer = httpx.post(url, json={"instances": records[:50]}).json()["predictions"]
            served = np.array([p["probabilities"] for p in answer])
            np.testing.assert_allclose(served, pipeline.predict_proba(unseen.head(50)), atol=1e-4)
            for connections in (1, 64):
                rate, p50, errors = wrk(url, script, connections, args.seconds)
                results.append((f"served, V1 one row a request, c={connections}", rate, p50,
                                errors))  # fmt: skip

    base = results[0][1]
    print(f"{'':50} {'rows/s':>9} {'p50 ms':>8} {'x sklearn':>9}")
    for label, rate, p50, errors in results:
        print(f"{label:50} {rate:9.0f} {p50:8.2f} {rate / base:9.1f}  {errors}")
    print(f"\n{len(unseen)} distinct rows; {args.seconds} s each; server pinned to CPU 0, wrk to "
          "CPU 1 (in-process lines are unpinned).")  # fmt: skip


if __name__ == "__main__":
    main()
