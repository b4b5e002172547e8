"""Quantization-aware fine-tuning of a PyTorch source before its int8 export.

    onnx_path = fine_tune(Path("net.pt"), parent, rows, Path(tmp), QatSettings(epochs=5))

The model's PyTorch module (the file it was imported from: the repository keeps only ONNX)
is first checked to compute what the repository's version computes. Then every Linear and
Conv layer trains with int8 rounding in the loop: weights fake-quantized per output channel
(or per tensor; symmetric, as onnxruntime's static quantization stores them) and the
activations entering them per tensor (uint8, ranges tracked as they train), gradients passing
straight through the rounding. Its targets are the fp32 model's own answers (no labels
needed): the weights move to where rounding costs least. The fine-tuned float weights are
exported to ONNX (parity checked) for onnxruntime's static quantization to make int8 of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.convert.parity import Tolerance, assert_close
from modelport.errors import ConversionError, OptimizationError, UntrustedArtifactError, require
from modelport.manifest import refusal
from modelport.model import Model
from modelport.optimize.rows import Rows

# Static int8 weights use 7 bits (onnxruntime's reduce_range): x86 CPUs without VNNI (AVX2, and
# AVX-512 before VNNI) multiply uint8 by int8 in an instruction that saturates on 8-bit weights
# (onnxruntime's own advice); on an AVX2 EPYC that cost the digits CNN 1.2 accuracy points. A
# model may be served on any CPU, so weights span [-64, 64] everywhere, and fine-tuning rounds
# them so too.
WEIGHT_LEVELS = 64


@dataclass(frozen=True)
class QatSettings:
    """The PyTorch source of the model, and how long and fast it fine-tunes."""

    source: Path
    trust_pickle: bool = False
    epochs: int = 5
    learning_rate: float = 1e-4
    batch_size: int = 32
    seed: int = 0

    def lineage(self) -> dict[str, Any]:
        from modelport.manifest import sha256

        return {"source": self.source.name, "source_sha256": sha256(self.source),
                "epochs": self.epochs, "learning_rate": self.learning_rate}  # fmt: skip


def fine_tune(
    settings: QatSettings, parent: Model, rows: Rows, folder: Path, per_channel: bool = True
) -> Path:
    """Fine-tune ``settings.source`` on ``rows`` with int8 in the loop; the float ONNX file.

    ``per_channel`` rounds weights as the static quantization that follows will: one scale
    per output channel, or one per tensor.
    """
    require("torch", "torch")
    import torch

    module = _load(settings)
    names = parent.signature.input_names
    arrays = [rows.inputs[n] for n in names]
    targets = parent.predict(rows.inputs)
    first = parent.signature.output_names[0]
    _check_same(module, arrays[: len(arrays)], targets[first], settings.source, parent)
    torch.manual_seed(settings.seed)
    hooks = _fake_quantize(module, per_channel)
    try:
        _train(module, arrays, targets[first], settings)
    finally:
        for hook in hooks:
            hook()
    from modelport.convert.torch import torch_to_onnx

    path = folder / "qat.onnx"
    outputs = parent.signature.output_names
    sample = [a[:32] for a in arrays]
    path.write_bytes(torch_to_onnx(module.eval(), sample, input_names=names, output_names=outputs))
    return path


def _load(settings: QatSettings) -> Any:
    import torch

    if not settings.trust_pickle:
        raise UntrustedArtifactError(refusal(settings.source))
    if not settings.source.is_file():
        raise OptimizationError(f"{settings.source} does not exist")
    try:
        module = torch.load(settings.source, weights_only=False)
    except Exception as exc:
        raise OptimizationError(f"{settings.source} cannot be loaded by torch: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise OptimizationError(
            f"{settings.source} holds a {type(module).__name__}, not a whole torch.nn.Module "
            "(torch.save(model), not its state_dict)"
        )
    return module


def _check_same(module: Any, arrays: list[np.ndarray], expected: np.ndarray, source: Path,
                parent: Model) -> None:  # fmt: skip
    import torch

    module.eval()
    try:
        with torch.no_grad():
            out = module(*(torch.from_numpy(a[:32]) for a in arrays))
        got = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
        assert_close("output", expected[:32], got, Tolerance(rtol=1e-3, atol=1e-4))
    except (ConversionError, RuntimeError, TypeError, ValueError) as exc:
        raise OptimizationError(
            f"{source} does not compute what {parent.name}:{parent.version} computes ({exc}); "
            "pass the PyTorch module that version was imported from"
        ) from exc


def _fake_quantize(module: Any, per_channel: bool) -> list[Any]:
    """Int8 rounding around every Linear and Conv; returns the functions that undo it."""
    import torch
    from torch.nn.utils import parametrize

    class Weights(torch.nn.Module):
        def forward(self, w: Any) -> Any:
            levels = WEIGHT_LEVELS
            if not per_channel:
                step = max(float(w.detach().abs().max()) / levels, 1e-8)
                return torch.fake_quantize_per_tensor_affine(w, step, 0, -levels, levels)
            flat = w.detach().reshape(w.shape[0], -1).abs().amax(dim=1)
            scale = torch.clamp(flat / levels, min=1e-8).to(torch.float32)
            zero = torch.zeros(w.shape[0], dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -levels, levels)

    def activations(layer: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0]
        if layer.training:  # ranges follow the data as it trains, as calibration would see it
            low, high = float(x.detach().min()), float(x.detach().max())
            old = getattr(layer, "_qat_range", (low, high))
            layer._qat_range = (0.9 * old[0] + 0.1 * low, 0.9 * old[1] + 0.1 * high)
        low, high = getattr(layer, "_qat_range", (float(x.detach().min()), float(x.detach().max())))
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / 255, 1e-8)
        zero = round(-low / scale)
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *inputs[1:])

    undo = []
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    for layer in module.modules():
        if isinstance(layer, kinds):
            parametrize.register_parametrization(layer, "weight", Weights())
            handle = layer.register_forward_pre_hook(activations)

            def remove(layer: Any = layer, handle: Any = handle) -> None:
                handle.remove()
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)

            undo.append(remove)
    if not undo:
        raise OptimizationError("the PyTorch module has no Linear or Conv layer to fine-tune")
    return undo


def _train(module: Any, arrays: list[np.ndarray], targets: np.ndarray,
           settings: QatSettings) -> None:  # fmt: skip
    import torch

    tensors = [torch.from_numpy(a) for a in arrays]
    goal = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate)
    module.train()
    for _ in range(settings.epochs):
        order: Any = torch.randperm(len(goal))
        for batch in order.split(settings.batch_size):
            optimizer.zero_grad()
            out = module(*(t[batch] for t in tensors))
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss: Any = torch.nn.functional.mse_loss(out, goal[batch])
            loss.backward()
            optimizer.step()
    module.eval()
