"""Dynamic batching and the prediction cache, measured against their baselines in one run.

    .venv/bin/python benchmarks/batching.py [--seconds 5] [--rounds 2]

One server worker pinned to CPU 0, wrk on CPU 1, one sample per request (V2 JSON):
- the large demo MLP at concurrency 64 and 1 with batching off, on with a fixed window, and in
  latency-target mode, next to in-process onnxruntime at batch 32 (this core's limit);
- the small model with every request a cache hit, next to every request a miss (each request
  carries fresh random inputs, so the lookup misses, the model runs and the answer is stored).
Ratios are what to read: these machines drift up to 1.2x (more on a busy host).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import modelport
from modelport.demo import mlp_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, Result, median, run_wrk, session, start, stop

MODES = {
    "off": [],
    "window 2 ms": ["--max-batch-size", "32", "--max-delay-ms", "2"],
    "target 50 ms": ["--max-batch-size", "32", "--latency-budget-ms", "50"],
}


def build(root: Path) -> None:
    repo = modelport.Repository.init(root)
    modelport.add_model(repo, "mlp-large", mlp_onnx())  # no batching in the manifest
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    modelport.add_model(repo, "digits", clf, sample_input=x[:32].astype(np.float32))


def fixed_lua(work: Path, name: str, body: dict[str, object]) -> Path:
    (work / f"{name}.json").write_text(json.dumps(body))
    lua = work / f"{name}.lua"
    lua.write_text(
        f'local f = assert(io.open("{work / name}.json", "rb"))\n'
        'wrk.body = f:read("*a")\nf:close()\nwrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return lua


def random_lua(work: Path, features: int) -> Path:
    lua = work / "random.lua"
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  local v = {}\n"
        f"  for i = 1, {features} do v[i] = string.format('%.6f', math.random() * 16) end\n"
        '  local body = \'{"inputs":[{"name":"input","shape":[1,'
        f"{features}"
        '],"datatype":"FP32","data":[\' .. table.concat(v, ",") .. "]}]}"\n'
        "  return wrk.format(nil, nil, nil, body)\nend\n"
    )
    return lua


def serve(repo: Path, extra: list[str]) -> object:
    argv = [str(BIN / "modelport"), "serve", str(repo), "--port", "{port}", "--threads", "1",
            "--no-access-log", *extra]  # fmt: skip
    return start("modelport", argv, "/v2/health/ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    repo = work / "models"
    print("building models ...", file=sys.stderr)
    build(repo)
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    mlp = fixed_lua(
        work,
        "mlp",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1024],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        },
    )
    results: dict[tuple[str, int], list[Result]] = {}
    for _ in range(args.rounds):
        for mode, extra in MODES.items():
            server = serve(repo, [*extra, "--cache", "off"])
            try:
                url = f"{server.base}/v2/models/mlp-large/infer"  # type: ignore[attr-defined]
                run_wrk(url, mlp, 64, 1)  # warm up
                for connections in (64, 1):
                    results.setdefault((mode, connections), []).append(
                        run_wrk(url, mlp, connections, args.seconds)
                    )
            finally:
                stop(server)  # type: ignore[arg-type]
    sess = session(repo / "mlp-large" / "1" / "model.onnx")
    batch = np.repeat(x, 32, axis=0)
    sess.run(None, {"input": batch})
    calls, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < args.seconds:
        sess.run(None, {"input": batch})
        calls += 1
    limit = calls * 32 / (time.perf_counter() - begin)

    cache: dict[str, list[Result]] = {"hit": [], "miss": []}
    digits_x = [float(v) for v in range(64)]
    hit_lua = fixed_lua(
        work,
        "digits",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": digits_x}]},
    )
    for _ in range(args.rounds):
        server = serve(repo, ["--cache", "memory"])
        try:
            url = f"{server.base}/v2/models/digits/infer"  # type: ignore[attr-defined]
            for kind, lua in (("hit", hit_lua), ("miss", random_lua(work, 64))):
                run_wrk(url, lua, 64, 1)
                cache[kind].append(run_wrk(url, lua, 64, args.seconds))
        finally:
            stop(server)  # type: ignore[arg-type]

    print(f"\nmlp-large (1024-2048-2048-1000), one sample per request, medians of {args.rounds}")
    print(f"{'mode':>14} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs off':>7} "
          f"{'of limit':>9}")  # fmt: skip
    for (mode, connections), runs in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        r = median(runs)
        base = median(results[("off", connections)])
        print(f"{mode:>14} {connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.rps / base.rps:>6.2f}x {r.rps / limit:>8.0%}"
              + (f"  ERRORS: {r.errors}" if r.errors else ""))  # fmt: skip
    print(f"{'onnxruntime':>14} {'b=32':>5} {limit:>9.0f}  (in process, samples/s: the limit)")
    hit, miss = median(cache["hit"]), median(cache["miss"])
    print("\ndigits (small model), c=64, cache hits vs misses")
    for kind, r in (("hit", hit), ("miss", miss)):
        print(f"{kind:>14} {r.rps:>9.0f} req/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
              + (f"  ERRORS: {r.errors}" if r.errors else ""))  # fmt: skip
    print(f"{'hit/miss':>14} {hit.rps / miss.rps:>9.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
