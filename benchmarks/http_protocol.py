"""Which HTTP server for modelport: uvicorn + httptools, uvicorn + modelport's http1.py, granian.

    .venv/bin/python benchmarks/http_protocol.py
    .venv/bin/python benchmarks/http_protocol.py --seconds 5 --rounds 3

Each server is one worker process pinned to CPU 0, ``wrk`` runs on CPU 1, no access log:
- a bare ASGI app that answers every POST with the same 300 bytes (the server's own cost per
  request), under uvicorn ``--http httptools``, uvicorn ``--http ...http1:H1Protocol``,
  granian's ASGI interface and, for reference, the same app written for granian's RSGI;
- modelport's service on the digits demo model, one V2 JSON sample per request, under the same
  three ASGI servers. Every server runs the same app, built by ``service_app()`` below as
  ``modelport serve REPO/digits --threads 1 --cache off --no-access-log`` builds it (the one
  model alone, so that no other model of the demo has to load), with uvicorn given
  the options ``modelport serve`` gives it (uvloop, lifespan on, no server header, no proxy
  headers); only the server differs.
Before any load each server's answer is checked (the bare app's exact bytes, the digits answer
against in-process onnxruntime), and any non-2xx answer or socket error under load is reported
and fails the run. Rounds rotate the servers' order; the table shows medians, the server's CPU
time per request (from /proc: user + system of every process in its group, so granian's worker
and Rust threads count) and the ratio of req/s to http1.py (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import logging.config
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from serving import (
    BIN,
    HERE,
    Result,
    Server,
    check,
    median,
    run_wrk,
    session,
    start,
    stop,
    write_request,
)

ANSWER = b'{"model_name":"bare","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[0]}]}'
ANSWER += b" " * (300 - len(ANSWER))
REPO_ENV = "MODELPORT_BENCH_REPO"  # what service_app() serves: a repository or one model
BASELINE = "http1.py"


async def bare_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Reads the request body, answers a fixed JSON of 300 bytes."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"300")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


_RSGI_HEADERS = [("content-type", "application/json"), ("content-length", "300")]


async def bare_rsgi(scope: Any, protocol: Any) -> None:
    """The bare app for granian's RSGI interface: reads the body, answers the same bytes."""
    await protocol()
    protocol.response_bytes(200, _RSGI_HEADERS, ANSWER)


def _find(modules: tuple[str, ...], attribute: str) -> tuple[str, Any]:
    """The first of ``modules`` that defines ``attribute`` (the server package is moving)."""
    for name in modules:
        try:
            return name, getattr(importlib.import_module(name), attribute)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # the module exists but something it imports does not
        except AttributeError:
            pass
    raise ImportError(f"none of {', '.join(modules)} defines {attribute}")


def service_app() -> Any:
    """Factory: modelport's service for the repository or model in $MODELPORT_BENCH_REPO, as
    ``modelport serve SOURCE --threads 1 --cache off --no-access-log`` builds it."""
    from modelport.config import RuntimeConfig, ServerConfig

    _, create_app = _find(
        ("modelport.server.service", "modelport.server.rest.app", "modelport.server.rest",
         "modelport.server.app"),
        "create_app",
    )  # fmt: skip
    try:
        _, log_config = _find(("modelport.server.lifecycle",), "log_config")
        logging.config.dictConfig(log_config(False))
    except ImportError:
        logging.getLogger("modelport.access").setLevel(logging.WARNING)
    config = ServerConfig(cache="off", runtime=RuntimeConfig(intra_op_threads=1))
    return create_app(Path(os.environ[REPO_ENV]), config)


def h1_protocol() -> str:
    """uvicorn's ``--http`` value for modelport's HTTP/1.1 protocol, wherever it lives now."""
    for name in ("modelport.server.protocols.http1", "modelport.server.http1"):
        try:
            if importlib.util.find_spec(name) is not None:
                return f"{name}:H1Protocol"
        except ModuleNotFoundError:
            continue
    raise ImportError("cannot find modelport's http1 module")


def measure(pgid: int, url: str, lua: Path, c: int, seconds: int) -> tuple[Result, float]:
    result = run_wrk(url, lua, c, seconds, pgid)
    return result, result.cpu_us


def uvicorn_argv(app: str, http: str, factory: bool = False) -> list[str]:
    argv = [
        str(BIN / "uvicorn"), "--app-dir", str(HERE), app, "--port", "{port}", "--loop",
        "uvloop", "--http", http, "--no-access-log", "--log-level", "warning",
        "--no-server-header", "--no-proxy-headers",
    ]  # fmt: skip
    return [*argv, "--factory", "--lifespan", "on"] if factory else [*argv, "--lifespan", "off"]


def granian_argv(app: str, interface: str = "asgi", factory: bool = False) -> list[str]:
    argv = [
        str(BIN / "granian"), "--working-dir", str(HERE), "--interface", interface, "--port",
        "{port}", "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return [*argv, "--factory", app] if factory else [*argv, app]


def check_bare(label: str, url: str) -> None:
    request = urllib.request.Request(url, b'{"x": 1}', {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        if r.status != 200 or r.read() != ANSWER:
            raise RuntimeError(f"{label}: the bare app's answer differs")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="per server; medians are shown")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs taskset and 2 CPUs: the server runs on CPU 0, wrk on CPU 1")
    has_granian = (BIN / "granian").exists()
    if not has_granian:
        print("granian is not installed (pip install granian): measuring uvicorn only")
    # SIGTERM -> SystemExit, so the finally clause below stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="modelport-http-"))
    repo = work / "repo"
    print(f"building the demo repository in {repo} ...", flush=True)
    cmd = [str(BIN / "modelport"), "demo", str(repo), "--no-torch"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    x, body, lua = write_request(work, repo, "digits")
    sess = session(repo / "digits" / "1" / "model.onnx")
    names = [o.name for o in sess.get_outputs()]
    expected = dict(zip(names, sess.run(names, {"input": x}), strict=True))
    h1 = h1_protocol()
    source = str(repo / "digits")
    bare = "http_protocol:bare_app"
    service = "http_protocol:service_app"
    groups = [
        ("bare app", "/", "/", [
            ("httptools", uvicorn_argv(bare, "httptools")),
            (BASELINE, uvicorn_argv(bare, h1)),
            *([("granian", granian_argv(bare)),
               ("granian-rsgi", granian_argv("http_protocol:bare_rsgi", "rsgi"))]
              if has_granian else []),
        ]),
        ("digits", "/v2/models/digits/infer", "/v2/health/ready", [
            ("httptools", uvicorn_argv(service, "httptools", factory=True)),
            (BASELINE, uvicorn_argv(service, h1, factory=True)),
            *([("granian", granian_argv(service, factory=True))] if has_granian else []),
        ]),
    ]  # fmt: skip
    head = ("app", "conc", "server", "req/s", "p50 ms", "p99 ms", "CPU us/req", "x h1")
    widths = (9, 5, 12, 8, 7, 7, 11, 6)
    rows, errors = [], []
    try:
        for label, path, ready, servers in groups:
            running: list[tuple[str, Server]] = []
            try:
                for name, argv in servers:
                    server = start(
                        f"{label}-{name}".replace(" ", "-"), argv, ready, {REPO_ENV: source}
                    )
                    running.append((name, server))
                    url = server.base + path
                    if label == "bare app":
                        check_bare(name, url)
                    else:
                        check(name, url, body, expected)
                    warm = run_wrk(url, lua, 16, 1)
                    if warm.errors:
                        raise RuntimeError(f"{label} {name} warm-up: {warm.errors}")
                for c in [int(c) for c in args.concurrency.split(",")]:
                    got: dict[str, list[tuple[Result, float]]] = {n: [] for n, _ in running}
                    for i in range(args.rounds):
                        k = i % len(running)
                        for name, server in running[k:] + running[:k]:
                            pgid = server.proc.pid  # start() makes each server a session leader
                            got[name].append(
                                measure(pgid, server.base + path, lua, c, args.seconds)
                            )
                    base = got[BASELINE]
                    for name, results in got.items():
                        r = median([result for result, _ in results])
                        cpu = statistics.median(us for _, us in results)
                        ratios = [
                            a.rps / b.rps for (a, _), (b, _) in zip(results, base, strict=True)
                        ]
                        ratio = statistics.median(ratios)
                        cells = (label, c, name, f"{r.rps:.0f}", f"{r.p50_ms:.2f}",
                                 f"{r.p99_ms:.2f}", f"{cpu:.1f}", f"{ratio:.2f}")  # fmt: skip
                        rows.append(cells)
                        rounds = " ".join(f"{x:.2f}" for x in ratios)
                        print(
                            "  " + "  ".join(map(str, cells)) + f"  (rounds: {rounds})", flush=True
                        )
                        if r.errors:
                            errors.append(f"{label} {name} c={c}: {r.errors}")
            finally:
                for _, server in running:
                    stop(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmedians of {args.rounds} rounds x {args.seconds} s; each server one worker on CPU 0, "
        "wrk on CPU 1;\nx h1 = req/s / http1.py's (median of per-round ratios)"
    )
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for cells in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(cells, widths, strict=True)))
    for line in errors:
        print(f"ERROR {line}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
