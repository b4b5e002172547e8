"""modelport distill: a real PyTorch student trained on a teacher's outputs, then imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.errors import OptimizationError, UntrustedArtifactError
from modelport.optimize.distill import Training, distill
from modelport.optimize.scoring import Measuring
from modelport.optimize.students import StudentSpec
from optimize_models import digits_cnn_repo

QUICK = Measuring(seconds=0.05)
SHORT = Training(max_epochs=40, patience=5)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cnn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_cnn_repo(tmp_path_factory)


@pytest.mark.slow
def test_the_digits_cnn_distils_into_an_mlp(cnn_root: Path) -> None:
    repo = modelport.Repository.open(cnn_root / "models")
    result = distill(repo, "digits-cnn", cnn_root / "digits.npy", StudentSpec.parse("mlp:64"),
                     name="cnn-student", training=SHORT, measuring=QUICK)  # fmt: skip
    teacher, (student,) = result.report.baseline, result.report.candidates
    assert result.report.metric == "agreement"
    assert student.agreement >= 0.95  # on the 20% of rows held out of training
    assert student.p50_ms[32] < teacher.p50_ms[32]
    assert 1 <= result.best_epoch <= result.epochs <= SHORT.max_epochs
    manifest = repo.manifest("cnn-student")
    assert manifest.signature == repo.manifest("digits-cnn").signature  # a drop-in replacement
    lineage = manifest.metadata["lineage"]
    assert lineage["method"] == "distill"
    assert lineage["parent"]["name"] == "digits-cnn"
    assert lineage["settings"]["student"] == "mlp:64"
    assert lineage["settings"]["best_epoch"] == result.best_epoch
    assert lineage["data"]["train"]["rows"] == 1797
    assert lineage["report"]["candidates"][0]["agreement"] == round(student.agreement, 6)
    x = np.load(cnn_root / "digits.npy")[:300]
    ours = repo.load("cnn-student").predict(x)["output"].argmax(axis=1)
    theirs = repo.load("digits-cnn").predict(x)["output"].argmax(axis=1)
    assert np.mean(ours == theirs) > 0.9


def test_a_classifier_with_label_and_probabilities_keeps_both(
    repo: modelport.Repository, digits_pipeline: Any, digits: Any, tmp_path: Path
) -> None:
    x, y = digits
    modelport.add_model(repo, "digits", digits_pipeline, sample_input=x[:32])
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "eval.npz", input=x[::3], digit=y[::3])
    result = distill(repo, "digits", tmp_path / "x.npy", StudentSpec.parse("mlp:32"),
                     eval_rows=tmp_path / "eval.npz", labels="digit", training=SHORT,
                     measuring=QUICK)  # fmt: skip
    assert result.report.metric == "accuracy"
    assert result.report.candidates[0].score > 0.9
    assert result.manifest.version == 2
    assert result.manifest.signature == repo.manifest("digits:1").signature
    out = repo.load("digits").predict(x[:4])
    assert out["label"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(axis=1))


def test_labels_in_the_training_rows_score_the_held_out_ones(
    repo: modelport.Repository, digits_pipeline: Any, digits: Any, tmp_path: Path
) -> None:
    x, y = digits
    modelport.add_model(repo, "digits", digits_pipeline, sample_input=x[:32])
    np.savez(tmp_path / "rows.npz", input=x, digit=y)
    result = distill(repo, "digits", tmp_path / "rows.npz", StudentSpec.parse("mlp:32"),
                     labels="digit", training=SHORT, measuring=QUICK)  # fmt: skip
    assert result.report.metric == "accuracy"
    assert result.report.candidates[0].score > 0.85
    assert result.report.candidates[0].agreement > 0.85
    eval_data = result.manifest.metadata["lineage"]["data"]["eval"]
    assert eval_data == {"held_out_rows": 359, "labels": "digit"}


def test_a_regressor_is_fitted_to_its_teachers_values(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    modelport.add_model(repo, "score", mlp_onnx((4, 16, 1), seed=2))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((600, 4)))
    result = distill(repo, "score", tmp_path / "x.npy", StudentSpec.parse("mlp:32,32"),
                     training=Training(max_epochs=60, patience=10), measuring=QUICK)  # fmt: skip
    assert result.report.metric == "r2 vs parent"
    assert result.report.candidates[0].score > 0.9


@pytest.mark.parametrize("spec", ["cnn:3", "mlp", "mlp:", "mlp:0", "mlp:64,x", "mlp:9999999"])
def test_a_student_spec_that_does_not_parse_is_refused(spec: str) -> None:
    with pytest.raises(OptimizationError, match=f"student spec '{spec}' does not parse: use mlp:"):
        StudentSpec.parse(spec)


def test_cli_trains_with_progress_and_refuses_bad_input(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    modelport.add_model(repo, "score", mlp_onnx((4, 16, 3), seed=2))
    rows = tmp_path / "x.npy"
    np.save(rows, np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32))
    module = tmp_path / "tiny.py"
    module.write_text(
        "from torch import nn\n\n"
        "class Tiny(nn.Sequential):\n"
        "    def __init__(self, n_in, n_out):\n"
        "        super().__init__(nn.Linear(n_in, 24), nn.Tanh(), nn.Linear(24, n_out))\n\n"
        "class NotAModule:\n"
        "    def __init__(self, n_in, n_out):\n"
        "        pass\n"
    )
    ok = cli("distill", "score", "--repo", repo.root, "--data", rows, "--student-module",
             f"{module}:Tiny", "--max-epochs", "12", "--name", "small",
             "--bench-seconds", "0.05")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "epoch 1/12 [" in ok.stderr
    assert "imported small:1 (student " in ok.stderr
    assert ok.stdout.splitlines()[4].startswith("student")
    result = cli("distill", "score", "--repo", repo.root, "--data", rows, "--student", "mlp:a")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: student spec 'mlp:a' does not parse: use mlp:W1,W2,... with each hidden layer's "
        "width from 1 to 65536 (e.g. mlp:256,128), or pass your own module with "
        "--student-module file.py:Class"
    ]
    refusals = {
        f"{module}:NotAModule": "NotAModule(...) is a NotAModule, not a torch.nn.Module",
        f"{tmp_path}/missing.py:X": "missing.py does not exist",
        "tiny": "student module 'tiny' does not parse",
    }
    for spec, message in refusals.items():
        with pytest.raises(OptimizationError, match=re.escape(message)):
            distill(repo, "score", rows, StudentSpec(module=spec), training=SHORT)
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((10, 4), np.float32))
    with pytest.raises(OptimizationError, match="10 rows is too few to distill; at least 50"):
        distill(repo, "score", few, StudentSpec((8,)))
    assert repo.names() == ["score", "small"]
    assert repo.versions("score") == [1]


def test_teachers_a_student_cannot_imitate_are_refused(
    repo: modelport.Repository, code_folder: Path, tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    modelport.add_model(repo, "any-width", model.SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros((60, 2), np.float32))
    with pytest.raises(OptimizationError, match=r"input 'x' is float32 of shape \[-1, -1\]"):
        distill(repo, "any-width", tmp_path / "x.npy", StudentSpec((8,)))
    modelport.add_model(repo, "doubler", code_folder, trust_code=True)
    with pytest.raises(UntrustedArtifactError):
        distill(repo, "doubler", tmp_path / "x.npy", StudentSpec((8,)))
    assert repo.versions("doubler") == [1]


def test_cli_defaults_are_the_librarys() -> None:
    from dataclasses import fields

    from modelport.cli.optimize import distill as command
    from modelport.cli.optimize import quantize as quantize_command
    from modelport.optimize.qat import QatSettings

    defaults = {p.name: p.default for p in command.params}
    training = {f.name: f.default for f in fields(Training)}
    for option in ("temperature", "patience"):
        assert defaults[option] == training[option]
    assert defaults["max_epochs"] == training["max_epochs"]
    assert defaults["bench_seconds"] == Measuring().seconds
    quantize_defaults = {p.name: p.default for p in quantize_command.params}
    assert quantize_defaults["qat_epochs"] == QatSettings(Path("x")).epochs
    assert quantize_defaults["bench_seconds"] == Measuring().seconds


def test_a_code_model_teaches_an_onnx_student(
    repo: modelport.Repository, code_folder: Path, tmp_path: Path
) -> None:
    modelport.add_model(repo, "doubler", code_folder, trust_code=True)  # y = 2x, [-1, 2]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((300, 2)))
    result = distill(repo, "doubler", tmp_path / "x.npy", StudentSpec((16,)), trust_code=True,
                     training=SHORT, measuring=QUICK)  # fmt: skip
    assert result.report.candidates[0].agreement > 0.9  # which of the two is larger
    student = repo.manifest("doubler:2")
    assert student.runtime == "onnx"
    assert student.signature == repo.manifest("doubler:1").signature
