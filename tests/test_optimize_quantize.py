"""modelport quantize: real onnxruntime int8 (dynamic, static QDQ), the accuracy gate, lineage."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.errors import (
    AccuracyDropError,
    InvalidInputError,
    ModelNotFoundError,
    OptimizationError,
)
from modelport.optimize.quantize import MIN_CALIBRATION_ROWS, quantize
from modelport.optimize.scoring import Measuring
from optimize_models import digits_cnn_repo

QUICK = Measuring(seconds=0.05)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def mlp_repo(repo: modelport.Repository) -> modelport.Repository:
    """The demo's MLP builder at a size a test can afford: 64-128-128-10."""
    modelport.add_model(repo, "mlp", mlp_onnx((64, 128, 128, 10), seed=0))
    return repo


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def cnn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_cnn_repo(tmp_path_factory) / "models"


@pytest.fixture(scope="module")
def digit_rows(cnn_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Calibration rows (no labels) and eval rows with labels ``y``, as the CNN takes them."""
    digits = np.load(cnn_repo.parent / "digits.npz")
    images, y = digits["input"], digits["y"]
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "calibration.npy", images[::7][:200])
    np.savez(folder / "eval.npz", input=images[1::2], y=y[1::2])
    return folder / "calibration.npy", folder / "eval.npz"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantized_digits_cnn_keeps_its_accuracy(
    cnn_repo: Path, digit_rows: tuple[Path, Path], method: str
) -> None:
    repo = modelport.Repository.open(cnn_repo)
    calibration, evaluation = digit_rows
    result = quantize(repo, "digits-cnn:1", evaluation, calibration=calibration, labels="y",
                      method=method, name=f"cnn-{method}", measuring=QUICK)  # fmt: skip
    report = result.report
    assert report.metric == "accuracy"
    assert report.baseline.score > 0.9
    (int8,) = report.candidates
    assert int8.label == f"int8 {method}"
    assert int8.drop <= 0.01
    assert int8.size_bytes < report.baseline.size_bytes / 2
    model = repo.load(f"cnn-{method}")
    x = np.load(evaluation)["input"][:5]
    assert model.predict(x)["output"].shape == (5, 10)
    assert result.manifest.metadata["lineage"]["settings"]["method"] == method


def test_auto_tries_both_and_records_lineage(
    mlp_repo: modelport.Repository, rows: Path, tmp_path: Path
) -> None:
    result = quantize(mlp_repo, "mlp", rows, calibration=rows, max_drop=0.2, measuring=QUICK)
    labels = [c.label for c in result.report.candidates]
    assert labels == ["int8 dynamic", "int8 static"]
    for candidate in result.report.candidates:  # weights are most of an MLP: about 4x
        assert result.report.baseline.size_bytes / candidate.size_bytes > 3
        assert candidate.agreement > 0.8
    assert result.report.chosen in labels
    manifest = mlp_repo.manifest("mlp")
    assert manifest.version == 2
    parent = mlp_repo.manifest("mlp:1")
    lineage = manifest.metadata["lineage"]
    assert lineage["parent"] == {"name": "mlp", "version": 1, "sha256": parent.artifacts}
    assert lineage["method"] == "quantize"
    assert lineage["settings"]["method"] == result.method
    digest = hashlib.sha256(rows.read_bytes()).hexdigest()
    assert lineage["data"]["eval"] == {"file": "rows.npy", "sha256": digest, "rows": 300,
                                       "labels": None}  # fmt: skip
    if result.method == "static":
        assert lineage["data"]["calibration"]["sha256"] == digest
    assert lineage["report"]["chosen"] == result.report.chosen
    assert lineage["report"]["metric"] == "agreement"
    assert "onnxruntime" in lineage["tools"]
    assert manifest.serving == parent.serving


def _outlier_mlp() -> bytes:
    """An MLP whose first weight matrix has one huge entry: int8 with one scale per tensor
    rounds every other weight to zero, and the model's answers fall apart."""
    from onnx import helper, numpy_helper

    model = helper.make_model(helper.make_graph([], "g", [], []))
    model.ParseFromString(mlp_onnx((64, 64, 10), seed=1))
    weights = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights[0, 0] = 1000.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w0"))
    return bytes(model.SerializeToString())


def test_max_drop_refuses_and_imports_nothing(
    repo: modelport.Repository, rows: Path, tmp_path: Path
) -> None:
    modelport.add_model(repo, "fragile", _outlier_mlp())
    page = tmp_path / "refused.html"
    result = cli("quantize", "fragile", "--repo", repo.root, "--eval", rows, "--method",
                 "dynamic", "--bench-seconds", "0.05", "--report", page)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "int8 dynamic" in result.stdout
    assert "over budget" in result.stdout
    assert "nothing imported" in result.stderr
    assert repo.versions("fragile") == [1]
    assert sorted(p.name for p in repo.root.iterdir()) == ["fragile"]  # no staging left
    assert "over budget" in page.read_text()
    with pytest.raises(AccuracyDropError) as raised:  # the library says the same
        quantize(repo, "fragile", rows, method="dynamic", max_drop=0.05, measuring=QUICK)
    assert raised.value.report.candidates[0].drop > 0.05  # type: ignore[attr-defined]


def test_cli_imports_the_result_and_prints_the_table(
    mlp_repo: modelport.Repository, rows: Path
) -> None:
    result = cli("quantize", "mlp:1", "--repo", mlp_repo.root, "--eval", rows, "--method",
                 "dynamic", "--max-drop", "0.2", "--name", "mlp-int8", "--bench-seconds",
                 "0.05")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "imported mlp-int8:1 (int8 dynamic)" in result.stderr
    header = result.stdout.splitlines()[1].split()
    assert header[:4] == ["model", "size", "p50", "b1"]
    assert mlp_repo.versions("mlp") == [1]
    assert mlp_repo.manifest("mlp-int8").metadata["lineage"]["parent"]["name"] == "mlp"


def test_a_model_without_quantizable_operators_stays_fp32(
    repo: modelport.Repository, digits_pipeline: Any, digits: Any, tmp_path: Path
) -> None:
    x, _ = digits
    modelport.add_model(repo, "digits", digits_pipeline, sample_input=x[:32])
    np.save(tmp_path / "x.npy", x[:100])
    with pytest.raises(
        OptimizationError, match=r"quantizes none of its operators \(.*LinearClassifier"
    ):
        quantize(repo, "digits", tmp_path / "x.npy", calibration=tmp_path / "x.npy",
                 measuring=QUICK)  # fmt: skip
    assert repo.versions("digits") == [1]


def test_bad_input_is_named_and_nothing_is_imported(
    mlp_repo: modelport.Repository, rows: Path, tmp_path: Path
) -> None:
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((50, 65), np.float32))
    with pytest.raises(InvalidInputError, match=r"input 'input': expected shape \[\?, 64\]"):
        quantize(mlp_repo, "mlp", wide, measuring=QUICK)
    table = tmp_path / "table.csv"
    table.write_text("a,b\n" + "1,2\n" * 30)
    with pytest.raises(InvalidInputError, match="labels column 'digit' is not there"):
        quantize(mlp_repo, "mlp", table, labels="digit", measuring=QUICK)
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((5, 64), np.float32))
    with pytest.raises(OptimizationError, match=f"5 rows is too few to calibrate; at least "
                       f"{MIN_CALIBRATION_ROWS}"):  # fmt: skip
        quantize(mlp_repo, "mlp", rows, calibration=few, method="static", measuring=QUICK)
    with pytest.raises(OptimizationError, match="static quantization calibrates"):
        quantize(mlp_repo, "mlp", rows, method="static", measuring=QUICK)
    with pytest.raises(ModelNotFoundError):
        quantize(mlp_repo, "nope", rows, measuring=QUICK)
    assert mlp_repo.versions("mlp") == [1]


def test_a_code_model_is_refused(
    repo: modelport.Repository, code_folder: Path, tmp_path: Path
) -> None:
    modelport.add_model(repo, "doubler", code_folder, trust_code=True)
    np.save(tmp_path / "x.npy", np.zeros((30, 2), np.float32))
    result = cli("quantize", "doubler", "--repo", repo.root, "--eval", tmp_path / "x.npy")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: doubler:1 is a python model")


def test_the_report_is_drawn_in_chromium(
    mlp_repo: modelport.Repository, rows: Path, tmp_path: Path
) -> None:
    from report_browser import figures_drawn

    result = quantize(mlp_repo, "mlp", rows, calibration=rows, max_drop=0.2, measuring=QUICK)
    page = tmp_path / "report.html"
    result.report.write_html(page)
    drawn = figures_drawn(page)
    assert [title for title, _, _ in drawn] == [
        "Accuracy vs speed",
        "Size",
        "Latency by batch size",
    ]
    for title, width, marks in drawn:
        assert width > 200, title
        assert marks > 10, title  # axes, ticks and the data's own marks
    assert json.loads(json.dumps(result.report.to_dict()))["chosen"] == result.report.chosen


def _digits_mlp(seed: int, digits: Any, epochs: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x, y = digits
    rows, labels = torch.from_numpy(x / 16), torch.from_numpy(y)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(rows)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(rows[batch]), labels[batch]).backward()
            optimizer.step()
    return net.eval()


@pytest.mark.slow
def test_qat_fine_tunes_the_pytorch_source(
    repo: modelport.Repository, digits: Any, tmp_path: Path
) -> None:
    import torch

    from modelport.errors import UntrustedArtifactError
    from modelport.optimize.qat import QatSettings

    net = _digits_mlp(0, digits, epochs=3)
    source = tmp_path / "net.pt"
    torch.save(net, source)
    x, y = digits
    modelport.add_model(repo, "mlp", net, sample_input=x[:32] / 16)
    np.save(tmp_path / "calibration.npy", x[::5] / 16)
    np.savez(tmp_path / "eval.npz", input=x[1::2] / 16, y=y[1::2])
    run: dict[str, Any] = {"calibration": tmp_path / "calibration.npy", "labels": "y",
                           "method": "static", "measuring": QUICK}  # fmt: skip
    result = quantize(repo, "mlp", tmp_path / "eval.npz",
                      qat=QatSettings(source, trust_pickle=True, epochs=2), **run)  # fmt: skip
    assert [c.label for c in result.report.candidates] == ["int8 static", "int8 qat"]
    qat = result.report.candidates[1]
    assert qat.drop <= 0.01
    assert qat.size_bytes < result.report.baseline.size_bytes * 0.6  # a tiny model: headers
    if result.method == "qat":
        settings = repo.manifest("mlp").metadata["lineage"]["settings"]
        assert settings["qat"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(UntrustedArtifactError, match="trust_pickle"):
        quantize(repo, "mlp:1", tmp_path / "eval.npz", qat=QatSettings(source), **run)
    other = tmp_path / "other.pt"
    torch.save(_digits_mlp(1, digits, epochs=1), other)
    result = quantize(repo, "mlp:1", tmp_path / "eval.npz",
                      qat=QatSettings(other, trust_pickle=True), **run)  # fmt: skip
    assert [c.label for c in result.report.candidates] == ["int8 static"]
    assert any("other.pt does not compute what mlp:1 computes" in n for n in result.report.notes)


def test_pre_processing_that_fails_leaves_no_file_behind(
    repo: modelport.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph onnxruntime's symbolic shape inference cannot finish (an ai.onnx.ml Scaler
    before a MatMul): it would save sym_shape_infer_temp.onnx in the current directory."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node(
            "Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.0] * 4, scale=[2.0] * 4
        ),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[w],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    modelport.add_model(repo, "scaled", model.SerializeToString())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    np.save(
        tmp_path / "x.npy", np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    )
    result = quantize(repo, "scaled", tmp_path / "x.npy", method="dynamic", max_drop=1.0,
                      measuring=QUICK)  # fmt: skip
    assert list(work.iterdir()) == []
    assert Path.cwd() == work
    assert result.report.candidates[0].label == "int8 dynamic"
