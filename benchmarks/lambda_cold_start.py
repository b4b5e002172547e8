"""Lambda cold start and warm latency of the demo models, through the real runtime client.

    .venv/bin/python benchmarks/lambda_cold_start.py [--starts 5] [--calls 300]

For ``digits`` and ``mlp-large`` (the demo repository, built into a temporary folder), each
model alone: ``python -m awslambdaric modelport.serverless.handler.handler`` is started
against a local Lambda Runtime API (tests/lambda_runtime.py), as the zip package runs on
Lambda's managed runtime.

- init: from the process's start to its first ``GET /runtime/invocation/next``, which is what
  Lambda reports as "Init Duration" (Python, awslambdaric, modelport and onnxruntime imported,
  the model loaded and warmed up); median and worst of ``--starts`` fresh processes.
- warm p50/p99: an API Gateway HTTP API (payload 2.0) event with the model's sample request,
  ``Cache-Control: no-cache`` (every call predicts), queued to the Runtime API until its
  response is posted back: the handler, the runtime client and the Runtime API's HTTP.
- handler: the same event through ``LambdaApp`` in process (no runtime client), the cost of
  driving the service's ASGI app per event.

Lambda's own sandbox start (and the image or zip download) comes on top of init and is not
measured here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lambda_events import http_api  # noqa: E402
from lambda_runtime import LambdaRuntime  # noqa: E402
from modelport.demo import build_mlp_large, build_sklearn_digits  # noqa: E402
from modelport.repository import Repository  # noqa: E402

HANDLER = "modelport.serverless.handler.handler"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def event_for(repo: Path, name: str) -> dict[str, object]:
    body = (repo / "_samples" / f"{name}.v2.json").read_text()
    return http_api("POST", f"/v2/models/{name}/infer", body, {"cache-control": "no-cache"})


def through_runtime(
    repo: Path, name: str, starts: int, calls: int
) -> tuple[list[float], list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["MODELPORT_REPOSITORY"] = str(repo / name)  # one model folder: only it loads
    event = event_for(repo, name)
    inits: list[float] = []
    warm: list[float] = []
    for start in range(starts):
        with LambdaRuntime() as runtime:
            env["AWS_LAMBDA_RUNTIME_API"] = runtime.address
            began = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-m", "awslambdaric", HANDLER], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                reply = runtime.invoke(event, timeout_s=120)
                assert reply["statusCode"] == 200, reply
                assert runtime.first_next is not None
                inits.append(runtime.first_next - began)
                if start == 0:
                    for _ in range(20):
                        runtime.invoke(event)
                    for _ in range(calls):
                        sent = time.perf_counter()
                        runtime.invoke(event)
                        warm.append(time.perf_counter() - sent)
            finally:
                process.terminate()
                process.wait(10)
    return inits, warm


def in_process(repo: Path, name: str, calls: int) -> list[float]:
    from modelport.serverless.app import LambdaApp, lambda_config

    app = LambdaApp.start(repo / name, lambda_config({}))
    event = event_for(repo, name)
    for _ in range(20):
        app(event)
    times = []
    for _ in range(calls):
        sent = time.perf_counter()
        assert app(event)["statusCode"] == 200
        times.append(time.perf_counter() - sent)
    app.loop.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts per model")
    parser.add_argument("--calls", type=int, default=300, help="warm calls per model")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; init target for digits: "
          "<= 1.5 s")  # fmt: skip
    header = f"{'model':<10} {'init p50':>9} {'init max':>9} {'warm p50':>9} {'warm p99':>9}"
    print(header + f" {'handler p50':>12}")
    with tempfile.TemporaryDirectory(prefix="modelport-lambda-bench-") as scratch:
        repo = Repository.init(Path(scratch) / "models")
        build_sklearn_digits(repo)
        build_mlp_large(repo)
        for name in ("digits", "mlp-large"):
            inits, warm = through_runtime(repo.root, name, args.starts, args.calls)
            handler = in_process(repo.root, name, args.calls)
            print(
                f"{name:<10} {statistics.median(inits):>8.2f}s {max(inits):>8.2f}s "
                f"{percentile(warm, 50) * 1e3:>7.2f}ms {percentile(warm, 99) * 1e3:>7.2f}ms "
                f"{percentile(handler, 50) * 1e3:>10.2f}ms"
            )
    print("init: from the process's start to its first /next call (Lambda's Init Duration)")


if __name__ == "__main__":
    main()
