"""HTTP serving throughput: ``modelport serve`` next to a hand-written FastAPI endpoint.

    .venv/bin/python benchmarks/serving.py                      # builds the demo repo in a temp dir
    .venv/bin/python benchmarks/serving.py --repo demo-models --seconds 10 --rounds 3

Both servers run one worker with uvloop + httptools and no access log, pinned to CPU 0; ``wrk``
runs on CPU 1 and POSTs one sample per request as V2 JSON (the same bytes to both). Before any
load, each server's answer is checked against in-process onnxruntime. Rounds alternate between
the servers (ABBA order) and the table shows medians over rounds; the ratio is the median of
the per-round modelport/FastAPI ratios, which cancels most of the machine's drift. The in-process
line is bare onnxruntime, one sample per call on one core: the ceiling for an unbatched server.
``cpu us`` is the server's own CPU time (user + system, its whole process group) per answered
request: it moves less than req/s when other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SERVER_CPU, LOAD_CPU = "0", "1"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Server:
    label: str
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str  # empty when every response was 2xx and there were no socket errors
    cpu_us: float = 0.0  # the server's CPU time per request


def start(
    label: str, argv: list[str], ready_path: str, env: dict[str, str] | None = None
) -> Server:
    """Start a server in its own process group on the server CPU; ``{port}`` in argv is filled."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.gettempdir()) / f"serving-{label}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *(a.format(port=port) for a in argv)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = Server(label, proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{label} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(server.base + ready_path, timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    stop(server)
    raise RuntimeError(f"{label} was not ready in 60 s; see {log}")


def stop(server: Server) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after 10 s."""
    if server.proc.poll() is not None:
        return
    pgid = os.getpgid(server.proc.pid)
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
            server.proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def post(url: str, body: bytes) -> dict[str, np.ndarray]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        answer = json.load(r)
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def check(label: str, url: str, body: bytes, expected: dict[str, np.ndarray]) -> None:
    got = post(url, body)
    for name, want in expected.items():
        if name not in got or not np.allclose(got[name], want, rtol=1e-4, atol=1e-6):
            raise RuntimeError(f"{label}: output {name!r} differs from in-process onnxruntime")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process_rate(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    """Single-sample calls per second of bare onnxruntime, pinned to the server CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CPU)})
    try:
        for _ in range(20):
            sess.run(None, {"input": x})
        calls, begin = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - begin) < seconds:
            for _ in range(10):
                sess.run(None, {"input": x})
            calls += 10
        return calls / elapsed
    finally:
        os.sched_setaffinity(0, before)


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"unknown wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # state ppid pgrp ... utime (11) stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, lua: Path, connections: int, seconds: int, pgid: int = 0) -> Result:
    """wrk's numbers, and the CPU per request of the process group ``pgid`` (0: not measured)."""
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--latency", "--timeout", "10s", "-s", str(lua), url]
    cpu_before = group_cpu_s(pgid) if pgid else 0.0
    done = subprocess.run(argv, capture_output=True, text=True)
    cpu_s = group_cpu_s(pgid) - cpu_before if pgid else 0.0
    out = done.stdout
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if done.returncode or not (rps and p50 and p99):
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}{done.stderr}")
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors.append(f"{m.group(1)} non-2xx responses")
    if m := re.search(r"Socket errors:\s*(.*)", out):
        errors.append(f"socket errors: {m.group(1)}")
    cpu_us = cpu_s / int(requests.group(1)) * 1e6 if requests and int(requests.group(1)) else 0.0
    return Result(
        float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), "; ".join(errors), cpu_us
    )


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        "; ".join(r.errors for r in results if r.errors),
        statistics.median(r.cpu_us for r in results),
    )


@dataclass
class Row:
    model: str
    connections: int
    modelport: Result
    fastapi: Result
    ratio: float  # median over rounds of modelport/fastapi req/s
    cpu_ratio: float  # the same of the servers' CPU time per request


def write_request(work: Path, repo: Path, model: str) -> tuple[np.ndarray, bytes, Path]:
    """The model's first sample row as a V2 JSON body, and a wrk script that POSTs it."""
    row = json.loads((repo / "_samples" / f"{model}.json").read_text())["input"][0]
    x = np.asarray([row], dtype=np.float32)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    return x, body, post_script(work, model, body)


def post_script(work: Path, name: str, body: bytes) -> Path:
    """A wrk script that POSTs ``body`` as JSON (kept in ``work``)."""
    (work / f"{name}.json").write_bytes(body)
    script = work / f"{name}.lua"
    script.write_text(
        f'local f = assert(io.open("{work / name}.json", "rb"))\n'
        'wrk.body = f:read("*a")\nf:close()\nwrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def bench_model(
    args: argparse.Namespace, work: Path, repo: Path, model: str, modelport: Server,
    against: Server | None,
) -> tuple[list[Row], float]:  # fmt: skip
    x, body, lua = write_request(work, repo, model)
    onnx = repo / model / "1" / "model.onnx"
    sess = session(onnx)
    names = [o.name for o in sess.get_outputs()]
    expected = dict(zip(names, sess.run(names, {"input": x}), strict=True))
    ceiling = in_process_rate(sess, x, min(args.seconds, 3))
    if against is not None:  # another commit's modelport in FastAPI's place
        return compare(args, model, body, expected, lua, modelport, against), ceiling
    fastapi = start(
        f"fastapi-{model}",
        [
            str(BIN / "uvicorn"),
            "--app-dir",
            str(HERE),
            "fastapi_baseline:app",
            "--port",
            "{port}",
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        "/health",
        {"MODEL_PATH": str(onnx)},
    )
    try:
        return compare(args, model, body, expected, lua, modelport, fastapi), ceiling
    finally:
        stop(fastapi)


def compare(
    args: argparse.Namespace, model: str, body: bytes, expected: dict[str, np.ndarray],
    lua: Path, modelport: Server, other: Server,
) -> list[Row]:  # fmt: skip
    """modelport and ``other`` (FastAPI, or another commit's modelport), rounds interleaved."""
    path = "/predict" if other.label.startswith("fastapi") else f"/v2/models/{model}/infer"
    pair = [
        (modelport.label, f"{modelport.base}/v2/models/{model}/infer", modelport),
        (other.label, other.base + path, other),
    ]
    for label, url, _ in pair:
        check(label, url, body, expected)
        run_wrk(url, lua, 16, 1)  # warm-up
    rows = []
    for c in args.concurrency:
        results: dict[str, list[Result]] = {label: [] for label, _, _ in pair}
        for i in range(args.rounds):
            for label, url, server in pair if i % 2 == 0 else pair[::-1]:
                results[label].append(run_wrk(url, lua, c, args.seconds, server.proc.pid))
        mp, fa = results[modelport.label], results[other.label]
        ratio = statistics.median(a.rps / b.rps for a, b in zip(mp, fa, strict=True))
        cpu_ratio = statistics.median(
            a.cpu_us / b.cpu_us if b.cpu_us else float("nan") for a, b in zip(mp, fa, strict=True)
        )
        rows.append(Row(model, c, median(mp), median(fa), ratio, cpu_ratio))
        print(
            f"  {model} c={c}: {rows[-1].modelport.rps:.0f} vs {rows[-1].fastapi.rps:.0f} "
            f"req/s, ratio {ratio:.2f}; CPU per request ratio {cpu_ratio:.2f}",
            flush=True,
        )
    return rows


def print_table(args: argparse.Namespace, rows: list[Row], ceilings: dict[str, float]) -> list[str]:
    print(
        f"\nmedians of {args.rounds} round(s) x {args.seconds} s; server on CPU {SERVER_CPU}, "
        f"wrk on CPU {LOAD_CPU}; one sample per request, V2 JSON"
    )
    other = "bf" if args.against else "fa"  # this commit's modelport vs before, or FastAPI
    head = (
        "model",
        "conc",
        "mp req/s",
        "p50 ms",
        "p99 ms",
        f"{other} req/s",
        "p50 ms",
        "p99 ms",
        f"mp/{other}",
        "mp cpu us",
        f"{other} cpu us",
        "cpu mp/" + other,
    )
    widths = (10, 5, 9, 7, 7, 9, 7, 7, 6, 9, 9, 10)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    errors = []
    for r in rows:
        mp, fa = r.modelport, r.fastapi
        cells = (
            r.model,
            r.connections,
            f"{mp.rps:.0f}",
            f"{mp.p50_ms:.2f}",
            f"{mp.p99_ms:.2f}",
            f"{fa.rps:.0f}",
            f"{fa.p50_ms:.2f}",
            f"{fa.p99_ms:.2f}",
            f"{r.ratio:.2f}",
            f"{mp.cpu_us:.0f}",
            f"{fa.cpu_us:.0f}",
            f"{r.cpu_ratio:.2f}",
        )
        print("  ".join(str(v).rjust(w) for v, w in zip(cells, widths, strict=True)))
        for label, result in (("modelport", mp), ("fastapi", fa)):
            if result.errors:
                errors.append(f"{label} {r.model} c={r.connections}: {result.errors}")
    print("\nin-process onnxruntime, one sample per call on one core (the unbatched ceiling):")
    for model, rate in ceilings.items():
        print(f"  {model:<10} {rate:9.0f} calls/s")
    return errors


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repo", type=Path, help="model repository (default: demo in a temp dir)")
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="per server; medians are shown")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections, comma-separated")
    parser.add_argument("--models", default="digits,mlp-large", help="comma-separated")
    parser.add_argument(
        "--against",
        type=Path,
        help="a checkout of another modelport commit: compare with its `modelport serve` "
        "instead of FastAPI (mp/other = this commit / that one), e.g. the commit before a change",
    )
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = args.models.split(",")
    return args


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs taskset and 2 CPUs: the server runs on CPU 0, wrk on CPU 1")
    # Turn SIGTERM into SystemExit so the finally clauses below stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="modelport-serving-"))
    modelport = against = None
    try:
        repo = args.repo
        if repo is None:
            repo = work / "repo"
            print(f"building the demo repository in {repo} ...", flush=True)
            cmd = [str(BIN / "modelport"), "demo", str(repo), "--no-torch"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        modelport = start("modelport", serve_argv(repo, None), "/v2/health/ready")
        if args.against is not None:
            src = str(args.against.resolve() / "src")
            against = start(
                "modelport-before", serve_argv(repo, src), "/v2/health/ready", {"PYTHONPATH": src}
            )
        rows, ceilings = [], {}
        for model in args.models:
            model_rows, ceilings[model] = bench_model(args, work, repo, model, modelport, against)
            rows += model_rows
    finally:
        for server in (modelport, against):
            if server is not None:
                stop(server)
        shutil.rmtree(work, ignore_errors=True)
    errors = print_table(args, rows, ceilings)
    for line in errors:
        print(f"ERROR {line}")
    sys.exit(1 if errors else 0)


def serve_argv(repo: Path, src: str | None) -> list[str]:
    """``modelport serve`` of this checkout, or of the one whose ``src`` folder is given."""
    argv = [
        sys.executable,
        "-m",
        "modelport",
        "serve",
        str(repo),
        "--port",
        "{port}",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-access-log",
        "--trust-code",  # the demo's digits-code, or --repo's code models
        # wrk repeats one body: a cache would answer every request from memory,
        # which measures the cache, not the server. The cache has its own benchmark.
        "--cache",
        "off",
    ]
    if src is not None:  # a commit from before code models needed an explicit opt-in
        help_text = subprocess.run(
            [sys.executable, "-m", "modelport", "serve", "--help"], capture_output=True,
            text=True, env={**os.environ, "PYTHONPATH": src}, check=True,
        ).stdout  # fmt: skip
        if "--trust-code" not in help_text:
            argv.remove("--trust-code")
    return argv


if __name__ == "__main__":
    main()
