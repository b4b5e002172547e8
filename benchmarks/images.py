"""Images of the demo repository: size, build time cold and after one model changes, start.

    CONTAINERS_CONF=tests/containers.conf .venv/bin/python benchmarks/images.py
    .venv/bin/python benchmarks/images.py --base-image docker.io/library/python:3.11-slim

Builds (with ``modelport build``, podman) from the demo repository (digits, mlp-large,
digits-code; no torch):

- ``digits``: digits alone; ``onnx``: digits and mlp-large (34 MB of weights); ``code``: those
  and digits-code.
- lock, cold: resolving the packages and fetching their wheels into an empty cache.
- build, cold: ``modelport build --no-cache`` (the lock cached); rebuild: after a new version
  of digits, the packages' layers reused.
- start to ready: ``podman run -d`` until ``/v2/health/ready`` answers 200 (median of 5).

The base image defaults to the local Debian one of scripts/base_image.sh (no registry can be
reached on the machines this was written on); its size is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modelport.demo import build_demo, build_sklearn_digits

ROOT = Path(__file__).resolve().parents[1]


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, check=True)
    return done.stdout


def cli(*args: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "modelport", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"modelport {' '.join(args[:3])} failed: {done.stderr}")
    return time.monotonic() - started


def size_mb(tag: str) -> float:
    return float(json.loads(podman("image", "inspect", tag))[0]["Size"]) / 1e6


def start_to_ready(tag: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        port = _free_port()
        started = time.monotonic()
        name = podman("run", "-d", "-p", f"127.0.0.1:{port}:8000", "-e", "MODELPORT_TOKEN=x",
                      tag).strip()  # fmt: skip
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > 60:
                    raise SystemExit(f"{tag} did not become ready in 60 s")
                time.sleep(0.02)
            times.append(time.monotonic() - started)
        finally:
            podman("rm", "--force", "--time", "2", name)
    return statistics.median(times)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-image", default="localhost/modelport-base:bookworm")
    parser.add_argument("--prefix", default="localhost/modelport-bench")
    args = parser.parse_args()
    if args.base_image.startswith("localhost/modelport-base"):
        subprocess.run([str(ROOT / "scripts" / "base_image.sh"), args.base_image], check=True)
    with tempfile.TemporaryDirectory(prefix="modelport-images-") as scratch:
        root = Path(scratch)
        repo = build_demo(root / "models", with_torch=False, log=lambda _: None)
        models = root / "models"
        base = ["--base-image", args.base_image, "--force"]
        onnx = [str(models / "digits"), str(models / "mlp-large")]
        rows = []
        empty_cache = {"XDG_CACHE_HOME": str(root / "cache")}  # pip's and modelport's
        cold_lock = cli(
            "build", *onnx, "--tag", "x:1", "--context", str(root / "ctx"), "--context-only",
            *base, env=empty_cache,
        )  # fmt: skip
        rows.append(("lock, cold (resolve + fetch wheels)", f"{cold_lock:.1f} s"))
        tags = {name: f"{args.prefix}:{name}" for name in ("onnx", "code", "digits")}
        cold = cli("build", *onnx, "--tag", tags["onnx"], "--no-cache", *base)
        rows.append(("build onnx, cold (--no-cache)", f"{cold:.1f} s"))
        build_sklearn_digits(repo)  # digits:2, a new version of one model
        rebuild = cli("build", str(models / "digits:2"), str(models / "mlp-large"), "--tag",
                      tags["onnx"] + "b", *base)  # fmt: skip
        rows.append(("rebuild after a new digits version", f"{rebuild:.1f} s"))
        rows.append(("rebuild / cold", f"{rebuild / cold:.0%}"))
        cli("build", *onnx, str(models / "digits-code"), "--tag", tags["code"], *base)
        cli("build", str(models / "digits:1"), "--tag", tags["digits"], *base)
        rows.append(("base image", f"{size_mb(args.base_image):.0f} MB"))
        for name in ("digits", "onnx", "code"):
            rows.append((f"image size, {name}", f"{size_mb(tags[name]):.0f} MB"))
        for name in ("digits", "onnx"):
            rows.append((f"start to ready, {name}", f"{start_to_ready(tags[name]):.2f} s"))
        rows.append(("load average (1 min) at the end", f"{os.getloadavg()[0]:.1f}"))
        for tag in (*tags.values(), tags["onnx"] + "b"):
            subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)
    width = max(len(label) for label, _ in rows)
    print(f"{'what':<{width}}  value\n{'-' * width}  -----")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
