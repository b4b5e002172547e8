"""``modelport bench``: the model in a process really held to a device's CPU and memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.errors import ModelportError
from modelport.export.device import DeviceProfile, bench_on_device, parse_memory


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> modelport.Repository:
    repo = modelport.Repository.init(tmp_path_factory.mktemp("device") / "models")
    modelport.add_model(repo, "mlp", mlp_onnx((512, 1024, 1024, 10), seed=2))  # ~6 MB
    return repo


def _bench_groups() -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").rglob("modelport-bench-*") if p.is_dir()]


def test_the_low_end_profile_holds_the_process(repo: modelport.Repository) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "bench", "mlp", "--repo", str(repo.root),
         "--device-profile", "low-end", "--batch-sizes", "16", "--budget-ms", "1000", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    limits = report["limits"]  # read back by the process itself from its own cgroups
    assert limits.get("cpu.cfs_quota_us") == "50000" or limits.get("cpu.max") == "50000 100000"
    assert str(512 * 2**20) in (limits.get("memory.limit_in_bytes"), limits.get("memory.max"))
    assert report["cpu_s"] / report["wall_s"] < 0.65  # half a core, not one
    assert report["threads"] == 1
    assert report["within_budget"] is True
    assert "within the page's budget of 1000 ms a row" in done.stderr
    assert _bench_groups() == []  # removed after the run


def test_a_model_that_does_not_fit_is_reported(repo: modelport.Repository) -> None:
    with pytest.raises(ModelportError, match="did not fit in 20 MiB"):
        bench_on_device(repo, "mlp", DeviceProfile(1.0, 20 * 2**20), runs=3)
    assert _bench_groups() == []


def test_the_budget_is_judged_per_row(repo: modelport.Repository) -> None:
    report = bench_on_device(repo, "mlp", DeviceProfile(2.0, 2**30), runs=5, budget_ms=1e-6)
    assert report["within_budget"] is False


def test_sizes_and_code_models(tmp_path: Path) -> None:
    assert parse_memory("512m") == 512 * 2**20
    assert parse_memory("1g") == 2**30
    with pytest.raises(ValueError, match="invalid memory size"):
        parse_memory("lots")
    repo = modelport.Repository.init(tmp_path / "models")
    code = tmp_path / "code"
    code.mkdir()
    (code / "model.py").write_text(
        "class M:\n    signature = {'inputs': [{'name': 'x', 'dtype': 'float32', 'shape': [-1]}],"
        " 'outputs': [{'name': 'y', 'dtype': 'float32', 'shape': [-1]}]}\n"
        "    def load(self):\n        pass\n"
        "    def predict(self, batch):\n        return {'y': batch['x']}\n"
    )
    modelport.add_model(repo, "code", code, trust_code=True)
    with pytest.raises(modelport.ConversionError, match="only ONNX models"):
        bench_on_device(repo, "code", DeviceProfile(1.0, 2**30))
