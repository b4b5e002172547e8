"""modelport's HTTP/1.1 protocol next to uvicorn's httptools one, on the same server.

    .venv/bin/python benchmarks/http_protocol.py
    .venv/bin/python benchmarks/http_protocol.py --seconds 5 --rounds 3

Two pairs, each server one process pinned to CPU 0, ``wrk`` on CPU 1, no access log:
- a bare ASGI app that answers every POST with the same 300 bytes, under uvicorn with
  ``--http httptools`` and with ``--http modelport.server.http1:H1Protocol`` (the protocol's own
  cost per request);
- ``modelport serve --http uvicorn`` and ``--http modelport`` on the digits demo model, one V2
  JSON sample per request, cache off (what it changes for a small model).
Rounds alternate the pair's order; the table shows medians, the server's CPU time per request
(from /proc, user + system) and the ratio of req/s (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from serving import BIN, HERE, Result, median, run_wrk, start, stop, write_request

ANSWER = b'{"model_name":"bare","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[0]}]}'
ANSWER += b" " * (300 - len(ANSWER))


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, url: str, lua: Path, c: int, seconds: int) -> tuple[Result, float]:
    before = cpu_seconds(pid)
    result = run_wrk(url, lua, c, seconds)
    return result, (cpu_seconds(pid) - before) / (result.rps * seconds) * 1e6


def uvicorn_argv(http: str) -> list[str]:
    return [
        str(BIN / "uvicorn"), "--app-dir", str(HERE), "http_protocol:bare_app", "--port",
        "{port}", "--loop", "uvloop", "--http", http, "--no-access-log", "--log-level",
        "warning", "--lifespan", "off",
    ]  # fmt: skip


def serve_argv(repo: Path, http: str) -> list[str]:
    return [
        str(BIN / "modelport"), "serve", str(repo), "--port", "{port}", "--threads", "1",
        "--no-access-log", "--cache", "off", "--http", http,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="per server; medians are shown")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelport-http-"))
    repo = work / "repo"
    print(f"building the demo repository in {repo} ...", flush=True)
    cmd = [str(BIN / "modelport"), "demo", str(repo), "--no-torch"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    _, _, lua = write_request(work, repo, "digits")
    pairs = [
        ("bare app", "/", "/",
         ("uvicorn", uvicorn_argv("httptools")),
         ("modelport", uvicorn_argv("modelport.server.http1:H1Protocol"))),
        ("digits", "/v2/models/digits/infer", "/v2/health/ready",
         ("uvicorn", serve_argv(repo, "uvicorn")),
         ("modelport", serve_argv(repo, "modelport"))),
    ]  # fmt: skip
    head = ("server", "conc", "http", "req/s", "p50 ms", "p99 ms", "CPU us/req", "mp/uv")
    rows = []
    for label, path, ready, *servers in pairs:
        running = []
        try:
            for name, argv in servers:
                running.append((name, start(f"{label}-{name}".replace(" ", "-"), argv, ready)))
            for c in [int(c) for c in args.concurrency.split(",")]:
                got: dict[str, list[tuple[Result, float]]] = {name: [] for name, _ in running}
                for i in range(args.rounds):
                    for name, server in running if i % 2 == 0 else running[::-1]:
                        got[name].append(
                            measure(server.proc.pid, server.base + path, lua, c, args.seconds)
                        )
                uv, mp = got["uvicorn"], got["modelport"]
                pairs_of = zip(mp, uv, strict=True)
                ratio = statistics.median(m.rps / u.rps for (m, _), (u, _) in pairs_of)
                for name, results in got.items():
                    r = median([result for result, _ in results])
                    cpu = statistics.median(us for _, us in results)
                    last = f"{ratio:.2f}" if name == "modelport" else ""
                    cells = (label, c, name, f"{r.rps:.0f}", f"{r.p50_ms:.2f}",
                             f"{r.p99_ms:.2f}", f"{cpu:.1f}", last)  # fmt: skip
                    rows.append(cells)
                    print("  " + "  ".join(map(str, cells)), flush=True)
        finally:
            for _, server in running:
                stop(server)
    print(f"\nmedians of {args.rounds} rounds x {args.seconds} s; server on CPU 0, wrk on CPU 1")
    widths = (9, 5, 10, 8, 7, 7, 11, 6)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for cells in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
