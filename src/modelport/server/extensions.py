"""The protocol extensions beyond the core, as data every door sends in its own encoding:
Triton's statistics (counts and durations per model version) and model configuration.

    model_statistics(registry)            # [{"name": "digits", "version": "1", ...}]
    model_config(registry.get("digits"))  # {"name": "digits", "max_batch_size": 32, ...}

Statistics are read from the counters that ``/metrics`` shows (every worker's, summed), not
kept a second time. The shapes and field names are Triton's, so that ``tritonclient``'s
``get_inference_statistics`` and ``get_model_config`` read them unchanged; REST sends them as
JSON, gRPC as the messages of the same names.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from modelport.runtimes import PLATFORMS
from modelport.server import metrics
from modelport.server.registry import Registry, Served

# As the server metadata lists them. binary_tensor_data: REST's binary tensors (gRPC's raw
# contents are core protocol).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]

_NS = 1e9
_REQUESTS = "modelport_requests_total"
_LABELS = ("phase", "status", "outcome", "size", "event")  # the one other label a sample has
_BACKENDS = {"onnx": "onnxruntime", "python": "python"}
_KINDS = {"CPUExecutionProvider": "KIND_CPU"}  # any other provider runs on a GPU


def model_statistics(
    registry: Registry, name: str | None = None, version: int | None = None
) -> list[dict[str, Any]]:
    """Statistics of every served version, of one model's, or of one version
    (ModelNotFoundError when it is not served)."""
    wanted = []
    for model in [name] if name is not None else registry.names():
        versions = [version] if version is not None else registry.versions(model)
        wanted += [registry.get(model, v) for v in versions]
    counted = _counted()
    return [_statistics(served, counted[(served.name, served.label)]) for served in wanted]


def _counted() -> defaultdict[tuple[str, str], dict[tuple[str, str], float]]:
    """(model, version) -> (sample name, its other label's value) -> value."""
    counted: defaultdict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for family in metrics.counted().collect():
        if not family.name.startswith("modelport_"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels or "le" in labels:
                continue
            other = next((labels[k] for k in _LABELS if k in labels), "")
            values = counted[(labels["model"], labels["version"])]
            values[(sample.name, other)] = values.get((sample.name, other), 0.0) + sample.value
    return counted


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * _NS)}


def _statistics(served: Served, values: dict[tuple[str, str], float]) -> dict[str, Any]:
    def get(sample: str, other: str = "") -> float:
        return values.get((sample, other), 0.0)

    def phase(name: str) -> dict[str, int]:
        latency = "modelport_request_duration_seconds"
        return _duration(get(f"{latency}_count", name), get(f"{latency}_sum", name))

    statuses = [(other, v) for (sample, other), v in values.items() if sample == _REQUESTS]
    succeeded = sum(v for status, v in statuses if status.startswith("2"))
    failed = sum(v for status, v in statuses if not status.startswith("2"))
    seconds = "modelport_request_seconds_total"
    sizes = sorted(int(size) for sample, size in values if sample == "modelport_batches_total")
    return {
        "name": served.name,
        "version": served.label,
        "last_inference": int(get("modelport_last_inference_timestamp_seconds") * 1000),
        "inference_count": int(get("modelport_batch_size_sum")),
        "execution_count": int(get("modelport_batch_size_count")),
        "inference_stats": {
            "success": _duration(succeeded, get(seconds, "success")),
            "fail": _duration(failed, get(seconds, "fail")),
            "queue": phase("queue"),
            "compute_input": phase("input"),
            "compute_infer": phase("inference"),
            "compute_output": phase("output"),
            # Lookups are counted, not timed: a hit costs what the cache's get costs.
            "cache_hit": _duration(get("modelport_cache_total", "hit"), 0.0),
            "cache_miss": _duration(get("modelport_cache_total", "miss"), 0.0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_infer": _duration(
                    get("modelport_batches_total", str(size)),
                    get("modelport_batch_seconds_total", str(size)),
                ),
            }
            for size in sizes
        ],
    }


def model_config(served: Served) -> dict[str, Any]:
    """How ``served`` is served, as Triton's model configuration describes a model.

    With batching, ``max_batch_size`` is the batcher's and ``dims`` leave out the batch
    dimension (Triton's convention); without, ``max_batch_size`` is 0 and ``dims`` are whole.
    """
    runner = served.runner
    batching = runner.batching
    runtime = str(served.model.metadata.get("runtime", "onnx"))
    providers = getattr(served.model.runtime, "providers", None) or ["CPUExecutionProvider"]

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "data_type": "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}",
                "dims": list(t.shape[1:] if batching is not None else t.shape),
            }
            for t in specs
        ]

    config: dict[str, Any] = {
        "name": served.name,
        "platform": PLATFORMS.get(runtime, runtime),
        "backend": _BACKENDS.get(runtime, runtime),
        "max_batch_size": batching.max_batch_size if batching is not None else 0,
        "input": tensors(served.model.signature.inputs),
        "output": tensors(served.model.signature.outputs),
        "instance_group": [
            {
                "name": served.name,
                "kind": _KINDS.get(providers[0], "KIND_GPU"),
                "count": runner.threads,
            }
        ],
    }
    if batching is not None:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(batching.max_delay_s * 1e6),
        }
    return config
