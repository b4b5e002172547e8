"""The child process of ``modelport bench`` (device.py): it waits until it has been put in its
control groups, then times the model and prints one JSON object."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _limits() -> dict[str, str]:
    """The limits this process runs under, read back from its own control groups."""
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for controller, files in (("cpu", ("cpu.max", "cpu.cfs_quota_us")),
                                  ("memory", ("memory.max", "memory.limit_in_bytes"))):  # fmt: skip
            if names and controller not in names.split(","):
                continue
            root = Path("/sys/fs/cgroup") / (controller if names else "")
            for candidate in (root, Path("/sys/fs/cgroup/unified")) if not names else (root,):
                for file in files:
                    limit = candidate / path.lstrip("/") / file
                    if limit.is_file() and file not in found:
                        found[file] = limit.read_text().strip()
    return found


def main() -> None:
    model_file, signature_json, runs_text, batch_text, threads_text = sys.argv[1:6]
    sys.stdin.readline()  # "go": the parent has put this process in its control groups
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads_text)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    batch, rng = int(batch_text), np.random.default_rng(0)
    feeds = {}
    for spec in json.loads(signature_json)["inputs"]:
        shape = tuple(batch if d == -1 else d for d in spec["shape"])
        dtype = spec["dtype"]
        if dtype.startswith("float"):
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "string":
            feeds[spec["name"]] = np.full(shape, "a", dtype=object)
        else:
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
    for _ in range(5):
        session.run(None, feeds)
    times = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(int(runs_text)):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1000)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    print(json.dumps({
        "runs": len(times), "batch": batch, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
        "cpu_s": cpu, "wall_s": wall, "threads": int(threads_text),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "limits": _limits(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
