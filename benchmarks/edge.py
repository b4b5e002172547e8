"""The model at the edge, measured in one run: the browser page and the mobile file.

    .venv/bin/python benchmarks/edge.py [--runs 200]

For the demo's digits (scikit-learn, 64 -> 10) and mlp-large (1024-2048-2048-1000, 25 MB)
served with ``modelport serve --web``, in the system's headless Chromium (a fresh context each,
so nothing is cached):
- page load to first prediction: from navigation to the first answer, the model downloaded,
  verified (sha256), compiled and measured on the device;
- local p50: predictions of one row on the page with onnxruntime-web's WASM build (one thread);
- service p50: the same predictions sent by the page to /v2/models/NAME/infer (its fallback);
- the bundle's size (``export web``), and the ``.ort`` file's size and parity (``export mobile``).
Browser timers are coarsened (0.1 ms steps): read the small numbers as such.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import modelport
from modelport.demo import build_mlp_large, build_sklearn_digits
from modelport.export.mobile import export_mobile
from modelport.export.web import export_web
from modelport.testing import run_server

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LOOP = """async ([runs, row]) => {
    const model = window.modelportPage.model, times = [], where = new Set();
    for (let i = 0; i < runs; i += 1) {
        const started = performance.now();
        where.add((await model.predict({ input: [row] })).where);
        times.push(performance.now() - started);
    }
    times.sort((a, b) => a - b);
    return { p50: times[Math.floor(runs / 2)], p90: times[Math.floor(runs * 0.9)], where: [...where] };
}"""  # noqa: E501


def page_numbers(browser: Any, url: str, width: int, runs: int) -> dict[str, Any]:
    row = [0.5] * width
    context = browser.new_context()
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(
            "window.modelportPage && window.modelportPage.ready", timeout=120_000
        )
        page.evaluate(
            "async (row) => await window.modelportPage.model.predict({input: [row]})", row
        )
        first_ms = (time.perf_counter() - started) * 1000
        local = page.evaluate(LOOP, [runs, row])
        slow = context.new_page()  # the same model forced to the service: a tiny budget
        slow.goto(url + "?budget_ms=0.000001")
        slow.wait_for_function(
            "window.modelportPage && window.modelportPage.ready", timeout=120_000
        )
        service = slow.evaluate(LOOP, [runs, row])
    finally:
        context.close()
    if local["where"] != ["local"] or service["where"] != ["service"]:
        raise RuntimeError(f"answered by {local['where']} and {service['where']}")
    return {"first_ms": first_ms, "local": local, "service": service}


def size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        build_sklearn_digits(repo)
        build_mlp_large(repo)
        rows = []
        with run_server(repo.root, "--web", "--no-access-log") as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for name, width in (("digits", 64), ("mlp-large", 1024)):
                measured = page_numbers(browser, f"{server.url}/web/{name}/", width, args.runs)
                bundle = export_web(repo, name, Path(tmp) / f"{name}-web")
                total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
                model_size = (bundle / "model.onnx").stat().st_size
                mobile = export_mobile(repo, name, Path(tmp) / f"{name}-mobile")
                rows.append((name, measured, total, model_size, mobile))
            browser.close()
    print(f"one run, {args.runs} predictions of one row each; Chromium {CHROMIUM}, WASM, 1 thread")
    head = (f"{'model':<10} {'load->1st':>10} {'local p50':>10} {'local p90':>10} "
            f"{'service p50':>12} {'service p90':>12} {'bundle':>9} {'model':>9} "
            f"{'.ort':>9} {'.ort parity':>12}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, m, total, model_size, mobile in rows:
        print(
            f"{name:<10} {m['first_ms']:>8.0f}ms {m['local']['p50']:>8.2f}ms "
            f"{m['local']['p90']:>8.2f}ms {m['service']['p50']:>10.2f}ms "
            f"{m['service']['p90']:>10.2f}ms {size(total):>9} {size(model_size):>9} "
            f"{size(mobile.ort_bytes):>9} {mobile.max_abs_diff:>12.1e}"
        )


if __name__ == "__main__":
    main()
