"""Dynamic batching and the prediction cache, measured against their baselines in one run.

    .venv/bin/python benchmarks/batching.py [--seconds 5] [--rounds 2]

One server worker pinned to CPU 0, wrk on CPU 1, one sample per request:
- the large demo MLP at concurrency 64 and 1 with batching off, on with a fixed window, and in
  latency-target mode, next to in-process onnxruntime at batch 32 (this core's limit); each as
  V2 JSON and as binary tensors (what tritonclient sends by default); batching off once more
  at concurrency 1 with a pause of the window's length before each request, the fair base for
  "off plus the window" (a model runs slower on a core that has just idled);
- the small model, and the large one, with every request a cache hit, next to every request a
  miss (each request carries fresh random inputs, so the lookup misses, the model runs and the
  answer is stored).
Ratios are what to read: these machines drift up to 1.2x (more on a busy host).
"""

from __future__ import annotations

import argparse
import json
import os
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

WINDOW_MS = 2
MODES = {
    "off": [],
    f"window {WINDOW_MS} ms": ["--max-batch-size", "32", "--max-delay-ms", str(WINDOW_MS)],
    "target 50 ms": ["--max-batch-size", "32", "--latency-budget-ms", "50"],
}
# Batching off, each request sent after the core idled as long as the window (wrk's delay()):
# a model runs slower on a core that has just idled (measured here: about 0.5 ms more for the
# large MLP after 2 ms), which a window's wait costs too.
IDLE = f"off, {WINDOW_MS} ms idle"


def build(root: Path) -> None:
    repo = modelport.Repository.init(root)
    modelport.add_model(repo, "mlp-large", mlp_onnx())  # no batching in the manifest
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    modelport.add_model(repo, "digits", clf, sample_input=x[:32].astype(np.float32))


def fixed_lua(work: Path, name: str, body: dict[str, object]) -> Path:
    return body_lua(work, name, json.dumps(body).encode())


def body_lua(work: Path, name: str, body: bytes, json_length: int | None = None) -> Path:
    """A wrk script POSTing ``body``; binary tensors follow a JSON header of ``json_length``."""
    (work / f"{name}.body").write_bytes(body)
    lua = work / f"{name}.lua"
    kind = "application/json" if json_length is None else "application/octet-stream"
    lua.write_text(
        f'local f = assert(io.open("{work / name}.body", "rb"))\n'
        'wrk.body = f:read("*a")\nf:close()\nwrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{kind}"\n'
        + (
            ""
            if json_length is None
            else f'wrk.headers["Inference-Header-Content-Length"] = "{json_length}"\n'
        )
    )
    return lua


def idle_lua(lua: Path) -> Path:
    """``lua`` with a pause of the window's length before each request."""
    idle = lua.with_name(f"{lua.stem}-idle.lua")
    idle.write_text(lua.read_text() + f"function delay()\n  return {WINDOW_MS}\nend\n")
    return idle


def binary_lua(work: Path, x: np.ndarray) -> Path:
    header = json.dumps(
        {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return body_lua(work, "mlp-binary", header + x.tobytes(), len(header))


def random_lua(work: Path, features: int) -> Path:
    """A wrk script POSTing fresh random inputs. Each call seeds it anew: wrk's random numbers
    repeat from run to run otherwise, and a run after the warm-up would replay (and hit) the
    warm-up's inputs."""
    seed = int.from_bytes(os.urandom(4), "little")
    lua = work / f"random-{features}-{seed}.lua"
    lua.write_text(
        f"math.randomseed({seed})\n"
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
    bodies = {
        "json": fixed_lua(
            work,
            "mlp",
            {"inputs": [{"name": "input", "shape": [1, 1024], "datatype": "FP32",
                         "data": x.ravel().tolist()}]},
        ),
        "binary": binary_lua(work, x),
    }  # fmt: skip
    results: dict[tuple[str, str, int], list[Result]] = {}
    for _ in range(args.rounds):
        for mode, extra in MODES.items():
            server = serve(repo, [*extra, "--cache", "off"])
            try:
                url = f"{server.base}/v2/models/mlp-large/infer"  # type: ignore[attr-defined]
                for encoding, lua in bodies.items():
                    run_wrk(url, lua, 64, 1)  # warm up
                    for connections in (64, 1):
                        results.setdefault((encoding, mode, connections), []).append(
                            run_wrk(url, lua, connections, args.seconds)
                        )
                    if mode == "off":
                        results.setdefault((encoding, IDLE, 1), []).append(
                            run_wrk(url, idle_lua(lua), 1, args.seconds)
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

    cache: dict[tuple[str, str], list[Result]] = {}
    digits = fixed_lua(
        work,
        "digits",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                     "data": [float(v) for v in range(64)]}]},
    )  # fmt: skip
    cases = {"digits": (digits, 64), "mlp-large": (bodies["json"], 1024)}
    for _ in range(args.rounds):
        server = serve(repo, ["--cache", "memory"])
        try:
            for model, (hit_lua, features) in cases.items():
                url = f"{server.base}/v2/models/{model}/infer"  # type: ignore[attr-defined]
                run_wrk(url, hit_lua, 64, 1)
                cache.setdefault((model, "hit"), []).append(run_wrk(url, hit_lua, 64, args.seconds))
                run_wrk(url, random_lua(work, features), 64, 1)
                cache.setdefault((model, "miss"), []).append(
                    run_wrk(url, random_lua(work, features), 64, args.seconds)
                )
        finally:
            stop(server)  # type: ignore[arg-type]

    print(f"\nmlp-large (1024-2048-2048-1000), one sample per request, medians of {args.rounds}")
    print(f"{'body':>7} {'mode':>14} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'vs off':>7} {'of limit':>9}")  # fmt: skip
    order = sorted(results.items(), key=lambda kv: (kv[0][0] != "json", -kv[0][2], kv[0][1]))
    for (encoding, mode, connections), runs in order:
        r = median(runs)
        base = median(results[(encoding, "off", connections)])
        print(f"{encoding:>7} {mode:>14} {connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {r.rps / base.rps:>6.2f}x {r.rps / limit:>8.0%}"
              + (f"  ERRORS: {r.errors}" if r.errors else ""))  # fmt: skip
    print(
        f"{'':>7} {'onnxruntime':>14} {'b=32':>5} {limit:>9.0f}  (in process, samples/s: the limit)"
    )
    print(f"\nc=1 p50 with a {WINDOW_MS} ms window, next to batching off plus the window")
    for encoding in bodies:
        window = median(results[(encoding, f"window {WINDOW_MS} ms", 1)]).p50_ms
        off = median(results[(encoding, "off", 1)]).p50_ms
        idle = median(results[(encoding, IDLE, 1)]).p50_ms
        print(f"{encoding:>7}  window {window:.2f} ms  off + window {off + WINDOW_MS:.2f} ms  "
              f"off after idle + window {idle + WINDOW_MS:.2f} ms")  # fmt: skip
    print("\nc=64, V2 JSON, cache hits vs misses")
    for model in cases:
        hit, miss = median(cache[(model, "hit")]), median(cache[(model, "miss")])
        for kind, r in (("hit", hit), ("miss", miss)):
            print(
                f"{model:>10} {kind:>5} {r.rps:>9.0f} req/s  p50 {r.p50_ms:.2f} ms  "
                f"p99 {r.p99_ms:.2f} ms" + (f"  ERRORS: {r.errors}" if r.errors else "")
            )
        print(f"{model:>10} {'hit/miss':>9} {hit.rps / miss.rps:>5.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
