"""What keeping predictions costs a request: the digits model served without a log, and with
5% or every request logged (SQLite, then PostgreSQL when it runs at 127.0.0.1:5432). The log
writer shares the server's one core here: at full load, what it encodes and inserts is CPU the
requests do not get.

    .venv/bin/python benchmarks/prediction_log.py [--seconds 3 --rounds 3 --concurrency 8]

One ``modelport serve`` per setting (one worker, cache off, no access log) pinned to CPU 0, the
load on CPU 1: raw HTTP/1.1 keep-alive connections posting one V1 request of 8 rows each.
Rounds interleave the settings; the table shows medians and the ratio to no log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from front_doors import LOAD_CPU, SERVER_CPU, http_call, start_server, take_load_cpu


async def load(port: int, request: bytes, concurrency: int, seconds: float) -> tuple[float, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await http_call(reader, writer, request)
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000


def postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), 1).close()
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    take_load_cpu()

    import modelport
    from modelport.demo import build_sklearn_digits
    from modelport.testing import free_port

    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        build_sklearn_digits(repo)
        settings = {
            "no log": [],
            "SQLite, 5% of requests": ["--log-predictions", f"{tmp}/a.db", "--sample", "0.05"],
            "SQLite, every request": ["--log-predictions", f"{tmp}/b.db", "--sample", "1"],
        }
        if postgres_up():
            url = "postgresql://postgres@127.0.0.1:5432/test"
            settings["PostgreSQL, 5% of requests"] = ["--log-predictions", url, "--sample", "0.05"]
            settings["PostgreSQL, every request"] = ["--log-predictions", url, "--sample", "1"]
        rows = np.random.default_rng(0).uniform(0, 16, (8, 64)).round(1).tolist()
        body = json.dumps({"instances": rows}).encode()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
        for i in range(args.rounds):
            order = list(settings) if i % 2 == 0 else list(reversed(settings))
            for name in order:
                port = free_port()
                request = (
                    f"POST /v1/models/digits:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                server = start_server(repo.root, port, *settings[name])
                try:
                    asyncio.run(load(port, request, args.concurrency, 0.5))  # warm up
                    results[name].append(
                        asyncio.run(load(port, request, args.concurrency, args.seconds))
                    )
                finally:
                    os.killpg(server.pid, signal.SIGTERM)
                    server.wait(30)
    base_rps = statistics.median(r[0] for r in results["no log"])
    base_p50 = statistics.median(r[1] for r in results["no log"])
    print(
        f"\ndigits, 8 rows a request, concurrency {args.concurrency}; medians of {args.rounds} "
        f"rounds of {args.seconds:g} s; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}.\n"
    )
    print(f"| {'setting':26} | {'req/s':>7} | {'ratio':>6} | {'p50 ms':>7} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 8}|{'-' * 9}|{'-' * 8}|")
    for name, measured in results.items():
        rps = statistics.median(r[0] for r in measured)
        p50 = statistics.median(r[1] for r in measured)
        print(
            f"| {name:26} | {rps:7.0f} | {rps / base_rps:6.2f} | {p50:7.2f} | "
            f"{p50 / base_p50:6.2f} |"
        )


if __name__ == "__main__":
    main()
