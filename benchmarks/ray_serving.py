"""modelport on Ray Serve next to a hand-written Ray Serve deployment of the same model.

    .venv/bin/python benchmarks/ray_serving.py                 # mlp-large, 8 s a point
    .venv/bin/python benchmarks/ray_serving.py --seconds 15 --model digits

One local Ray cluster (loopback), Serve's HTTP proxy on one port, three setups deployed in
turn: the hand-written deployment (written the way Ray's docs write one: ``@serve.batch``, an
onnxruntime session, JSON in and out through a Starlette request), then modelport's
``serve --ray`` applications with 1 and with 2 replicas, and last a deployment that does
nothing (the proxy's own ceiling on this machine). Every replica reserves one Ray CPU and
runs one onnxruntime thread; batches of up to 32 rows, no delay window, for both. ``wrk``
POSTs one sample per request as JSON (``{"data": [row]}`` to the hand-written one, the same row
as Open Inference Protocol JSON to modelport), for each concurrency. The proxy, the replicas
and wrk share the machine's cores: on a small machine they compete, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serving import Result, post_script, run_wrk  # noqa: E402  (wrk and its parsing)

from modelport.config import ServerConfig  # noqa: E402
from modelport.rayserve import RayConfig, Scaling, plan_apps  # noqa: E402
from modelport.rayserve.cluster import connect, deploy, undeploy  # noqa: E402
from modelport.repository import Repository  # noqa: E402
from modelport.testing import free_port  # noqa: E402


def handwritten(model_path: str) -> Any:
    """The deployment a Ray Serve user writes from the docs (batching with @serve.batch)."""
    import onnxruntime as ort
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 1})
    class OnnxModel:
        def __init__(self, path: str) -> None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(path, options)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def predict(self, rows: list[np.ndarray]) -> list[list[float]]:
            outputs = self.session.run(None, {"input": np.stack(rows)})[0]
            return [row.tolist() for row in outputs]

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            row = np.asarray(body["data"], dtype=np.float32)[0]
            return {"logits": [await self.predict(row)]}

    return OnnxModel.bind(model_path)


def proxy_alone() -> Any:
    """A deployment that does nothing: what Serve's proxy and one hop cost, the ceiling."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 1})
    class Nothing:
        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"logits": [[0.0]]}

    return Nothing.bind()


def measure(url: str, script: Path, args: argparse.Namespace) -> dict[int, Result]:
    run_wrk(url, script, 16, 2)  # warm-up: connections, batches, the proxy's routes
    return {c: run_wrk(url, script, c, args.seconds) for c in args.connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp-large", choices=["mlp-large", "digits"])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-serving-"))
    repo = Repository.init(work / "models")
    from modelport.demo import build_mlp_large, build_sklearn_digits

    (build_mlp_large if args.model == "mlp-large" else build_sklearn_digits)(repo)
    row = json.loads((repo.root / "_samples" / f"{args.model}.json").read_text())["input"][0]
    x = np.asarray([row], np.float32)
    oip = {"inputs": [{"name": "input", "shape": [1, x.shape[1]], "datatype": "FP32",
                       "data": x.ravel().tolist()}]}  # fmt: skip
    ours_script = post_script(work, "oip", json.dumps(oip).encode())
    theirs_script = post_script(work, "plain", json.dumps({"data": x.tolist()}).encode())
    model_file = str(next((repo.root / args.model).glob("*/model.onnx")))

    port = free_port()
    config = ServerConfig(port=port, batching=None)
    started = connect(RayConfig(), [])
    from ray import serve

    rows: dict[str, dict[int, Result]] = {}
    try:
        deploy([], config)
        serve.run(handwritten(model_file), name="handwritten", route_prefix="/handwritten")
        url = f"http://127.0.0.1:{port}/handwritten"
        assert httpx.post(url, content=(work / "plain.json").read_bytes()).status_code == 200
        rows["hand-written @serve.batch, 1 replica"] = measure(url, theirs_script, args)
        serve.delete("handwritten")
        for replicas in (1, 2):
            apps = plan_apps(repo.root, config, Scaling(replicas=replicas))
            deploy(apps, config)
            url = f"http://127.0.0.1:{port}/v2/models/{args.model}/infer"
            assert httpx.post(url, json=oip).status_code == 200
            rows[f"modelport serve --ray, {replicas} replica(s)"] = measure(url, ours_script, args)
            undeploy(apps, started=False)
            time.sleep(1)
        serve.run(proxy_alone(), name="nothing", route_prefix="/nothing")
        url = f"http://127.0.0.1:{port}/nothing"
        rows["Serve's proxy to a deployment that does nothing"] = measure(url, theirs_script, args)
        serve.delete("nothing")
    finally:
        undeploy([], started)
    print_table(args, rows)


def print_table(args: argparse.Namespace, rows: dict[str, dict[int, Result]]) -> None:
    names = list(rows)
    base, one = rows[names[0]], rows[names[1]]
    print(f"\n{args.model}, one sample per request, {args.seconds} s per point (wrk)\n")
    print("| setup | c | req/s | p50 ms | p99 ms | vs hand-written | vs 1 replica | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for c, result in rows[name].items():
            vs_base = result.rps / base[c].rps
            vs_one = f"{result.rps / one[c].rps:.2f}x" if name != names[0] else "-"
            print(f"| {name} | {c} | {result.rps:,.0f} | {result.p50_ms:.1f} | "
                  f"{result.p99_ms:.1f} | {vs_base:.2f}x | {vs_one} | "
                  f"{result.errors or '-'} |")  # fmt: skip


if __name__ == "__main__":
    main()
