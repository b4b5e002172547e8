"""Students for distillation: what ``--student`` and ``--student-module`` ask for, as torch
modules, and the wrapper that gives a student its teacher's inputs and outputs.

    StudentSpec.parse("mlp:256,128")        # two hidden layers of 256 and 128, ReLU between
    StudentSpec(module="my_student.py:Tiny") # Tiny(in_features, out_features), your own

A student maps float32 rows ``[batch, in_features]`` (the teacher's input, flattened) to
``[batch, out_features]``: class logits for a classifier, values for a regressor.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import OptimizationError

MAX_WIDTH = 65536
_SPEC = re.compile(r"mlp:(\d+(?:,\d+)*)")


@dataclass(frozen=True)
class StudentSpec:
    """A built-in MLP (``hidden`` widths) or ``module``, a ``file.py:Class`` of your own."""

    hidden: tuple[int, ...] = ()
    module: str | None = None

    @classmethod
    def parse(cls, text: str) -> StudentSpec:
        """``"mlp:256,128"``; OptimizationError saying what a spec looks like otherwise."""
        match = _SPEC.fullmatch(text.strip().replace(" ", ""))
        widths = tuple(int(w) for w in match.group(1).split(",")) if match else ()
        if not match or not all(1 <= w <= MAX_WIDTH for w in widths):
            raise OptimizationError(
                f"student spec {text!r} does not parse: use mlp:W1,W2,... with each hidden "
                f"layer's width from 1 to {MAX_WIDTH} (e.g. mlp:256,128), or pass your own "
                "module with --student-module file.py:Class"
            )
        return cls(hidden=widths)

    def describe(self) -> str:
        return self.module or "mlp:" + ",".join(map(str, self.hidden))

    def build(self, in_features: int, out_features: int) -> Any:
        """The untrained student, a ``torch.nn.Module``."""
        from torch import nn

        if self.module is None:
            layers: list[Any] = []
            width = in_features
            for hidden in self.hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            return nn.Sequential(*layers, nn.Linear(width, out_features))
        return _load_module(self.module, in_features, out_features)


def _load_module(spec: str, in_features: int, out_features: int) -> Any:
    from torch import nn

    file, sep, name = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        raise OptimizationError(
            f"student module {spec!r} does not parse: use path/to/file.py:ClassName"
        )
    path = Path(file)
    if not path.is_file():
        raise OptimizationError(f"student module file {path} does not exist")
    loader = importlib.util.spec_from_file_location(f"modelport_student_{path.stem}", path)
    if loader is None or loader.loader is None:
        raise OptimizationError(f"student module file {path} cannot be imported")
    module = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        raise OptimizationError(f"{path} raised on import: {type(exc).__name__}: {exc}") from exc
    kind = getattr(module, name, None)
    if kind is None:
        raise OptimizationError(f"{path} defines no {name!r}")
    try:
        student = kind(in_features, out_features)
    except Exception as exc:
        raise OptimizationError(
            f"{name}({in_features}, {out_features}) raised: {type(exc).__name__}: {exc}; a "
            "student class takes (in_features, out_features)"
        ) from exc
    if not isinstance(student, nn.Module):
        raise OptimizationError(f"{name}(...) is a {type(student).__name__}, not a torch.nn.Module")
    return student


def exported(student: Any, plan: Any) -> Any:
    """The module to export: the teacher's input in, the teacher's outputs out.

    ``plan`` (a distill.Plan) says how the input was normalized and what each output is:
    ``logits``, ``probabilities`` (softmax), ``label`` (argmax, in the teacher's dtype and
    shape) or ``values`` (a regressor's, scaled back to the teacher's units).
    """
    import torch
    from torch import nn

    dtypes = {"int64": torch.int64, "int32": torch.int32}

    class Distilled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.register_buffer("mean", torch.from_numpy(plan.mean))
            self.register_buffer("scale", torch.from_numpy(plan.scale))
            self.register_buffer("target_mean", torch.from_numpy(plan.target_mean))
            self.register_buffer("target_scale", torch.from_numpy(plan.target_scale))

        def forward(self, x: Any) -> Any:
            rows = x.reshape(x.shape[0], -1).to(torch.float32)
            out = self.student((rows - self.mean) / self.scale)
            results = []
            for kind, spec in plan.outputs:
                if kind == "logits":
                    results.append(out)
                elif kind == "probabilities":
                    results.append(torch.softmax(out, dim=1))
                elif kind == "label":
                    label = out.argmax(dim=1).to(dtypes[spec.dtype])
                    results.append(label.reshape(-1, 1) if len(spec.shape) == 2 else label)
                else:
                    values = out * self.target_scale + self.target_mean
                    results.append(values.reshape(-1) if len(spec.shape) == 1 else values)
            return tuple(results) if len(results) > 1 else results[0]

    return Distilled().eval()
