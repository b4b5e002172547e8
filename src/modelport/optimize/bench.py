"""In-process latency and throughput: versions side by side, by batch size, threads and
execution provider.

    result = bench(repo, ["mlp-large:1", "mlp-large:2"], batch_sizes=(1, 32), threads=(1, 2))
    print(result.table())
    result.write_html(Path("bench.html"))    # latency vs batch size, accuracy vs speed

Providers are asked for by short name (``cpu``, ``cuda``, ``tensorrt``); by default every one
this onnxruntime build has. One that is not installed is skipped with a note naming the
package; one that is installed but cannot start (no GPU, no driver) makes onnxruntime fall back
to CPU, which is detected from the session and noted, not reported as that provider's numbers.
Rows come from ``eval_rows`` (which also gives each version's accuracy with ``labels``, or its
agreement with the first version) or are synthetic (standard normal floats, zero integers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.config import LoadOptions, RuntimeConfig
from modelport.errors import OptimizationError
from modelport.optimize.benchreport import BenchResult, Point
from modelport.optimize.remote import Remote, drive
from modelport.optimize.rows import Rows, read_rows
from modelport.optimize.scoring import measure, task_of, tile
from modelport.repository import Repository, load_version, parse_ref
from modelport.signature import Signature

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_PACKAGES = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu with TensorRT"}


def choose_providers(
    requested: Sequence[str] | None, available: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The short names to measure, and a note for each one asked for but not installed.

    ``requested=None`` means every provider of ours that ``available`` (onnxruntime's
    ``get_available_providers()``) lists. OptimizationError for an unknown name, or when
    nothing is left to measure.
    """
    names = list(PROVIDERS) if requested is None else [r.strip().lower() for r in requested]
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise OptimizationError(
            f"unknown execution provider {unknown[0]!r}; expected {', '.join(PROVIDERS)}"
        )
    chosen = [n for n in names if PROVIDERS[n] in available]
    missing = [
        f"{n}: {PROVIDERS[n]} is not in this onnxruntime build (install {_PACKAGES[n]})"
        for n in names
        if n not in chosen
    ]
    if not chosen:
        raise OptimizationError(
            f"no execution provider asked for is installed: {'; '.join(missing)}. This "
            f"onnxruntime has {', '.join(available)}"
        )
    return chosen, [f"{m}; skipped" for m in missing] if requested is not None else []


def runtime_for(provider: str, threads: int) -> RuntimeConfig:
    """CPU stays last in line, as onnxruntime wants it for what the others do not run."""
    asked = PROVIDERS[provider]
    chain = (asked,) if asked == PROVIDERS["cpu"] else (asked, PROVIDERS["cpu"])
    return RuntimeConfig(providers=chain, intra_op_threads=threads)


def fell_back(provider: str, session_providers: Sequence[str] | None) -> bool:
    """True when onnxruntime did not start the provider asked for (it runs on the next one)."""
    return not session_providers or session_providers[0] != PROVIDERS[provider]


def synthetic_rows(signature: Signature, count: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of the right shape: standard normal floats, zeros for integers, text 'a'."""
    rng = np.random.default_rng(seed)
    rows = {}
    for spec in signature.inputs:
        shape = [count, *(max(d, 1) for d in spec.shape[1:])]
        if spec.dtype.startswith("float"):
            rows[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "string":
            rows[spec.name] = np.full(shape, "a", dtype=object)
        else:
            rows[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return rows


def bench(
    repo: Repository,
    refs: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int] = (1,),
    providers: Sequence[str] | None = None,
    seconds: float = 1.0,
    eval_rows: Path | None = None,
    labels: str | None = None,
    trust_code: bool = False,
    remote: Remote | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> BenchResult:
    """Measure every version in ``refs`` at each provider, thread count and batch size; with
    ``remote``, each also through that service at each protocol and concurrency."""
    import onnxruntime as ort

    if not refs:
        raise OptimizationError("name at least one model to benchmark (NAME or NAME:VERSION)")
    if any(b < 1 for b in batch_sizes) or any(t < 1 for t in threads):
        raise OptimizationError("batch sizes and thread counts must be >= 1")
    chosen, notes = choose_providers(providers, ort.get_available_providers())
    result = BenchResult(notes=notes)
    folders = []
    for ref in refs:
        name, version = parse_ref(ref)
        folder = repo.version_dir(name, version)
        folders.append((f"{name}:{folder.name}", folder))
    if remote is not None:  # the service first: a wrong URL fails before minutes of work
        for label, _ in folders:
            _sweep(result, label, repo.manifest(label).signature, remote, batch_sizes,
                   eval_rows, log)  # fmt: skip
    reference: np.ndarray | None = None
    for label, folder in folders:
        for provider in chosen:
            for count in threads:
                options = LoadOptions(runtime=runtime_for(provider, count), trust_code=trust_code)
                with load_version(folder, options) as model:
                    if model.metadata.get("runtime") != "onnx" and provider != "cpu":
                        continue  # code models run where their code says
                    if model.metadata.get("runtime") == "onnx" and fell_back(
                        provider, model.metadata.get("providers")
                    ):
                        result.notes.append(
                            f"{label}: {PROVIDERS[provider]} did not start (onnxruntime fell "
                            f"back to {model.metadata['providers'][0]}); not measured there"
                        )
                        continue
                    rows = _rows(model.signature, eval_rows, labels)
                    if eval_rows is not None:
                        reference = _score(result, label, model, rows, reference)
                    for batch in batch_sizes:
                        t = measure(model, rows, batch, seconds)
                        result.points.append(Point(label, provider, count, batch, t.calls,
                                                   t.p50_ms, t.p99_ms, t.rows_per_s))  # fmt: skip
                        log(f"{label} {provider} threads={count} batch={batch}: p50 "
                            f"{t.p50_ms:.3f} ms, {t.rows_per_s:,.0f} rows/s")  # fmt: skip
    return result


def _sweep(
    result: BenchResult,
    label: str,
    signature: Signature,
    remote: Remote,
    batch_sizes: Sequence[int],
    eval_rows: Path | None,
    log: Callable[[str], Any],
) -> None:
    name, _, version = label.partition(":")
    rows = _rows(signature, eval_rows, None)
    for protocol in remote.protocols:
        for batch in batch_sizes:
            for concurrency in remote.concurrency:
                point = drive(remote.url_for(protocol), name, int(version),
                              tile(rows.inputs, batch), protocol, concurrency, remote.seconds,
                              remote.token)  # fmt: skip
                result.remote.append(point)
                log(f"{label} {protocol} concurrency={concurrency} batch={batch}: p50 "
                    f"{point.p50_ms:.3f} ms, {point.rows_per_s:,.0f} rows/s")  # fmt: skip


def _rows(signature: Signature, path: Path | None, labels: str | None) -> Rows:
    if path is not None:
        return read_rows(path, signature, labels, 1, "benchmark")
    return Rows(Path("synthetic"), synthetic_rows(signature), None, "")


def _score(
    result: BenchResult, label: str, model: Any, rows: Rows, reference: np.ndarray | None
) -> np.ndarray | None:
    """Each version's accuracy (labels) or agreement with the first version, once."""
    if label in result.scores:
        return reference
    task = task_of(model.signature)
    predicted = task.predict(model, rows)
    if rows.labels is not None:
        result.metric = task.metric
        result.scores[label] = task.score(predicted, rows.labels)
        return reference
    result.metric = "agreement with the first"
    reference = predicted if reference is None else reference
    result.scores[label] = task.score(predicted, reference)
    return reference
