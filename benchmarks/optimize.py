"""fp32 vs int8 (dynamic, static) vs a distilled student, for mlp-large and digits-cnn.

    .venv/bin/python benchmarks/optimize.py                 # about 5 minutes on one core
    .venv/bin/python benchmarks/optimize.py --core 1 --seconds 1 --skip-mlp-student

Builds the two demo models in a temporary repository, makes each smaller variant with
modelport's own quantize and distill (budgets off: every result is imported and shown), then
measures every variant in one run on one core (the process is pinned to ``--core``;
onnxruntime runs one intra-op thread): size, p50 at batch 1 and 32 (the median of
``--rounds`` interleaved rounds, as the machine drifts), accuracy on labelled digits or
agreement with the fp32 model. Ratios are against fp32 (x4.0 = four times smaller or faster).

- digits-cnn: the demo's CNN (12 epochs, trained on all 1,797 digits); calibration on every
  7th digit, accuracy on the odd ones (seen in training: it measures what the variants lose,
  not how well the CNN generalizes); the student (mlp:128,64) learns from the even ones only,
  so its agreement is on digits it never saw.
- mlp-large: 1024-2048-2048-1000 with fixed random weights, standard normal rows;
  "accuracy" is agreement with fp32 on 1,000 fresh rows. Its student (mlp:1024) learns from
  ``--mlp-rows`` rows: a random function of 1,024 inputs is the hardest thing to imitate.

Targets (issue 18): int8 >= 3.5x smaller and >= 2x faster at batch 32 on mlp-large; accuracy
drop <= 1 point on digits; a student >= 5x faster than its teacher with >= 97% agreement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import modelport
from modelport.demo import _digits, build_mlp_large, build_torch_cnn
from modelport.optimize.distill import Training, distill
from modelport.optimize.quantize import quantize
from modelport.optimize.rows import read_rows
from modelport.optimize.scoring import Measuring, measure, task_of
from modelport.optimize.students import StudentSpec
from modelport.repository import ONNX_FILE

BATCHES = (1, 32)
QUIET = Measuring(seconds=0.05)  # the variants' own reports: the real timing happens below


def log(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def build(repo: modelport.Repository, folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Every variant imported into ``repo``; the eval rows (and labels) of each model."""
    import torch

    torch.set_num_threads(1)
    x, y = _digits()
    images = (x / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    np.save(folder / "digits-train.npy", images[::2])
    np.save(folder / "digits-calibration.npy", images[::7])
    np.savez(folder / "digits-eval.npz", input=images[1::2], y=y[1::2])
    rng = np.random.default_rng(1)
    np.save(folder / "mlp-calibration.npy", rng.standard_normal((256, 1024)).astype(np.float32))
    np.save(folder / "mlp-eval.npy", rng.standard_normal((1000, 1024)).astype(np.float32))
    np.save(folder / "mlp-train.npy",
            rng.standard_normal((args.mlp_rows, 1024)).astype(np.float32))  # fmt: skip

    log("building digits-cnn (12 epochs) and mlp-large ...")
    build_torch_cnn(repo)
    build_mlp_large(repo)
    for model, labels in (("digits-cnn", "y"), ("mlp-large", None)):
        stem = model.split("-")[0]
        for method in ("dynamic", "static"):
            log(f"{model}: int8 {method} ...")
            quantize(repo, model + ":1", folder / f"{stem}-eval.{'npz' if labels else 'npy'}",
                     calibration=folder / f"{stem}-calibration.npy", labels=labels,
                     method=method, max_drop=1.0, name=f"{model}-int8-{method}",
                     measuring=QUIET)  # fmt: skip
    log("digits-cnn: distilling into mlp:128,64 ...")
    distill(repo, "digits-cnn:1", folder / "digits-train.npy", StudentSpec((128, 64)),
            name="digits-cnn-student", measuring=QUIET)  # fmt: skip
    if not args.skip_mlp_student:
        log(f"mlp-large: distilling into mlp:1024 on {args.mlp_rows:,} rows ...")
        distill(repo, "mlp-large:1", folder / "mlp-train.npy", StudentSpec((1024,)),
                name="mlp-large-student", training=Training(max_epochs=args.mlp_epochs),
                measuring=QUIET)  # fmt: skip
    return {"digits-cnn": folder / "digits-eval.npz", "mlp-large": folder / "mlp-eval.npy"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--core", type=int, default=0, help="the one core to run on (default 0)")
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--mlp-rows", type=int, default=10000, help="mlp-large student's rows")
    parser.add_argument("--mlp-epochs", type=int, default=20, help="mlp-large student's epochs")
    parser.add_argument("--skip-mlp-student", action="store_true")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    import onnxruntime as ort
    import torch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        repo = modelport.Repository.init(Path(tmp) / "models")
        evals = build(repo, Path(tmp), args)
        print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, one core "
              f"(#{args.core}), 1 intra-op thread, p50 = median of {args.rounds} interleaved "
              f"rounds of {args.seconds:g} s")  # fmt: skip
        header = ["model", "variant", "size", "p50 b1 ms", "p50 b32 ms", "accuracy", "agreement"]
        rows = [header]
        for model, eval_path in evals.items():
            rows += compare(repo, model, eval_path, args)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"({time.perf_counter() - started:.0f} s in all)")


def compare(
    repo: modelport.Repository, model: str, eval_path: Path, args: argparse.Namespace
) -> list[list[str]]:
    variants = [v for v in ("", "-int8-dynamic", "-int8-static", "-student")
                if model + v in repo.names()]  # fmt: skip
    options = Measuring(threads=1).load_options()
    loaded = {v: repo.load(model + v, options=options) for v in variants}
    labels = "y" if eval_path.suffix == ".npz" else None
    rows = read_rows(eval_path, loaded[""].signature, labels)
    task = task_of(loaded[""].signature)
    reference = task.predict(loaded[""], rows)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):  # interleaved: drift hits every variant alike
        for v in variants:
            for batch in BATCHES:
                p50 = measure(loaded[v], rows, batch, args.seconds).p50_ms
                times.setdefault((v, batch), []).append(p50)
    p50 = {key: float(np.median(values)) for key, values in times.items()}
    table = []
    for v in variants:
        size = (repo.version_dir(model + v) / ONNX_FILE).stat().st_size
        base = (repo.version_dir(model) / ONNX_FILE).stat().st_size
        predicted = task.predict(loaded[v], rows)
        accuracy = f"{task.score(predicted, rows.labels):.4f}" if labels else "-"
        cells = [model, v.lstrip("-") or "fp32", f"{size / 2**20:.2f} MB (x{base / size:.1f})"]
        for batch in BATCHES:
            cells.append(f"{p50[(v, batch)]:.3f} (x{p50[('', batch)] / p50[(v, batch)]:.1f})")
        cells += [accuracy, f"{task.score(predicted, reference):.4f}"]
        table.append(cells)
    for m in loaded.values():
        m.close()
    return table


if __name__ == "__main__":
    main()
