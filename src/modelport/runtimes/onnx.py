"""ONNX models on onnxruntime."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from modelport.config import RuntimeConfig
from modelport.cpus import cpu_budget
from modelport.errors import ModelLoadError, PredictionError, RequirementsError
from modelport.signature import Signature, TensorSpec

# onnxruntime's type strings for the dtypes a signature can hold.
_ONNX_TYPES = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(string)": "string",
}

# Preferred when present; onnxruntime falls back along the list if one cannot start.
_AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(config: RuntimeConfig) -> list[str]:
    """The execution providers to ask for, best first, among those installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if config.providers is not None:
        missing = [p for p in config.providers if p not in available]
        if missing:
            raise RequirementsError(
                f"execution provider {missing[0]} is not available in this onnxruntime "
                f"build (available: {', '.join(available)}); install the matching "
                "onnxruntime package (e.g. onnxruntime-gpu) or choose another provider"
            )
        return list(config.providers)
    return [p for p in _AUTO_PROVIDERS if p in available]


def _spec(node: Any) -> TensorSpec:
    dtype = _ONNX_TYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(
            f"tensor {node.name!r} has type {node.type}, which modelport cannot serve; "
            "export the model with plain tensor inputs and outputs"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, dtype, shape)


class OnnxRuntime:
    """An onnxruntime session behind the Runtime protocol."""

    def __init__(self, path: Path, config: RuntimeConfig = RuntimeConfig()) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.log_severity_level = 4  # failures reach callers as exceptions, not C++ log lines
        providers = pick_providers(config)
        check_external_data(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(
                f"onnxruntime cannot load {path}: {_first_line(exc)}. If the file was copied, "
                "it may be corrupt or truncated: export or copy it again"
            ) from exc
        self.signature = Signature(
            tuple(_spec(n) for n in self.session.get_inputs()),
            tuple(_spec(n) for n in self.session.get_outputs()),
        )
        self.providers: list[str] = self.session.get_providers()
        # Sessions run calls from several threads at once. With one thread each, a batch per
        # core keeps every core busy without the waits of splitting one call across cores,
        # which stall whenever another thread (a writer, a database) takes a core: about 1.5x
        # the rows/s of one call on two threads beside such work, measured.
        single = self.providers[0] == "CPUExecutionProvider" and config.intra_op_threads == 1
        self.parallel_calls = cpu_budget().count if single else 1
        self._output_names = self.signature.output_names

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(None, inputs)
        except Exception as exc:
            raise PredictionError(f"onnxruntime failed: {_first_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        del self.session


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: Path) -> Any:
    """The ModelProto in ``path``, without its external data."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a valid ONNX file ({_first_line(exc)}); it may be corrupt or "
            "truncated: export or copy it again"
        ) from exc


def read_opsets(path: Path) -> tuple[dict[str, int], int]:
    """The opset of each operator domain an ONNX file imports, and its IR version."""
    model = _read(path)
    return {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}, int(
        model.ir_version
    )


def check_external_data(path: Path) -> None:
    """Raise ModelLoadError if a tensor of the model at ``path`` keeps its data in a file
    outside the model's folder.

    Each tensor names its external file in ``location``, relative to the model's folder, and
    onnxruntime releases before 1.24 (1.27 for sparse tensors) open whatever it names: with an
    absolute path or ``../..`` any file the process can read becomes a weight, whose bytes a
    crafted graph hands back as its outputs.
    """
    folder = path.resolve().parent
    for name, location in _external_locations(_read(path)):
        if not _inside(folder, location):
            raise ModelLoadError(
                f"{path}: tensor {name!r} keeps its data in the file {location!r}, outside the "
                "model's folder, and loading it would read that file. External data must be a "
                "relative path to a file beside the model: put the tensors inside the .onnx "
                "file (onnx.save_model(model, path)) and import it again"
            )


def _inside(folder: Path, location: str) -> bool:
    posix = PurePosixPath(location.replace("\\", "/"))
    if (
        not location
        or posix.is_absolute()
        or PureWindowsPath(location).anchor  # C:\..., \\server\share
        or ".." in posix.parts
        or "_ORT_MEM_ADDR_" in location  # onnxruntime's tag: "read from this memory address"
    ):
        return False
    return folder in (folder / location).resolve().parents  # symbolic links resolved


def _external_locations(model: Any) -> Iterator[tuple[str, str]]:
    """(tensor name, location) of every tensor with external data: initializers, sparse
    initializers and node attributes, in the graph, its subgraphs (If, Loop, Scan) and the
    model's functions and training graphs."""
    from onnx import TensorProto

    graphs = [model.graph]
    graphs += [g for info in model.training_info for g in (info.initialization, info.algorithm)]
    nodes = [node for function in model.functions for node in function.node]
    tensors: list[Any] = []
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            tensors += [*graph.initializer, *_parts(graph.sparse_initializer)]
            nodes += graph.node
            continue
        for attribute in nodes.pop().attribute:
            tensors += [attribute.t] if attribute.HasField("t") else []
            tensors += attribute.tensors
            sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
            tensors += _parts([*sparse, *attribute.sparse_tensors])
            graphs += [attribute.g] if attribute.HasField("g") else []
            graphs += attribute.graphs
    for tensor in tensors:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if entries or tensor.data_location == TensorProto.EXTERNAL:
            yield tensor.name, entries.get("location", "")


def _parts(sparse_tensors: Any) -> list[Any]:
    return [part for sparse in sparse_tensors for part in (sparse.values, sparse.indices)]


@functools.cache
def max_supported_opset(domain: str) -> int:
    """The newest opset of ``domain`` the installed onnxruntime loads, found by trying.

    Domains onnxruntime does not check (custom operator domains) come out as the upper bound.

    onnxruntime publishes no API for this; a one-node model per candidate opset is cheap and
    tells the truth about the exact build installed.
    """
    lo, hi = 1, 64
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _loads_opset(domain, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _loads_opset(domain: str, version: int) -> bool:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", 13)]
    if domain == "ai.onnx":
        opsets = [helper.make_opsetid("", version)]
    else:
        opsets.append(helper.make_opsetid(domain, version))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # failures are the expected answer here, not news
    try:
        ort.InferenceSession(model.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True
