"""One scoring run: read a table in chunks, score each at the model's best batch size, write
each chunk's predictions in one transaction.

Reading, scoring and writing overlap (a reader thread, the model's batches on as many threads
as its runtime can use at once, a writer thread), with at most two chunks queued between
stages so memory stays flat. Both engines (local, Ray) score a chunk with ``score_chunk``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from modelport.batch.codec import Layout
from modelport.batch.features import Plan, input_hashes, parse_mapping, plan_columns, prepare
from modelport.batch.sources import Chunk, Source
from modelport.batch.store import Store
from modelport.batch.tables import Reject, Row
from modelport.config import BatchConfig
from modelport.errors import BatchError, InvalidInputError, ModelportError, PredictionError
from modelport.model import Model, measure_costs

log = logging.getLogger("modelport.batch")
T = TypeVar("T")
_QUEUED_CHUNKS = 2
_LARGEST_BATCH = 1024
_CHUNK_BYTES = 32 * 2**20
_MAX_CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    model: str
    version: int
    rows: int  # read from the source
    scored: int
    skipped: int  # already scored by this version with the same features
    rejected: int
    seconds: float
    status: str  # succeeded, failed, interrupted

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def of(
        cls, run_id: str, model: str, version: int, counts: dict[str, int], started: float,
        status: str,
    ) -> RunSummary:  # fmt: skip
        """From an engine's running counts (rows, scored, skipped, rejected)."""
        return cls(
            run_id, model, version, counts["rows"], counts["scored"], counts["skipped"],
            counts["rejected"], time.monotonic() - started, status,
        )  # fmt: skip


def check_rejects(counts: dict[str, int], config: BatchConfig, store: Store, run_id: str) -> None:
    """Fail the run, quoting its first rejects, when too many rows were rejected."""
    if not counts["rows"] or counts["rejected"] / counts["rows"] <= config.max_reject_ratio:
        return
    first = "; ".join(
        f"{'row ' + str(r.row) if r.row is not None else 'key ' + repr(r.key)}: {r.reason}"
        for r in store.rejects(run_id)[:3]
    )
    raise BatchError(
        f"{counts['rejected']} of {counts['rows']} rows were rejected, over the limit of "
        f"{config.max_reject_ratio:.0%} (--max-reject-ratio). First: {first}. All of "
        f"them: modelport_rejects where run_id = '{run_id}'"
    )


@dataclass
class Scored:
    """One scored chunk, ready to write. Hashing the features and packing the outputs wait for
    ``rows()``, which the writer thread calls: the model's thread goes on to the next chunk."""

    keys: list[str]
    numbers: list[int | None]  # each scored row's number in the source
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    hashes: list[str] | None
    layout: Layout
    rejects: list[Reject]
    skipped: int
    read: int  # rows of the chunk

    def rows(self) -> list[Row]:
        if not self.keys:
            return []
        hashes = self.hashes if self.hashes is not None else input_hashes(self.inputs)
        blobs = self.layout.encode(self.outputs)
        return list(map(Row, self.keys, blobs, hashes, self.numbers))

    def write(self, store: Store, run_id: str, model: str, version: int) -> int:
        """Store the chunk; returns how many rows turned out to repeat an earlier key."""
        return store.write_chunk(run_id, model, version, self.rows(), self.rejects, self.skipped)


@dataclass
class Scorer:
    """What scoring a chunk needs; built once per run (and once per Ray actor)."""

    model: Model
    name: str
    version: int
    plan: Plan
    layout: Layout
    batch_size: int
    chunk_rows: int
    config: BatchConfig
    skip_scored: bool  # False when the store holds nothing for this version: no lookups
    threads: int = 1  # batches scored at once (the model's runtime says how many pay)

    def score(self, chunk: Chunk, store: Store) -> Scored:
        """Predictions for the rows of ``chunk`` that need them; rejects for the others."""
        prepared = prepare(
            chunk.batch, self.plan, self.model.signature, chunk.first_row,
            self.config.allow_non_finite,
        )  # fmt: skip
        keys = prepared.keys
        reasons = {**prepared.rejects, **chunk.rejects}
        keep = np.array([i not in chunk.rejects for i in prepared.rows], dtype=bool)
        offsets, inputs = prepared.rows[keep], _take(prepared.inputs, keep)
        hashes: list[str] | None = None  # computed by the writer unless needed now
        skipped = 0
        if len(offsets) and self.skip_scored and not self.config.force:
            hashes = input_hashes(inputs)
            known = store.scored(self.name, self.version, [keys[i] for i in offsets])
            fresh = np.array(
                [
                    self._changed(known.get(keys[i]), h, store)
                    for i, h in zip(offsets, hashes, strict=True)
                ],
                bool,
            )
            skipped = len(fresh) - int(fresh.sum())
            offsets, inputs = offsets[fresh], _take(inputs, fresh)
            hashes = [h for h, f in zip(hashes, fresh, strict=True) if f]
        outputs, failed = self._predict(inputs, len(offsets))
        if failed:
            reasons.update({int(offsets[i]): reason for i, reason in failed.items()})
            ok = np.array([i not in failed for i in range(len(offsets))], dtype=bool)
            offsets, inputs = offsets[ok], _take(inputs, ok)  # outputs hold only these rows
            hashes = None if hashes is None else [h for h, o in zip(hashes, ok, strict=True) if o]
        rejects = [
            Reject(
                None if chunk.first_row is None else chunk.first_row + i, keys[i] or None, reason
            )
            for i, reason in sorted(reasons.items())
        ]
        first = chunk.first_row
        numbers = [None if first is None else first + int(i) for i in offsets]
        return Scored(
            [keys[i] for i in offsets], numbers, inputs, outputs, hashes, self.layout, rejects,
            skipped, chunk.batch.num_rows,
        )  # fmt: skip

    def _changed(self, stored: tuple[str, str] | None, digest: str, store: Store) -> bool:
        """Does a row need scoring: never scored, other features, or other outputs stored?"""
        if stored is None:
            return True
        stored_digest, run_id = stored
        return stored_digest != digest or store.layout(run_id) != self.layout

    def _predict(
        self, inputs: dict[str, np.ndarray], rows: int
    ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Outputs for every row that the model accepts; the others with the model's reason.

        A batch that fails is retried row by row, so one bad row fails only itself.
        """
        starts = range(0, rows, self.batch_size)
        if self.threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="modelport-model") as pool:
                done = list(pool.map(lambda start: self._predict_batch(inputs, start), starts))
        else:
            done = [self._predict_batch(inputs, start) for start in starts]
        parts = [part for batch_parts, _ in done for part in batch_parts]
        failed = {row: reason for _, batch_failed in done for row, reason in batch_failed.items()}
        if not parts:
            return {f.name: np.empty((0, *f.shape), f.dtype) for f in self.layout.fields}, failed
        return {
            f.name: np.concatenate([p[f.name] for p in parts]) for f in self.layout.fields
        }, failed

    def _predict_batch(
        self, inputs: dict[str, np.ndarray], start: int
    ) -> tuple[list[dict[str, np.ndarray]], dict[int, str]]:
        """The batch at ``start``: its outputs, or row by row when the whole batch fails."""
        batch = {n: v[start : start + self.batch_size] for n, v in inputs.items()}
        try:
            return [self._outputs(self.model.predict(batch))], {}
        except (PredictionError, InvalidInputError):
            pass
        parts, failed = [], {}
        for i in range(len(next(iter(batch.values())))):
            try:
                parts.append(
                    self._outputs(self.model.predict({n: v[i : i + 1] for n, v in batch.items()}))
                )
            except (PredictionError, InvalidInputError) as exc:
                failed[start + i] = f"the model failed: {exc}"
        return parts, failed

    def _outputs(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for f in self.layout.fields:
            if tuple(outputs[f.name].shape[1:]) != f.shape:
                raise BatchError(
                    f"output {f.name!r} changed shape per row from {list(f.shape)} to "
                    f"{list(outputs[f.name].shape[1:])}: batch scoring needs fixed output shapes"
                )
        return {f.name: outputs[f.name] for f in self.layout.fields}


def _take(arrays: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return arrays if mask.all() else {name: values[mask] for name, values in arrays.items()}


def make_scorer(
    model: Model, name: str, version: int, columns: list[str], config: BatchConfig, store: Store
) -> Scorer:
    """Plan the columns, learn the output layout and the best batch size."""
    plan = plan_columns(model.signature, columns, parse_mapping(config.mapping), config.key)
    outputs = config.outputs or model.signature.output_names
    unknown = set(outputs) - set(model.signature.output_names)
    if unknown:
        raise BatchError(
            f"--outputs names {', '.join(sorted(unknown))}; the model's outputs are "
            f"{', '.join(model.signature.output_names)}"
        )
    zeros = {  # text: empty strings (zeros of dtype object are the integer 0)
        s.name: np.full([1] + [max(d, 1) for d in s.shape[1:]], "", dtype=object)
        if s.dtype == "string"
        else np.zeros([1] + [max(d, 1) for d in s.shape[1:]], dtype=s.dtype)
        for s in model.signature.inputs
    }
    try:
        probe = model.predict(zeros)
    except ModelportError as exc:
        raise BatchError(
            f"the model failed on a row of zeros, so its output layout is unknown: {exc}"
        ) from exc
    layout = Layout.of({n: probe[n] for n in outputs})
    batch_size = config.batch_size or best_batch_size(model, config.chunk_rows or _LARGEST_BATCH)
    chunk_rows = config.chunk_rows or auto_chunk_rows(model, layout, batch_size)
    skip = not config.force and store.has_predictions(name, version)
    threads = model.runtime.parallel_calls
    return Scorer(model, name, version, plan, layout, batch_size, chunk_rows, config, skip, threads)


def auto_chunk_rows(model: Model, layout: Layout, batch_size: int) -> int:
    """Rows per chunk for about 32 MiB of features and outputs (a few chunks are in flight at
    once), a whole number of batches, at most 10,000 rows."""
    row_bytes = sum(f.nbytes for f in layout.fields)
    for spec in model.signature.inputs:
        itemsize = 64 if spec.dtype == "string" else np.dtype(spec.dtype).itemsize
        row_bytes += itemsize * math.prod(max(d, 1) for d in spec.shape[1:])
    rows = min(_CHUNK_BYTES // max(row_bytes, 1), _MAX_CHUNK_ROWS)
    return max(batch_size, rows // batch_size * batch_size)


def best_batch_size(model: Model, limit: int) -> int:
    """The smallest batch within 5% of the best measured per-row cost (larger batches only
    cost memory once the per-row cost stops falling)."""
    # Five calls a size: with three, a noisy machine picked 64 one run and 256 the next.
    costs = measure_costs(model, max(1, min(limit, _LARGEST_BATCH)), repeats=5)
    if not costs:
        return min(limit, 256)
    per_row = {size: cost / size for size, cost in costs.items()}
    best = min(per_row.values())
    return min(size for size, cost in per_row.items() if cost <= best * 1.05)


def score_table(
    model: Model, source: Source, store: Store, config: BatchConfig = BatchConfig(),
    progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:  # fmt: skip
    """Score every row of ``source`` into ``store`` with the local engine.

    An ONNX model loaded with ``RuntimeConfig(intra_op_threads=1)`` (as ``modelport batch``
    loads it) scores a batch per core at once: the fastest way on a machine that also reads,
    writes and perhaps hosts the database.
    """
    name, version = model_identity(model)
    store.reap(name)
    scorer = make_scorer(model, name, version, source.columns(), config, store)
    log.info(
        "scoring %s with %s:%s: %d rows a chunk, batch size %d, columns %s",
        source.description, name, version, scorer.chunk_rows, scorer.batch_size,
        scorer.plan.describe(),
    )  # fmt: skip
    run_id = store.start_run(name, version, source.description, scorer.layout)
    started = time.monotonic()
    counts = {"rows": 0, "scored": 0, "skipped": 0, "rejected": 0}

    def summary(status: str) -> RunSummary:
        return RunSummary.of(run_id, name, version, counts, started, status)

    def landed(done: Future[int], rows: int, scored: int, skipped: int, rejected: int) -> None:
        duplicates = done.result()
        counts["rows"] += rows
        counts["scored"] += scored - duplicates
        counts["skipped"] += skipped
        counts["rejected"] += rejected + duplicates
        if progress is not None:
            progress(summary("running"))

    status, error = "failed", None
    writer = ThreadPoolExecutor(1, thread_name_prefix="modelport-store")
    pending: deque[tuple[Future[int], int, int, int, int]] = deque()
    try:
        for chunk in prefetch(source.read(scorer.chunk_rows), _QUEUED_CHUNKS):
            scored = scorer.score(chunk, store)
            future = writer.submit(scored.write, store, run_id, name, version)
            pending.append(
                (future, scored.read, len(scored.keys), scored.skipped, len(scored.rejects))
            )
            while len(pending) > _QUEUED_CHUNKS:
                landed(*pending.popleft())
        while pending:
            landed(*pending.popleft())
        check_rejects(counts, config, store, run_id)
        status = "succeeded"
    except KeyboardInterrupt:
        status, error = "interrupted", "stopped by the user"
        raise
    except ModelportError as exc:
        error = str(exc)
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for future, *_ in pending:
            future.cancel()
        writer.shutdown(wait=True)
        try:
            store.finish_run(run_id, status, error)
        except ModelportError as exc:  # the store is down: reap marks the run later
            log.warning("could not record the end of run %s: %s", run_id, exc)
    return summary(status)


def model_identity(model: Model) -> tuple[str, int]:
    if model.version is None:
        raise BatchError(
            "batch scoring needs a model from a repository (NAME[:VERSION]) so that stored "
            "predictions name the version that made them; import the model first"
        )
    return model.name, model.version


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate ``items`` on a thread, up to ``depth`` ahead; its exceptions surface here."""
    buffer: queue.Queue[tuple[bool, object]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((False, None))
        except BaseException as exc:  # handed to the consumer
            buffer.put((False, exc))

    thread = threading.Thread(target=produce, name="modelport-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = buffer.get()
            if not more:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
