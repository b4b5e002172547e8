"""Distillation: a small PyTorch student trained to imitate a teacher model on unlabelled rows.

    result = distill(repo, "digits-cnn", Path("rows.npy"), StudentSpec.parse("mlp:128,64"))
    result.manifest.version           # the student, imported as the next version
    print(result.report.table())      # agreement with the teacher, size, latency

The teacher (any model in the repository: ONNX or a code model) predicts every row once. A
classifier's student learns the teacher's soft targets (its logits, or the log of its
probabilities) softened by ``temperature``, with the KL divergence Hinton et al. describe; a
regressor's student learns the teacher's outputs by mean squared error. A share of the rows
(``validation_fraction``) is held out: training stops when their loss has not improved for
``patience`` epochs, and the best epoch's weights are kept. The student is exported to ONNX
with the teacher's input and output names (parity checked against PyTorch) and measured on
the held-out rows (or ``eval_rows``) next to its teacher: accuracy when ``labels`` names a
column of those rows, else agreement.
Training uses CUDA when torch sees a GPU.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.config import LoadOptions
from modelport.errors import OptimizationError, require
from modelport.manifest import Manifest
from modelport.model import Model
from modelport.optimize import lineage
from modelport.optimize.report import Report
from modelport.optimize.rows import Rows, read_rows
from modelport.optimize.scoring import Judge, Measuring, Task, scores_output, task_of
from modelport.optimize.students import StudentSpec, exported
from modelport.repository import ONNX_FILE, Repository, load, load_version, parse_ref
from modelport.signature import Signature, TensorSpec

MIN_ROWS = 50


@dataclass(frozen=True)
class Training:
    """How the student learns. ``max_epochs`` bounds a run that keeps improving."""

    temperature: float = 2.0
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    validation_fraction: float = 0.2
    seed: int = 0
    # On CPU: small students train many times faster on one thread than on several, which
    # wait on each other at every tiny matrix product.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.max_epochs < 1 or self.patience < 1:
            raise OptimizationError("temperature must be > 0, max_epochs and patience >= 1")
        if not 0 < self.validation_fraction < 1 or self.batch_size < 1:
            raise OptimizationError("validation_fraction must be in (0, 1), batch_size >= 1")


@dataclass(frozen=True)
class Epoch:
    """What the progress callback gets after each epoch."""

    number: int
    max_epochs: int
    train_loss: float
    val_loss: float
    val_agreement: float
    best_epoch: int


@dataclass
class Plan:
    """What the student learns and how its outputs become the teacher's."""

    classifier: bool
    outputs: list[tuple[str, TensorSpec]]
    mean: np.ndarray
    scale: np.ndarray
    target_mean: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    target_scale: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))


@dataclass(frozen=True)
class DistillResult:
    manifest: Manifest
    report: Report
    epochs: int
    best_epoch: int


def distill(
    repo: Repository,
    teacher_ref: str,
    data: Path,
    student: StudentSpec,
    *,
    eval_rows: Path | None = None,
    labels: str | None = None,
    name: str | None = None,
    training: Training | None = None,
    measuring: Measuring | None = None,
    trust_code: bool = False,
    progress: Callable[[Epoch], Any] = lambda _: None,
) -> DistillResult:
    """Train ``student`` on ``teacher_ref``'s outputs for the rows in ``data`` and import it
    as the next version of ``name`` (default: the teacher's model)."""
    require("torch", "torch")
    training = training or Training()
    measuring = measuring or Measuring()
    teacher_name, version = parse_ref(teacher_ref)
    target = lineage.check_target(repo, name or teacher_name)
    manifest = repo.manifest(teacher_name, version)
    folder = repo.version_dir(manifest.name, manifest.version)
    ref = f"{manifest.name}:{manifest.version}"
    spec = _check_teacher(manifest.signature, ref)
    options = LoadOptions(runtime=measuring.load_options().runtime, trust_code=trust_code)
    with load_version(folder, options) as teacher:
        task = task_of(teacher.signature)
        # --labels names a column of the eval rows, or without them of the training rows (the
        # student never sees it: it learns the teacher's answers; the held-out rows are scored)
        in_data = labels if eval_rows is None else None
        rows = read_rows(data, teacher.signature, in_data, MIN_ROWS, "distill")
        given = None  # read before training: a bad file fails now, not after it
        if eval_rows is not None:
            given = read_rows(eval_rows, teacher.signature, labels, 1, "evaluate")
        outputs = _teacher_outputs(teacher, rows)
        plan, targets = _plan(teacher.signature, outputs, task, rows.inputs[spec.name], ref)
        split = np.random.default_rng(training.seed).permutation(rows.count)
        held = max(1, round(rows.count * training.validation_fraction))
        val, train = split[:held], split[held:]
        x = rows.inputs[spec.name].reshape(rows.count, -1).astype(np.float32)
        net = student.build(x.shape[1], targets.shape[1])
        epochs, best = _train(net, plan, (x, targets), train, val, training, progress)
        evaluation = given if given is not None else rows.take(val)
        judge = Judge(task, evaluation, teacher, measuring)
        report = Report(f"distill {ref} into {student.describe()}", judge.metric,
                        judge.candidate("teacher", teacher, _size_of(folder)))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILE
        path.write_bytes(_export(net, plan, rows.inputs[spec.name][:32], teacher.signature))
        with load(path, options=measuring.load_options()) as distilled:
            report.candidates.append(judge.candidate("student", distilled, path))
        report.chosen = "student"
        if eval_rows is None:
            report.notes.append(f"scored on the {held} held-out rows of {data.name}")
        imported = lineage.publish(
            repo,
            target,
            path.read_bytes(),
            manifest,
            f"{ref} distilled into {student.describe()}",
            {
                "method": "distill",
                "settings": {
                    "student": student.describe(),
                    "targets": "soft (KL, temperature)" if plan.classifier else "values (MSE)",
                    "temperature": training.temperature if plan.classifier else None,
                    "epochs": epochs,
                    "best_epoch": best,
                    "validation_fraction": training.validation_fraction,
                    "seed": training.seed,
                },
                "data": {
                    "train": rows.lineage(),
                    "eval": {**evaluation.lineage(), "labels": labels}
                    if eval_rows is not None
                    else {"held_out_rows": held, "labels": labels},
                },
                "report": report.to_dict(),
                "tools": lineage.tools("torch", "onnxruntime"),
            },
        )
    return DistillResult(imported, report, epochs, best)


def _size_of(folder: Path) -> Path:
    """The teacher's artifact whose size is reported: its ONNX file, or its largest file."""
    if (folder / ONNX_FILE).is_file():
        return folder / ONNX_FILE
    files = [p for p in folder.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _check_teacher(signature: Signature, ref: str) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise OptimizationError(
            f"{ref} takes {len(signature.inputs)} inputs ({', '.join(signature.input_names)}): "
            "a student takes one numeric input"
        )
    spec = signature.inputs[0]
    if spec.dtype in ("string", "bool") or -1 in spec.shape[1:] or not spec.shape:
        raise OptimizationError(
            f"{ref}: input {spec.name!r} is {spec.dtype} of shape {list(spec.shape)}; a student "
            "needs numbers with fixed dims after the batch. A code model must declare its "
            "signature (a `signature` attribute, or --sample-input at import)"
        )
    return spec


def _teacher_outputs(teacher: Model, rows: Rows) -> dict[str, np.ndarray]:
    parts = [teacher.predict(batch) for batch in rows.batches(256)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _plan(
    signature: Signature, outputs: dict[str, np.ndarray], task: Task, x: np.ndarray, ref: str
) -> tuple[Plan, np.ndarray]:
    """What each teacher output becomes, and the student's targets (logits or values)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=0).astype(np.float32)
    scale = np.maximum(flat.std(axis=0), 1e-6).astype(np.float32)
    plan = Plan(task.kind == "classifier", [], mean, scale)
    if task.kind == "regressor":
        spec = next(s for s in signature.outputs if s.name == task.output)
        if len(signature.outputs) != 1 or len(spec.shape) > 2:
            raise OptimizationError(
                f"{ref}: a regressor's student reproduces one output of shape [-1] or [-1, k]; "
                f"this teacher has {', '.join(signature.output_names)}"
            )
        values = outputs[spec.name].reshape(len(x), -1).astype(np.float64)
        plan.target_mean = values.mean(axis=0).astype(np.float32)
        plan.target_scale = np.maximum(values.std(axis=0), 1e-6).astype(np.float32)
        plan.outputs = [("values", spec)]
        return plan, ((values - plan.target_mean) / plan.target_scale).astype(np.float32)
    soft = scores_output(signature)
    if soft is not None:
        scores = outputs[soft].astype(np.float64)
        probabilities = scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1, atol=1e-3)
        logits = np.log(np.clip(scores, 1e-7, 1)) if probabilities else scores
        kind = "probabilities" if probabilities else "logits"
    else:  # a label alone: the student learns the labels as certain
        labels = outputs[task.output]
        if labels.dtype.kind not in "iu" or labels.min() < 0:
            raise OptimizationError(f"{ref}: output {task.output!r} is not class numbers")
        classes = int(labels.max()) + 1
        logits = np.where(np.eye(classes)[labels.reshape(-1).astype(int)] > 0, 10.0, -10.0)
        soft, kind = task.output, "label"
    for spec in signature.outputs:
        if spec.name == soft:
            plan.outputs.append((kind, spec))
        elif _is_class_number(spec):
            plan.outputs.append(("label", spec))
        else:
            raise OptimizationError(
                f"{ref}: output {spec.name!r} ({spec.dtype} {list(spec.shape)}) is neither the "
                f"class scores ({task.output!r}) nor a class number: a student cannot give it"
            )
    return plan, logits.astype(np.float32)


def _is_class_number(spec: TensorSpec) -> bool:
    return spec.dtype in ("int64", "int32") and (
        len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1)
    )


def _train(
    net: Any,
    plan: Plan,
    data: tuple[np.ndarray, np.ndarray],
    train: np.ndarray,
    val: np.ndarray,
    training: Training,
    progress: Callable[[Epoch], Any],
) -> tuple[int, int]:
    """Fit ``net`` in place; return the epochs run and the best epoch (whose weights it keeps)."""
    import torch

    torch.manual_seed(training.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(training.threads)
    try:
        return _epochs(torch, net, plan, data, train, val, training, progress, device)
    finally:
        torch.set_num_threads(threads)


def _epochs(
    torch: Any,
    net: Any,
    plan: Plan,
    data: tuple[np.ndarray, np.ndarray],
    train: np.ndarray,
    val: np.ndarray,
    training: Training,
    progress: Callable[[Epoch], Any],
    device: Any,
) -> tuple[int, int]:
    x = (torch.from_numpy(data[0]) - torch.from_numpy(plan.mean)) / torch.from_numpy(plan.scale)
    y = torch.from_numpy(data[1])
    x, y, net = x.to(device), y.to(device), net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    temperature = training.temperature

    def loss_of(out: Any, target: Any) -> Any:
        if not plan.classifier:
            return torch.nn.functional.mse_loss(out, target)
        soft = torch.softmax(target / temperature, dim=1)
        log_student = torch.log_softmax(out / temperature, dim=1)
        kl = torch.nn.functional.kl_div(log_student, soft, reduction="batchmean")
        return kl * temperature**2

    train_index, val_index = torch.from_numpy(train).to(device), torch.from_numpy(val).to(device)
    best_loss, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, training.max_epochs + 1):
        net.train()
        total = 0.0
        order = train_index[torch.randperm(len(train_index), device=device)]
        for batch in order.split(training.batch_size):
            optimizer.zero_grad()
            loss = loss_of(net(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        net.eval()
        with torch.no_grad():
            out = net(x[val_index])
            val_loss = float(loss_of(out, y[val_index]))
            agreement = float((out.argmax(1) == y[val_index].argmax(1)).float().mean())
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        progress(Epoch(epoch, training.max_epochs, total / len(train), val_loss,
                       agreement if plan.classifier else float("nan"), best_epoch))  # fmt: skip
        if epoch - best_epoch >= training.patience:
            break
    net.load_state_dict(best_state)
    net.to("cpu")
    return epoch, best_epoch


def _export(net: Any, plan: Plan, sample: np.ndarray, signature: Signature) -> bytes:
    from modelport.convert.parity import Tolerance
    from modelport.convert.torch import torch_to_onnx

    return torch_to_onnx(
        exported(net, plan),
        sample,
        Tolerance(rtol=1e-3, atol=1e-4),  # softmax and argmax of float32 logits
        input_names=signature.input_names,
        output_names=signature.output_names,
    )
