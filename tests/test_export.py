"""``modelport export``: the mobile ORT file (run with onnxruntime for parity), and what both
exports refuse: code models, folders that exist, unknown versions; never half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.export.mobile import export_mobile
from modelport.export.web import export_web

CODE = """
class Echo:
    signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
                 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}

    def load(self):
        pass

    def predict(self, batch):
        return {"y": batch["x"]}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> modelport.Repository:
    root = tmp_path_factory.mktemp("export")
    repo = modelport.Repository.init(root / "models")
    modelport.add_model(repo, "mlp", mlp_onnx((16, 32, 32, 5), seed=1))
    code = root / "echo"
    code.mkdir()
    (code / "model.py").write_text(CODE)
    modelport.add_model(repo, "echo", code, trust_code=True)
    return repo


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "export", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_ort_file_runs_like_the_model(repo: modelport.Repository, tmp_path: Path) -> None:
    import onnxruntime as ort

    done = cli("mobile", "mlp", "--repo", str(repo.root), "--out", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "mlp:1"
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["ort_bytes"] == (tmp_path / "m" / "model.ort").stat().st_size
    assert any(op.startswith("ai.onnx;") for op in report["operators"])
    described = json.loads((tmp_path / "m" / "mobile.json").read_text())
    assert (described["name"], described["version"], described["file"]) == ("mlp", 1, "model.ort")
    x = np.random.default_rng(5).standard_normal((7, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m" / "model.ort"))
    with repo.load("mlp") as model:
        np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x)["logits"],
                                   atol=1e-4)  # fmt: skip
    config = (tmp_path / "m" / "model.required_operators_and_types.config").read_text()
    assert str(tmp_path) not in config  # no temporary paths in what ships


def test_int8_takes_the_quantized_version(repo: modelport.Repository, tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    with pytest.raises(modelport.ModelNotFoundError, match="no quantized version of mlp:1"):
        export_mobile(repo, "mlp", tmp_path / "m", int8=True)
    source = repo.version_dir("mlp", 1) / "model.onnx"
    quantize_dynamic(str(source), str(tmp_path / "q.onnx"))
    made = modelport.add_model(repo, "mlp-int8", tmp_path / "q.onnx")
    manifest_file = repo.version_dir("mlp-int8", made.version) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["metadata"]["lineage"] = {
        "method": "quantize",
        "parent": {"name": "mlp", "version": 1},
    }
    manifest_file.write_text(json.dumps(manifest))  # as 'modelport quantize' writes it
    result = export_mobile(repo, "mlp", tmp_path / "m", int8=True)
    assert (result.name, result.version) == ("mlp-int8", 1)
    assert json.loads((tmp_path / "m" / "mobile.json").read_text())["int8"] is True


@pytest.mark.parametrize("kind", ["web", "mobile"])
def test_a_code_model_is_explained(repo: modelport.Repository, tmp_path: Path, kind: str) -> None:
    done = cli(kind, "echo", "--repo", str(repo.root), "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1  # one line
    assert "only ONNX models" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["web", "mobile"])
def test_an_existing_folder_is_kept(repo: modelport.Repository, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    done = cli(kind, "mlp", "--repo", str(repo.root), "--out", str(out))
    assert done.returncode == 1
    assert "already exists; pass --force" in done.stderr
    forced = cli(kind, "mlp", "--repo", str(repo.root), "--out", str(out), "--force")
    assert forced.returncode == 1  # --force replaces only an earlier export
    assert (out / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # nothing half-written beside


def test_force_replaces_an_earlier_bundle(repo: modelport.Repository, tmp_path: Path) -> None:
    out = export_web(repo, "mlp", tmp_path / "site")
    (out / "model.onnx").write_bytes(b"stale")
    export_web(repo, "mlp", out, force=True, service="http://models.example:8000")
    described = json.loads((out / "manifest.json").read_text())
    assert described["service"] == "http://models.example:8000/"
    assert (out / "model.onnx").read_bytes() == (
        repo.version_dir("mlp", 1) / "model.onnx"
    ).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("mlp:7",), "model 'mlp' has no version 7; it has 1"),
        (("nope",), "no model named 'nope'"),
        (("../x",), "invalid model name"),
        (("mlp", "--service", "ftp://x"), "--service must be an http(s) URL"),
        (("mlp", "--budget-ms", "0"), "budget_ms must be > 0"),
    ],
)
def test_bad_requests_get_one_clear_line(
    repo: modelport.Repository, tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    done = cli("web", *args, "--repo", str(repo.root), "--out", str(tmp_path / "o"))
    assert done.returncode in (1, 2)
    assert words in done.stderr
    assert not (tmp_path / "o").exists()
