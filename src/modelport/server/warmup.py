"""Warm-up: a version runs before it takes traffic, so that ready means fast, not just loaded.

    warm_up("churn:3", model, runner)   # in a thread: WarmupError for one that must not serve

Inputs are the sample rows the import kept in the manifest (``metadata.sample``), or zeros of
the signature's shape when there are none. They run a few times on every inference thread of
the version, at batch size 1 and at the batching's largest size: onnxruntime's first calls
allocate and plan before a request waits for them (whether a model may run inline is still
judged on real requests: a code model fast on its sample may be slow on others). The
outputs must be the signature's, one row per input row: a model that raises or answers out of
its signature here would fail its first requests.
"""

from __future__ import annotations

import time

import numpy as np

from modelport.errors import ModelportError, WarmupError
from modelport.model import Model
from modelport.server.runner import Runner
from modelport.signature import validate_inputs

CALLS = 3  # per inference thread and batch size
MIN_CALLS = 8  # at batch size 1, the size of most requests


def sample_inputs(model: Model) -> dict[str, np.ndarray]:
    """The manifest's sample rows, or one row of zeros (empty text), checked like a request."""
    stored = model.metadata.get("sample") or {}
    if stored:
        try:
            return validate_inputs(model.signature, {
                name: np.asarray(item["data"], dtype=object if _text(model, name) else None)
                .reshape(item["shape"])
                for name, item in stored.items()
            }, model.limits)  # fmt: skip
        except (ModelportError, ValueError, TypeError, KeyError):
            pass  # a sample that no longer fits (edited by hand, say): zeros, then
    arrays = {
        spec.name: np.full(
            [1] + [max(d, 1) for d in spec.shape[1:]],
            "" if spec.dtype == "string" else 0,
            dtype=object if spec.dtype == "string" else spec.dtype,
        )
        for spec in model.signature.inputs
    }
    return validate_inputs(model.signature, arrays, model.limits)


def _text(model: Model, name: str) -> bool:
    return any(s.name == name and s.dtype == "string" for s in model.signature.inputs)


def _rows(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``inputs`` cut or repeated to ``size`` rows."""
    out = {}
    for name, array in inputs.items():
        repeats = -(-size // max(len(array), 1))
        out[name] = np.concatenate([array] * repeats)[:size] if len(array) else array
    return out


def warm_up(where: str, model: Model, runner: Runner) -> float:
    """Run the version on its sample inputs; the seconds it took. Raises WarmupError."""
    started = time.monotonic()
    try:
        inputs = sample_inputs(model)
    except ModelportError as exc:
        raise WarmupError(f"{where}: zeros of its signature do not fit it: {exc}") from None
    signature = model.signature
    fixed_rows = not all(s.shape and s.shape[0] == -1 for s in signature.inputs)
    sizes = (
        [len(next(iter(inputs.values())))]
        if fixed_rows
        else sorted({1, runner.batching.max_batch_size if runner.batching else 1})
    )
    for size in sizes:
        batch = inputs if fixed_rows else _rows(inputs, size)
        calls = max(CALLS * runner.threads, MIN_CALLS if size == sizes[0] else 0)
        try:
            answers = runner.warm_up(batch, calls)
        except ModelportError as exc:
            raise WarmupError(f"{where} failed its warm-up at batch size {size}: {exc}") from None
        for outputs in answers:
            missing = [n for n in signature.output_names if n not in outputs]
            if missing:
                raise WarmupError(f"{where} warm-up: output {missing[0]!r} is missing")
            for spec in signature.outputs:
                value = np.asarray(outputs[spec.name])
                if spec.shape and spec.shape[0] == -1 and not fixed_rows and len(value) != size:
                    raise WarmupError(
                        f"{where} warm-up: output {spec.name!r} has {len(value)} rows for "
                        f"{size} input rows"
                    )
    return time.monotonic() - started
