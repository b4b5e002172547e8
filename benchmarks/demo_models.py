"""In-process latency and throughput of the demo models, next to raw onnxruntime.

    .venv/bin/python benchmarks/demo_models.py                  # builds the demo repo in a temp dir
    .venv/bin/python benchmarks/demo_models.py --repo demo-models --threads 2 --seconds 3

For each model and batch size, single ``Model.predict`` calls run back to back for
``--seconds`` after a warm-up: p50 and p99 are per call, samples/s is rows over wall time.
ONNX models are also run through a bare ``onnxruntime.InferenceSession.run`` on the same file,
with the same threads and providers, so "modelport/raw throughput" shows what validation costs.
Inputs are the model's sample rows, tiled to the batch size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import modelport
from modelport.datafiles import read_inputs
from modelport.demo import SAMPLES, build_demo
from modelport.optimize.scoring import Timing, tile, time_calls
from modelport.repository import ONNX_FILE

BATCHES = (1, 32)
COLUMNS = (
    ("model", 12),
    ("batch", 5),
    ("runner", 11),
    ("calls", 6),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("samples/s", 10),
    ("modelport/raw throughput", 24),
)


@contextmanager
def demo_repository(path: str | None) -> Iterator[modelport.Repository]:
    if path is not None:
        yield modelport.Repository.open(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building the demo repository in {tmp} ...", file=sys.stderr)
        yield build_demo(tmp, log=lambda line: print(f"  {line}", file=sys.stderr))


def raw_session(file: Path, threads: int, providers: list[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(file), options, providers=providers)


def print_row(*cells: str) -> None:
    widths = [w for _, w in COLUMNS]
    first, *rest = zip(cells, widths, strict=True)
    line = "  ".join([first[0].ljust(first[1]), *(c.rjust(w) for c, w in rest)])
    print(line.rstrip(), flush=True)


def print_result(name: str, batch: int, runner: str, result: Timing, ratio: str) -> None:
    print_row(
        name,
        str(batch),
        runner,
        str(result.calls),
        f"{result.p50_ms:.3f}",
        f"{result.p99_ms:.3f}",
        f"{result.rows_per_s:,.0f}",
        ratio,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", help="an existing model repository (default: build the demo)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (default 1)")
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1; 0: auto)"
    )
    args = parser.parse_args(argv)
    runtime = modelport.RuntimeConfig(intra_op_threads=args.threads)
    import onnxruntime as ort

    with demo_repository(args.repo) as repo:
        print(
            f"onnxruntime {ort.__version__}, intra-op threads: {args.threads or 'auto'}, "
            f"{args.seconds:g} s per measurement after warm-up"
        )
        print_row(*(title for title, _ in COLUMNS))
        for name in repo.names():
            options = modelport.LoadOptions(runtime, trust_code=True)  # digits-code: ours
            with modelport.load(repo.root / name, options=options) as model:
                sample = read_inputs(repo.root / SAMPLES / f"{name}.json", model.signature)
                # Validated once here so that both runners get arrays of the model's dtypes.
                arrays = modelport.validate_inputs(model.signature, sample)
                raw = None
                if model.metadata["runtime"] == "onnx":
                    onnx_file = repo.version_dir(name) / ONNX_FILE
                    raw = raw_session(onnx_file, args.threads, model.metadata["providers"])
                for batch in BATCHES:
                    inputs = tile(arrays, batch)
                    ours = time_calls(partial(model.predict, inputs), batch, args.seconds)
                    if raw is None:
                        print_result(name, batch, "modelport", ours, "-")
                        continue
                    theirs = time_calls(partial(raw.run, None, inputs), batch, args.seconds)
                    ratio = f"{ours.rows_per_s / theirs.rows_per_s:.2f}"
                    print_result(name, batch, "modelport", ours, ratio)
                    print_result(name, batch, "onnxruntime", theirs, "")


if __name__ == "__main__":
    main()
