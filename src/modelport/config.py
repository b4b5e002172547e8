"""Configuration as data: one small frozen dataclass per concern, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeConfig:
    """How a model runs in this process.

    ``providers`` lists onnxruntime execution providers in order of preference; ``None`` picks
    automatically (TensorRT, then CUDA, when installed and usable, else CPU). Thread counts of 0
    leave the choice to onnxruntime (one thread per physical core).
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 lets onnxruntime choose)")


@dataclass(frozen=True)
class InputLimits:
    """Bounds checked on every input before any inference runs.

    The default allows 16 Mi elements per input (64 MiB of float32), matching the request body
    limits of mature servers; raise it for large images or embeddings batches.
    """

    max_elements: int = 16 * 2**20

    def __post_init__(self) -> None:
        if self.max_elements < 1:
            raise ValueError("max_elements must be >= 1")


@dataclass(frozen=True)
class LoadOptions:
    """Everything that decides how a model version is loaded.

    ``trust_pickle`` allows pickle and joblib artifacts, which can run arbitrary code when
    loaded; leave it off unless you made the files yourself.
    """

    runtime: RuntimeConfig = RuntimeConfig()
    limits: InputLimits = InputLimits()
    trust_pickle: bool = False
    verify_requirements: bool = True
