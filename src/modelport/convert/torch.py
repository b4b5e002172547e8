"""PyTorch ``nn.Module`` to ONNX with a dynamic batch axis, with a parity check.

    onnx_bytes = torch_to_onnx(net, x_sample)     # x_sample: numpy array, batch first

Inputs are named ``input`` (or ``input_0``, ``input_1``... for several), outputs ``output``
(or ``output_0``...). Parity is checked at the sample's batch size and at batch size 1, which
also proves the batch axis really is dynamic.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.convert.parity import Tolerance, assert_close, quiet_logs, quiet_session
from modelport.errors import ConversionError, require


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def torch_to_onnx(
    module: Any,
    sample: np.ndarray | Sequence[np.ndarray],
    tolerance: Tolerance = Tolerance(),
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> bytes:
    """Convert ``module`` (in eval mode) using ``sample`` inputs; ConversionError on failure.

    ``input_names`` and ``output_names`` replace the default names (``input``, ``output``...).
    """
    require("torch", "torch")
    require("onnxscript", "torch")
    import torch

    arrays = (
        [np.asarray(sample)] if isinstance(sample, np.ndarray) else list(map(np.asarray, sample))
    )
    if any(a.ndim == 0 for a in arrays):
        raise ConversionError("sample inputs need a batch dimension first")
    # Samples read from CSV or JSON arrive as float64: feed floats as the weights' dtype.
    weights = next(iter(module.parameters()), None)
    float_dtype = (
        np.float32 if weights is None else torch.empty(0, dtype=weights.dtype).numpy().dtype
    )
    arrays = [a.astype(float_dtype) if a.dtype.kind == "f" else a for a in arrays]
    # torch.export specializes a dimension of size 1, so trace with at least two rows.
    arrays = [np.concatenate([a, a]) if a.shape[0] == 1 else a for a in arrays]
    tensors = _tensors(arrays)
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()  # a GraphModule, in eval mode as it was exported
        _check_dynamic_batch(module, arrays)
    elif hasattr(module, "eval"):
        module = module.eval()
    expected = _run(module, arrays)
    input_names = list(input_names or _names("input", len(tensors)))
    output_names = list(output_names or _names("output", len(expected)))
    if len(input_names) != len(tensors) or len(output_names) != len(expected):
        raise ConversionError(
            f"{len(input_names)} input and {len(output_names)} output names given for a module "
            f"of {len(tensors)} inputs and {len(expected)} outputs"
        )
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in tensors)  # positional: forward's arg names vary
    with tempfile.TemporaryDirectory() as tmp, quiet_logs("torch.onnx"):
        path = Path(tmp) / "model.onnx"
        try:
            if isinstance(module, torch.jit.ScriptModule):
                _export_script(module, tensors, input_names, output_names, path)
            else:
                _export(module, tensors, input_names, output_names, dynamic, path)
        except Exception as exc:
            raise ConversionError(
                f"torch.onnx.export failed for {type(module).__name__}: {_summary(exc)}"
            ) from exc
        data = path.read_bytes()
    _check_parity(module, data, arrays, input_names, output_names, tolerance)
    return data


def _export(
    module: Any, tensors: tuple[Any, ...], input_names: list[str], output_names: list[str],
    dynamic: tuple[dict[int, Any], ...], path: Path,
) -> None:  # fmt: skip
    import torch

    program = torch.onnx.export(
        module,
        tensors,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("the exporter returned no program")
    program.save(str(path))


def _export_script(
    module: Any, tensors: tuple[Any, ...], input_names: list[str], output_names: list[str],
    path: Path,
) -> None:  # fmt: skip
    """TorchScript: torch.export cannot trace it, the TorchScript exporter can."""
    import torch

    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    torch.onnx.export(
        module,
        tensors,
        str(path),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=axes,
        dynamo=False,
    )


def _check_dynamic_batch(module: Any, arrays: list[np.ndarray]) -> None:
    try:
        _run(module, [a[:1] for a in arrays])
    except ConversionError as exc:
        if "Guard failed" not in str(exc):
            raise
        raise ConversionError(
            "the exported program takes a fixed batch size, so it cannot be served one request "
            "at a time; export it with a dynamic batch: torch.export.export(model, (x,), "
            "dynamic_shapes="
            '({0: torch.export.Dim("batch")},))'
        ) from exc


def _summary(exc: BaseException) -> str:
    """The exporter's own cause, without its colour codes and boilerplate."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    _, found, summary = text.partition("## Exception summary")
    lines = [line for line in (summary if found else text).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def _as_list(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _check_parity(
    module: Any,
    data: bytes,
    arrays: list[np.ndarray],
    input_names: list[str],
    output_names: list[str],
    tolerance: Tolerance,
) -> None:
    session = quiet_session(data)
    for rows in (arrays, [a[:1] for a in arrays]):
        expected = _run(module, rows)
        try:
            got = session.run(None, dict(zip(input_names, rows, strict=True)))
        except Exception as exc:
            raise ConversionError(f"the exported model fails in onnxruntime: {exc}") from exc
        for name, want, have in zip(output_names, expected, got, strict=True):
            assert_close(name, want, have, tolerance)


def _tensors(arrays: list[np.ndarray]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _run(module: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The module's own outputs on ``arrays``, as numpy; ConversionError if it raises."""
    import torch

    try:
        with torch.no_grad():
            return [t.numpy() for t in _as_list(module(*_tensors(arrays)))]
    except Exception as exc:
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in arrays)
        raise ConversionError(
            f"{type(module).__name__} raised on the sample input ({shapes}): "
            f"{type(exc).__name__}: {exc}; pass a sample the model accepts"
        ) from exc


def torch_metadata() -> dict[str, str]:
    import torch

    return {"framework": "pytorch", "torch": torch.__version__}
