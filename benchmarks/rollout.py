"""Versions in production, measured: switches under load, and what a shadow costs.

    PYTHONPATH=src .venv/bin/python benchmarks/rollout.py
    PYTHONPATH=src .venv/bin/python benchmarks/rollout.py --seconds 30 --switches 10

1. Version switches: ``modelport serve --watch`` serves the digits demo model to 16 callers
   for ``--seconds`` (60). After a steady first quarter, ``--switches`` (20) new versions land
   one after another, each moved into the repository in one rename (as an import does), each a
   copy of the model's files. Reported: answers that were not 2xx (target 0), p99 latency of
   requests sent within 1 s of a version landing against p99 of the steady quarter (its first
   second aside; target at most 2x), and the time from a version's files landing to its first
   answer.
2. Shadow: p50 latency at concurrency 1 of a server with ``--shadow digits=2`` (version 1 live)
   against one without, interleaved rounds (target within 10%), and the server's CPU time per
   request (every thread's, from /proc schedstat), which a busy machine disturbs far less.

Each server runs pinned to CPU 0 (one worker, cache off, no access log, one onnxruntime thread),
the callers on CPU 1: raw HTTP/1.1 on keep-alive connections, one per caller, the JSON body
encoded once. Every answer's ``model_version`` is read from its ``Model-Version`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from front_doors import start_server, take_load_cpu


@dataclass
class Sample:
    sent: float
    seconds: float
    status: int
    version: str


async def call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, str]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length, version = 0, ""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"model-version":
            version = value.strip().decode()
    await reader.readexactly(length)
    return status, version


def request_bytes(port: int, body: bytes) -> bytes:
    return (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def load(port: int, request: bytes, concurrency: int, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    stop_at = time.monotonic() + seconds

    async def caller() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    status, version = await call(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    samples.append(Sample(sent, time.monotonic() - sent, 0, ""))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                samples.append(Sample(sent, time.monotonic() - sent, status, version))
        finally:
            writer.close()

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(60)


def stage_copies(repo: Path, count: int) -> list[Path]:
    """Copies of digits:1 as versions 2..count+1, outside the repository, ready to land."""
    staged = []
    outside = repo.parent / "staged"
    for version in range(2, count + 2):
        folder = outside / str(version)
        shutil.copytree(repo / "digits" / "1", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = version
        (folder / "manifest.json").write_text(json.dumps(manifest))
        staged.append(folder)
    return staged


async def switches(
    repo: Path, port: int, request: bytes, seconds: float, count: int
) -> dict[str, float]:
    staged = stage_copies(repo, count)
    landed: dict[str, float] = {}

    async def land() -> None:
        await asyncio.sleep(seconds / 4)
        gap = (seconds * 3 / 4 - 2) / count
        for folder in staged:
            landed[folder.name] = time.monotonic()
            os.rename(folder, repo / "digits" / folder.name)  # one step, as an import does
            await asyncio.sleep(gap)

    started = time.monotonic()
    samples, _ = await asyncio.gather(load(port, request, 16, seconds), land())
    # The steady quarter, less its first second (connections opening, first calls).
    steady = [s.seconds for s in samples if started + 1 <= s.sent < started + seconds / 4]
    near = [s.seconds for s in samples if any(0 <= s.sent - t <= 1.0 for t in landed.values())]
    first = {}
    for s in sorted(samples, key=lambda s: s.sent + s.seconds):
        if s.version in landed and s.version not in first:
            first[s.version] = s.sent + s.seconds - landed[s.version]
    return {
        "requests": len(samples),
        "non_2xx": sum(1 for s in samples if not 200 <= s.status < 300),
        "steady_p50_ms": percentile(steady, 0.5) * 1000,
        "steady_p99_ms": percentile(steady, 0.99) * 1000,
        "switch_p99_ms": percentile(near, 0.99) * 1000,
        "switched": len(first),
        "landing_median_ms": statistics.median(first.values()) * 1000 if first else float("nan"),
        "landing_max_ms": max(first.values()) * 1000 if first else float("nan"),
    }


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process so far (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


async def p50(port: int, request: bytes, seconds: float, pid: int) -> tuple[float, float]:
    """p50 latency in ms at c=1, and the server's CPU time per request in us."""
    before = cpu_ns(pid)
    samples = await load(port, request, 1, seconds)
    await asyncio.sleep(0.05)  # the last shadow copies run
    used = cpu_ns(pid) - before
    assert all(s.status == 200 for s in samples), "a request failed"
    return percentile([s.seconds for s in samples], 0.5) * 1000, used / len(samples) / 1000


def run_switches(repo: Path, body: bytes, args: argparse.Namespace) -> dict[str, float]:
    from modelport.testing import free_port

    port = free_port()
    server = start_server(repo, port, "--watch", "--watch-interval-s", "1")
    try:
        print(f"switching versions for {args.seconds:g} s ...", file=sys.stderr)
        request = request_bytes(port, body)
        return asyncio.run(switches(repo, port, request, args.seconds, args.switches))
    finally:
        stop(server)


def print_switches(r: dict[str, float], args: argparse.Namespace) -> None:
    gap = (args.seconds * 3 / 4 - 2) / args.switches
    print(f"\nVersion switches: digits, c=16, {args.seconds:g} s of load, {args.switches} "
          f"versions landing (one every {gap:.1f} s after a steady quarter)")  # fmt: skip
    print(
        "| requests | non-2xx | p50 steady | p99 steady | p99 within 1 s of a landing | "
        "ratio | landing -> first answer, median / max | versions that answered |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {r['requests']:,.0f} | {r['non_2xx']:.0f} | {r['steady_p50_ms']:.2f} ms | "
          f"{r['steady_p99_ms']:.2f} ms | {r['switch_p99_ms']:.2f} ms | "
          f"{r['switch_p99_ms'] / r['steady_p99_ms']:.2f}x | {r['landing_median_ms']:.0f} / "
          f"{r['landing_max_ms']:.0f} ms | {r['switched']:.0f} of {args.switches} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="of load during switches")
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--shadow-seconds", type=float, default=5.0, help="per server per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--shadow-only", action="store_true", help="skip the switches")
    args = parser.parse_args()
    take_load_cpu()

    import numpy as np

    import modelport
    from modelport.demo import build_sklearn_digits
    from modelport.testing import free_port

    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        print("building the digits model ...", file=sys.stderr)
        build_sklearn_digits(repo)
        x = np.random.default_rng(1).uniform(0, 16, (1, 64)).astype(np.float32)
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                         "data": x.ravel().tolist()}]}
        ).encode()  # fmt: skip

        result = None if args.shadow_only else run_switches(repo.root, body, args)

        # The shadow: version 2 (a copy) shadows version 1 on one server, not on the other.
        shadow_repo = modelport.Repository.init(Path(tmp) / "shadow-models")
        shutil.copytree(repo.root / "digits" / "1", shadow_repo.root / "digits" / "1")
        for folder in stage_copies(shadow_repo.root, 1):
            os.rename(folder, shadow_repo.root / "digits" / folder.name)
        plain_port, shadow_port = free_port(), free_port()
        plain = start_server(shadow_repo.root, plain_port, "--version-policy", "specific:1")
        shadowed = start_server(shadow_repo.root, shadow_port, "--shadow", "digits=2")
        try:
            with_shadow, without = [], []
            for round_ in range(args.rounds):
                order = [(plain_port, plain, without), (shadow_port, shadowed, with_shadow)]
                for port_, server_, into in order if round_ % 2 == 0 else reversed(order):
                    request = request_bytes(port_, body)
                    seconds = args.shadow_seconds
                    into.append(asyncio.run(p50(port_, request, seconds, server_.pid)))
            import httpx

            page = httpx.get(f"http://127.0.0.1:{shadow_port}/metrics").text
            shadowed_count = sum(
                float(line.rpartition(" ")[2]) for line in page.splitlines()
                if line.startswith("modelport_shadow_requests_total{")
            )  # fmt: skip
        finally:
            stop(plain)
            stop(shadowed)

    if result is not None:
        print_switches(result, args)
    a, b = (statistics.median(p for p, _ in runs) for runs in (without, with_shadow))
    ca, cb = (statistics.median(c for _, c in runs) for runs in (without, with_shadow))
    print(f"\nShadow: digits, c=1, {args.rounds} interleaved rounds of "
          f"{args.shadow_seconds:g} s, medians over rounds")  # fmt: skip
    print("| | without shadow | with --shadow digits=2 | ratio |")
    print("|---|---|---|---|")
    print(f"| p50 latency | {a:.3f} ms | {b:.3f} ms | {b / a:.3f}x |")
    print(f"| server CPU per request | {ca:.0f} us | {cb:.0f} us | {cb / ca:.3f}x |")
    print(f"({shadowed_count:,.0f} copies run by the shadow; p50 per round without: "
          f"{', '.join(f'{p:.3f}' for p, _ in without)}; with: "
          f"{', '.join(f'{p:.3f}' for p, _ in with_shadow)} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
