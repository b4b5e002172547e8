"""Soak: mixed load on the demo repository for a long time, watching memory and errors.

    .venv/bin/python benchmarks/soak.py                       # one hour
    .venv/bin/python benchmarks/soak.py --minutes 30 --report-s 60
    .venv/bin/python benchmarks/soak.py --minutes 2 --report-s 15 --warmup-s 30   # the suite's

One ``modelport serve --watch`` of the demo repository (the three latest versions of ``digits``
served together), REST and gRPC, a memory cache with a short TTL. Every ``--switch-s`` a new
version of ``digits`` is imported into the repository: the server loads it, warms it up and
swaps it in, and the oldest drains and unloads. ``--concurrency`` callers send, at random: REST
JSON and binary inferences, V1 predictions, gRPC inferences, GraphQL predictions, statistics
and metrics reads; two thirds of the inferences name one of the two newest versions, the rest
take the latest; inputs come from a pool larger than the cache holds, so entries are evicted
and expire all the time.
Every ``--report-s`` it prints the requests so far, the errors (any answer but 200, and any
transport failure) and the server's resident memory (its processes summed). After
``--warmup-s`` the memory is the baseline: the run fails (exit 1) on any error or on growth
beyond ``--max-growth-mb`` (50: Triton's own bar is 100 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

POOL = 4000  # distinct inputs: more than the cache keeps at its TTL and this rate


@dataclass
class Tally:
    requests: int = 0
    switches: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the workers), in MB."""
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in found]


async def caller(
    url: str, grpc_port: int, rows: np.ndarray, tally: Tally, stop_at: float, versions: list[int]
) -> None:
    import grpc
    import httpx

    from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        while time.monotonic() < stop_at:
            row = rows[random.randrange(len(rows))]
            pinned = random.choice(versions[-2:])  # the oldest served is about to unload
            version = random.choice(["", f"/versions/{pinned}", f"/versions/{pinned}"])
            kind = random.choice(["json", "binary", "v1", "grpc", "graphql", "read"])
            try:
                if kind == "grpc":
                    request = pb.ModelInferRequest(
                        model_name="digits", model_version=version.rsplit("/", 1)[-1]
                    )
                    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
                    request.raw_input_contents.append(row.astype("<f4").tobytes())
                    await infer(request, timeout=30)
                    status = 200
                else:
                    status = (await _http(http, kind, version, row)).status_code
            except Exception as exc:  # a transport failure is an error like a 5xx
                tally.failed(f"{kind}: {type(exc).__name__}")
            else:
                if status != 200:
                    tally.failed(f"{kind}: {status}")
            tally.requests += 1
        await channel.close()


async def _http(http: object, kind: str, version: str, row: np.ndarray) -> object:
    import httpx

    assert isinstance(http, httpx.AsyncClient)
    data = row.tolist()
    if kind == "json":
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]}
        return await http.post(f"/v2/models/digits{version}/infer", json=body)
    if kind == "binary":
        tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32",
                  "parameters": {"binary_data_size": 256}}  # fmt: skip
        head = json.dumps({"inputs": [tensor]}).encode()
        return await http.post(
            f"/v2/models/digits{version}/infer", content=head + row.astype("<f4").tobytes(),
            headers={"inference-header-content-length": str(len(head))},
        )  # fmt: skip
    if kind == "v1":
        return await http.post(f"/v1/models/digits{version}:predict", json={"instances": [data]})
    if kind == "graphql":
        query = 'mutation($x: JSON!) { predict(model: "digits", inputs: [{name: "input", data: $x}]) { version } }'  # noqa: E501
        return await http.post("/graphql", json={"query": query, "variables": {"x": [data]}})
    path = random.choice(["/metrics", "/v2/models/stats", "/v2/models/digits/config", "/v2"])
    return await http.get(path)


async def switcher(
    url: str, repo: object, versions: list[int], every_s: float, stop_at: float, tally: Tally
) -> None:
    """Import a new version of digits every ``every_s``; callers pin it once it answers."""
    import httpx

    from modelport.demo import build_sklearn_digits

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() + every_s < stop_at:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(build_sklearn_digits, repo)  # type: ignore[arg-type]
            new = versions[-1] + 1
            landed = time.monotonic()
            while time.monotonic() - landed < 60:
                if (await http.get(f"/v2/models/digits/versions/{new}/ready")).status_code == 200:
                    versions.append(new)
                    tally.switches += 1
                    break
                await asyncio.sleep(0.1)
            else:
                tally.failed(f"version {new} never became ready")


async def soak(args: argparse.Namespace, url: str, grpc_port: int, pid: int, repo: object) -> int:
    rows = np.random.default_rng(0).uniform(0, 16, (POOL, 64)).round(2).astype(np.float32)
    tally = Tally()
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    versions = [1, 2, 3]
    callers = [
        asyncio.create_task(caller(url, grpc_port, rows, tally, stop_at, versions))
        for _ in range(args.concurrency)
    ]
    callers.append(
        asyncio.create_task(switcher(url, repo, versions, args.switch_s, stop_at, tally))
    )
    baseline: float | None = None
    print(
        f"| {'minute':>6} | {'requests':>9} | {'errors':>6} | {'versions':>8} | {'RSS MB':>7} "
        f"| {'growth MB':>9} |"
    )
    print(f"|{'-' * 8}|{'-' * 11}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(args.report_s, max(stop_at - time.monotonic(), 0.1)))
        elapsed = time.monotonic() - started
        memory = rss_mb(pid)
        if baseline is None and elapsed >= args.warmup_s:
            baseline = memory
        growth = "" if baseline is None else f"{memory - baseline:+.1f}"
        errors = sum(tally.errors.values())
        print(f"| {elapsed / 60:6.1f} | {tally.requests:9d} | {errors:6d} | "
              f"{tally.switches:8d} | {memory:7.1f} | {growth:>9} |", flush=True)  # fmt: skip
    await asyncio.gather(*callers)
    final = rss_mb(pid)
    growth_mb = final - (baseline if baseline is not None else final)
    errors = sum(tally.errors.values())
    print(
        f"\n{tally.requests} requests in {args.minutes:g} min, {tally.switches} version "
        f"switches, {errors} errors "
        f"{tally.errors or ''}; RSS {final:.1f} MB, growth after warm-up {growth_mb:+.1f} MB "
        f"(limit {args.max_growth_mb:g})"
    )
    return 0 if errors == 0 and growth_mb <= args.max_growth_mb else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--report-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--switch-s", type=float, default=30.0, help="between new versions")
    args = parser.parse_args()

    import modelport
    from modelport.demo import build_code_model, build_mlp_large, build_sklearn_digits
    from modelport.testing import free_port, run_server

    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        print("building the demo repository ...", file=sys.stderr)
        builds = (*[build_sklearn_digits] * 3, build_mlp_large, build_code_model)
        for build in builds:  # digits: versions 1, 2 and 3
            build(repo)
        grpc_port = free_port()
        with run_server(
            repo.root, "--trust-code", "--version-policy", "latest:3", "--watch",
            "--grpc-port", str(grpc_port),
            "--cache", "memory", "--cache-ttl-s", "5", "--no-access-log",
        ) as server:  # fmt: skip
            code = asyncio.run(soak(args, server.url, grpc_port, server.process.pid, repo))
    sys.exit(code)


if __name__ == "__main__":
    main()
