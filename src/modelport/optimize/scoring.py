"""What a model's outputs mean, how close another model comes, and what it costs to run.

    task = task_of(model.signature)          # classes from "label" or argmax of scores; or values
    classes = task.predict(model, rows)      # one prediction per row
    task.score(classes, rows.labels)         # accuracy (classes) or R² (values)
    measure(model, rows, batch=32).p50_ms    # median milliseconds per call, measured
    Judge(task, rows, parent, Measuring()).candidate("int8", model, path)   # all of it

A classifier is a model with an integer or text output of one value per row (its label), or a
float output of shape ``[-1, k]`` with k > 1 (scores, probabilities or logits: the class is
the argmax). Any other model is a regressor, scored by R² on its first output. Agreement with
a parent model is the same score with the parent's predictions in place of the labels.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.config import LoadOptions, RuntimeConfig
from modelport.errors import OptimizationError
from modelport.model import Model
from modelport.optimize.report import Candidate
from modelport.optimize.rows import Rows
from modelport.signature import Signature, TensorSpec

EVAL_BATCH = 256


@dataclass(frozen=True)
class Task:
    """Which output to score and how: ``classifier`` (exact classes) or ``regressor``."""

    kind: str
    output: str
    argmax: bool  # the class is the argmax of a score vector, not the output itself

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "classifier" else "r2"

    def predict(self, model: Model, rows: Rows) -> np.ndarray:
        """The model's prediction for every row, computed in batches."""
        parts = [model.predict(batch)[self.output] for batch in rows.batches(EVAL_BATCH)]
        values = np.concatenate(parts)
        if self.kind == "classifier":
            return values.argmax(axis=1) if self.argmax else values.reshape(len(values))
        return values.reshape(len(values), -1).astype(np.float64)

    def score(self, predicted: np.ndarray, reference: np.ndarray) -> float:
        """Accuracy for classes (1.0: all equal), R² for values (1.0: identical)."""
        if self.kind == "classifier":
            expected: np.ndarray = np.asarray(reference).reshape(len(predicted))
            if expected.dtype.kind in "fc":  # labels from CSV arrive as floats
                expected = expected.round().astype(np.int64)
            if predicted.dtype.kind in "iu" and expected.dtype.kind not in "iu":
                raise OptimizationError(
                    f"labels are {expected.dtype.name} but the model's {self.output!r} gives "
                    "class numbers: give the labels as class numbers"
                )
            return float(np.mean(predicted == expected))
        values: np.ndarray = np.asarray(reference, dtype=np.float64).reshape(predicted.shape)
        spread = float(np.sum((values - values.mean(axis=0)) ** 2))
        error = float(np.sum((values - predicted) ** 2))
        return 1.0 - error / spread if spread > 0 else float(error == 0)


def task_of(signature: Signature) -> Task:
    """Classifier or regressor, from the signature alone (see the module docstring)."""
    for spec in signature.outputs:
        if spec.dtype != "bool" and _is_label(spec):
            return Task("classifier", spec.name, argmax=False)
    scores = scores_output(signature)
    if scores is not None:
        return Task("classifier", scores, argmax=True)
    floats = [s for s in signature.outputs if s.dtype.startswith("float")]
    if not floats:
        raise OptimizationError(
            f"cannot tell what the model predicts: no output holds classes (an integer per "
            f"row) or numbers (outputs: {', '.join(signature.output_names)})"
        )
    return Task("regressor", floats[0].name, argmax=False)


def scores_output(signature: Signature) -> str | None:
    """The first float output of shape ``[-1, k]``, k > 1: class scores, probabilities or
    logits; None if there is none."""
    for spec in signature.outputs:
        if spec.dtype.startswith("float") and len(spec.shape) == 2 and spec.shape[1] > 1:
            return spec.name
    return None


def _is_label(spec: TensorSpec) -> bool:
    one_per_row = len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1)
    return one_per_row and (spec.dtype == "string" or spec.dtype[:3] in ("int", "uin"))


def tile(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``batch`` rows of ``inputs``, repeating them when there are fewer."""
    count = len(next(iter(inputs.values())))
    index = np.arange(batch) % count
    return {name: array[index] for name, array in inputs.items()}


@dataclass(frozen=True)
class Timing:
    calls: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float


def measure(model: Model, rows: Rows, batch: int, seconds: float = 0.5) -> Timing:
    """Back-to-back calls on ``batch`` real rows for about ``seconds``, after a warm-up.

    Calls go to the runtime directly: what is measured is the model, not input validation.
    """
    inputs = tile(rows.inputs, batch)
    return time_calls(functools.partial(model.runtime.predict, inputs), batch, seconds)


def time_calls(call: Callable[[], object], batch: int, seconds: float) -> Timing:
    """``call`` (on ``batch`` rows) back to back for about ``seconds``, after a warm-up."""
    warm_until = time.perf_counter() + min(0.1, seconds / 5)
    while True:
        call()
        if time.perf_counter() >= warm_until:
            break
    durations: list[float] = []
    start = now = time.perf_counter()
    while now - start < seconds or len(durations) < 5:
        call()
        after = time.perf_counter()
        durations.append(after - now)
        now = after
    ms = np.array(durations) * 1000
    return Timing(
        len(ms),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        batch * len(ms) / (now - start),
    )


@dataclass(frozen=True)
class Measuring:
    """How candidates are timed: batch sizes, seconds per measurement, onnxruntime threads
    (1 by default: per-core cost, the same whatever else the machine runs) and providers."""

    batch_sizes: tuple[int, ...] = (1, 32)
    seconds: float = 0.5
    threads: int = 1
    providers: tuple[str, ...] | None = ("CPUExecutionProvider",)

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            runtime=RuntimeConfig(providers=self.providers, intra_op_threads=self.threads)
        )


class Judge:
    """Measures every candidate the same way against the parent's predictions."""

    def __init__(self, task: Task, rows: Rows, parent: Model, measuring: Measuring) -> None:
        self.task, self.rows, self.measuring = task, rows, measuring
        self.reference = task.predict(parent, rows)
        self.parent_score = (
            task.score(self.reference, rows.labels) if rows.labels is not None else 1.0
        )
        self.metric = task.metric if rows.labels is not None else "agreement"
        if task.kind == "regressor" and rows.labels is None:
            self.metric = "r2 vs parent"

    def candidate(self, label: str, model: Model, path: Path) -> Candidate:
        predicted = self.task.predict(model, self.rows)
        agreement = self.task.score(predicted, self.reference)
        score = (
            self.task.score(predicted, self.rows.labels)
            if self.rows.labels is not None
            else agreement
        )
        timings = {
            b: measure(model, self.rows, b, self.measuring.seconds).p50_ms
            for b in self.measuring.batch_sizes
        }
        return Candidate(
            label, path.stat().st_size, timings, score, agreement, self.parent_score - score
        )
