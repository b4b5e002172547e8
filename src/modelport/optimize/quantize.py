"""int8 quantization with onnxruntime's tools, behind an accuracy budget.

    result = quantize(repo, "digits-cnn", Path("eval.npz"), calibration=Path("calib.npz"),
                      labels="y")                  # method "auto", max_drop 0.01
    result.manifest.version                        # the int8 model, imported as the next version
    print(result.report.table())

- ``dynamic``: weights to int8, activations quantized on the fly at each call; no calibration.
- ``static``: weights and activations to int8, activation ranges calibrated on the given rows;
  QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels).
- ``qat`` (with ``qat=QatSettings(Path("net.pt"))``, the model's PyTorch source): static
  after quantization-aware fine-tuning on the calibration rows (``qat.py``), beside the others.
- ``auto``: both, keeping the faster (p50 at the largest batch measured) of those within the
  budget; of two within 20% of each other's speed, the more accurate.

The graph is pre-processed first (onnxruntime's ``quant_pre_process``: shape inference and
graph optimization). Every candidate is measured on the eval rows next to its parent: accuracy
with labels, agreement with the parent without. A candidate that loses more than ``max_drop``
is not imported; when none is left, AccuracyDropError carries the report and the repository
stays as it was. Raises OptimizationError for a model onnxruntime cannot quantize (naming its
operators) and InvalidInputError for rows that do not fit the model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.convert.parity import quiet_logs
from modelport.errors import AccuracyDropError, OptimizationError, require
from modelport.manifest import Manifest
from modelport.optimize import lineage
from modelport.optimize.qat import WEIGHT_LEVELS, QatSettings, fine_tune
from modelport.optimize.report import Candidate, Report
from modelport.optimize.rows import Rows, read_rows
from modelport.optimize.scoring import Judge, Measuring, task_of
from modelport.repository import ONNX_FILE, Repository, load, load_version, parse_ref

METHODS = ("auto", "dynamic", "static")
MIN_CALIBRATION_ROWS = 16
MIN_EVAL_ROWS = 20
CALIBRATION_BATCH = 32
# The float operators that onnxruntime's int8 tools rewrite, and those a graph holds only
# once quantized: a result without any of the latter quantized nothing.
_QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM"})
_INT8_OPS = frozenset(
    {
        "QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
        "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
        "QGemm", "QAttention", "DynamicQuantizeLSTM", "QLinearAdd", "QLinearMul",
    }
)  # fmt: skip


@dataclass(frozen=True)
class QuantizeResult:
    manifest: Manifest
    report: Report
    method: str


def quantize(
    repo: Repository,
    ref: str,
    eval_rows: Path,
    *,
    calibration: Path | None = None,
    labels: str | None = None,
    method: str = "auto",
    max_drop: float = 0.01,
    name: str | None = None,
    per_channel: bool = True,
    qat: QatSettings | None = None,
    measuring: Measuring | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> QuantizeResult:
    """Quantize model ``ref`` ("name" or "name:version") to int8 and import the best result
    within ``max_drop`` as the next version of ``name`` (default: the same model)."""
    measuring = measuring or Measuring()
    if method not in METHODS:
        raise OptimizationError(f"unknown method {method!r}; expected {', '.join(METHODS)}")
    if not 0 <= max_drop <= 1:
        raise OptimizationError(f"max_drop must be between 0 and 1, got {max_drop}")
    require("onnxruntime.quantization", "optimize")
    model_name, version = parse_ref(ref)
    target = lineage.check_target(repo, name or model_name)
    parent = repo.manifest(model_name, version)
    if parent.runtime != "onnx":
        raise OptimizationError(
            f"{parent.name}:{parent.version} is a {parent.runtime} model: quantize works on ONNX "
            "models; import the framework model (scikit-learn, PyTorch) to get one"
        )
    folder = repo.version_dir(parent.name, parent.version)
    _check_quantizable(folder / ONNX_FILE, f"{parent.name}:{parent.version}")
    methods = ["dynamic", "static"] if method == "auto" else [method]
    methods += ["qat"] if qat is not None else []
    with load_version(folder, measuring.load_options()) as fp32:
        task = task_of(fp32.signature)
        evaluation = read_rows(eval_rows, fp32.signature, labels, MIN_EVAL_ROWS, "evaluate")
        calibrating = None
        if calibration is not None and ("static" in methods or qat is not None):
            calibrating = read_rows(
                calibration, fp32.signature, None, MIN_CALIBRATION_ROWS, "calibrate"
            )
        elif method == "static" or qat is not None:
            raise OptimizationError(
                "static quantization calibrates activation ranges on real rows (and --qat "
                "fine-tunes on them): pass calibration rows (CLI: --calibration FILE, at least "
                f"{MIN_CALIBRATION_ROWS})"
            )
        log(f"measuring {parent.name}:{parent.version} (fp32) on {evaluation.count} rows")
        judge = Judge(task, evaluation, fp32, measuring)
        report = Report(
            f"quantize {parent.name}:{parent.version}",
            judge.metric,
            judge.candidate("fp32", fp32, folder / ONNX_FILE),
            max_drop=max_drop,
        )
    if calibrating is None and "static" in methods:
        methods.remove("static")
        report.notes.append("static skipped: no calibration rows (--calibration)")
    with tempfile.TemporaryDirectory() as tmp:
        source = _preprocess(folder / ONNX_FILE, Path(tmp), report.notes, log)
        built: dict[str, Path] = {}
        failures: list[str] = []
        for each in methods:
            log(f"quantizing: int8 {each}")
            path = Path(tmp) / f"{each}.onnx"
            try:
                if each == "qat":
                    assert qat is not None
                    assert calibrating is not None
                    log(f"fine-tuning {qat.source.name}, int8 in the loop, {qat.epochs} epochs")
                    with load_version(folder, measuring.load_options()) as fp32:
                        tuned = fine_tune(qat, fp32, calibrating, Path(tmp), per_channel)
                    tuned = _preprocess(tuned, Path(tmp), report.notes, log)
                    _quantize("static", tuned, path, calibrating, per_channel)
                else:
                    _quantize(each, source, path, calibrating, per_channel)
                _check_quantized(path, f"{parent.name}:{parent.version}")
            except OptimizationError as exc:
                if len(methods) == 1:
                    raise
                failures.append(str(exc))
                report.notes.append(f"{each} failed: {exc}")
                continue
            log(f"measuring int8 {each}")
            with load(path, options=measuring.load_options()) as model:
                report.candidates.append(judge.candidate(f"int8 {each}", model, path))
            built[f"int8 {each}"] = path
        if not report.candidates:
            raise OptimizationError(" / ".join(dict.fromkeys(failures)))
        fits = [c for c in report.candidates if report.within_budget(c)]
        if not fits:
            worst = min(c.drop for c in report.candidates)
            raise AccuracyDropError(
                f"every int8 candidate loses more {report.metric} than allowed ({worst * 100:.2f} "
                f"points at best, budget {max_drop * 100:.2f}): nothing imported; raise "
                "--max-drop, calibrate on more representative rows, or keep the fp32 model",
                report,
            )
        chosen = _choose(fits, max(measuring.batch_sizes))
        report.chosen = chosen.label
        settings = _settings(chosen.label.split()[-1], per_channel, source != folder / ONNX_FILE)
        if settings["method"] == "qat" and qat is not None:
            settings["qat"] = qat.lineage()
        data = {"eval": {**evaluation.lineage(), "labels": labels}}
        if calibrating is not None and settings["method"] in ("static", "qat"):
            data["calibration"] = calibrating.lineage()
        manifest = lineage.publish(
            repo,
            target,
            built[chosen.label].read_bytes(),
            parent,
            f"{parent.name}:{parent.version} quantized to {chosen.label}",
            {
                "method": "quantize",
                "settings": settings,
                "data": data,
                "report": report.to_dict(),
                "tools": lineage.tools("onnxruntime", "onnx"),
            },
        )
    return QuantizeResult(manifest, report, settings["method"])


def _choose(fits: list[Candidate], batch: int) -> Candidate:
    """The fastest at ``batch``; among those within 20% of it (timing noise on a shared
    machine), the one that loses least."""
    fastest = min(c.p50_ms[batch] for c in fits)
    close = [c for c in fits if c.p50_ms[batch] <= fastest * 1.2]
    return min(close, key=lambda c: (c.drop, c.p50_ms[batch]))


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    """Run in ``folder``: onnxruntime's symbolic shape inference, when it cannot finish, saves
    its partial model as ``sym_shape_infer_temp.onnx`` (and external data) in the current
    directory, wherever that is. The process's directory changes meanwhile, as quantize
    runs from the command line, not among threads that rely on it."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _preprocess(source: Path, folder: Path, notes: list[str], log: Callable[[str], Any]) -> Path:
    """Shape inference and graph optimization before quantizing; the original on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log("pre-processing the graph")
    target = folder / f"{source.stem}-preprocessed.onnx"
    try:
        with quiet_logs(), _working_directory(folder):
            quant_pre_process(str(source.resolve()), str(target.resolve()))
    except Exception as exc:
        notes.append(f"pre-processing skipped ({type(exc).__name__}: {str(exc)[:120]})")
        return source
    return target


def _quantize(
    method: str, source: Path, target: Path, rows: Rows | None, per_channel: bool
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    try:
        with quiet_logs():
            if method == "dynamic":
                quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
                return
            assert rows is not None
            batches = iter(rows.batches(CALIBRATION_BATCH))

            class Reader(CalibrationDataReader):  # type: ignore[misc]
                def get_next(self) -> dict[str, Any] | None:
                    return next(batches, None)

            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=True,  # 7-bit weights: see qat.WEIGHT_LEVELS
            )
    except Exception as exc:
        raise OptimizationError(
            f"onnxruntime could not quantize ({method}): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc


def _operators(path: Path) -> set[tuple[str, str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {(node.domain if node.domain not in ("", "ai.onnx") else "", node.op_type)
            for node in graph.node}  # fmt: skip


def _check_quantizable(path: Path, ref: str) -> None:
    """Refuse early, naming the operators, a model with nothing int8 could speed up."""
    ops = _operators(path)
    if any(domain == "" and op in _QUANTIZABLE for domain, op in ops):
        return
    theirs = sorted(f"{domain}.{op}" if domain else op for domain, op in ops)
    raise OptimizationError(
        f"{ref}: onnxruntime quantizes none of its operators ({', '.join(theirs)}); int8 "
        f"covers {', '.join(sorted(_QUANTIZABLE))}. The fp32 model stays as it is"
    )


def _check_quantized(path: Path, ref: str) -> None:
    if not any(op in _INT8_OPS for _, op in _operators(path)):
        raise OptimizationError(
            f"{ref}: onnxruntime left every operator in float (nothing was quantized); the fp32 "
            "model stays as it is"
        )


def _settings(method: str, per_channel: bool, preprocessed: bool) -> dict[str, Any]:
    common = {"method": method, "weight_type": "int8", "preprocessed": preprocessed}
    if method == "dynamic":
        return {**common, "activations": "quantized at run time (uint8)", "per_channel": False}
    return {**common, "format": "QDQ", "activation_type": "uint8", "per_channel": per_channel,
            "calibrate_method": "MinMax",
            "weight_range": [-WEIGHT_LEVELS, WEIGHT_LEVELS]}  # fmt: skip
