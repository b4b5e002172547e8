"""modelport bench: versions side by side in process and through a running service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.errors import OptimizationError
from modelport.optimize.bench import bench, choose_providers, fell_back, runtime_for
from modelport.optimize.quantize import quantize
from modelport.optimize.remote import Remote, drive
from modelport.optimize.scoring import Measuring
from modelport.testing import free_port, run_server
from report_browser import figures_drawn

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_providers_are_those_installed_and_missing_ones_are_named() -> None:
    assert choose_providers(None, [CPU]) == (["cpu"], [])
    assert choose_providers(None, [TRT, CUDA, CPU]) == (["cpu", "cuda", "tensorrt"], [])
    chosen, notes = choose_providers(["CUDA", "cpu"], ["AzureExecutionProvider", CPU])
    assert chosen == ["cpu"]
    assert notes == [f"cuda: {CUDA} is not in this onnxruntime build (install onnxruntime-gpu); "
                     "skipped"]  # fmt: skip
    assert choose_providers(["cuda"], [CUDA, CPU]) == (["cuda"], [])
    with pytest.raises(OptimizationError, match="no execution provider asked for is installed"):
        choose_providers(["tensorrt"], [CPU])
    with pytest.raises(OptimizationError, match="unknown execution provider 'tpu'"):
        choose_providers(["tpu"], [CPU])


def test_a_provider_that_did_not_start_is_a_fallback() -> None:
    assert runtime_for("cuda", 2).providers == (CUDA, CPU)  # CPU runs what CUDA does not
    assert runtime_for("cuda", 2).intra_op_threads == 2
    assert runtime_for("cpu", 1).providers == (CPU,)
    assert fell_back("cuda", [CPU])
    assert not fell_back("cuda", [CUDA, CPU])
    assert not fell_back("cpu", [CPU])


@pytest.fixture
def two_versions(repo: modelport.Repository, tmp_path: Path) -> tuple[modelport.Repository, Path]:
    """mlp:1 in float32 and mlp:2, its int8 quantization; rows with labels ``y`` (the fp32
    model's own classes, so that accuracy means something)."""
    modelport.add_model(repo, "mlp", mlp_onnx((64, 256, 256, 10), seed=0))
    x = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    y = repo.load("mlp").predict(x)["logits"].argmax(axis=1)
    np.savez(tmp_path / "rows.npz", input=x, y=y)
    quantize(repo, "mlp", tmp_path / "rows.npz", method="dynamic", max_drop=1.0,
             measuring=Measuring(seconds=0.05))  # fmt: skip
    return repo, tmp_path / "rows.npz"


def test_two_versions_side_by_side(two_versions: tuple[modelport.Repository, Path]) -> None:
    repo, rows = two_versions
    result = bench(repo, ["mlp:1", "mlp:2"], batch_sizes=(1, 16), threads=(1, 2), seconds=0.05,
                   eval_rows=rows, labels="y", providers=["cpu"])  # fmt: skip
    keys = [(p.model, p.threads, p.batch) for p in result.points]
    assert keys == [(m, t, b) for m in ("mlp:1", "mlp:2") for t in (1, 2) for b in (1, 16)]
    assert all(p.calls >= 5 and 0 < p.p50_ms <= p.p99_ms and p.rows_per_s > 0
               for p in result.points)  # fmt: skip
    assert result.metric == "accuracy"
    assert result.scores["mlp:1"] == 1.0
    assert 0.5 < result.scores["mlp:2"] <= 1.0
    lines = result.table().splitlines()
    assert lines[1].split()[-2:] == ["first", "accuracy"]
    assert lines[3].split()[-2:] == ["x1.00", "1.0000"]


def test_a_running_server_over_rest_and_grpc(
    two_versions: tuple[modelport.Repository, Path], tmp_path: Path
) -> None:
    repo, rows = two_versions
    grpc_port = free_port()
    page = tmp_path / "bench.html"
    with run_server(repo.root, "--grpc-port", str(grpc_port), "--version-policy", "all") as server:
        result = cli("bench", "mlp:1", "mlp:2", "--repo", repo.root, "--batch-sizes", "1,8",
                     "--seconds", "0.1", "--eval", rows, "--url", server.url, "--grpc-url",
                     f"127.0.0.1:{grpc_port}", "--protocol", "rest-json", "--protocol",
                     "rest-binary", "--protocol", "grpc", "--concurrency", "1,2", "--json",
                     "--report", page, "--providers", "cpu")  # fmt: skip
        with pytest.raises(OptimizationError, match=r"/v2/models/nope/versions/1/infer refused"
                           r" the benchmark's request: HTTP 404"):  # fmt: skip
            drive(server.url, "nope", 1, {"input": np.zeros((1, 64), np.float32)}, "rest-json", 1)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    remote = [(p["model"], p["protocol"], p["batch"], p["concurrency"]) for p in report["remote"]]
    assert remote == [(m, proto, b, c) for m in ("mlp:1", "mlp:2")
                      for proto in ("rest-json", "rest-binary", "grpc")
                      for b in (1, 8) for c in (1, 2)]  # fmt: skip
    for point in report["remote"]:
        assert point["requests"] > 0
        assert point["errors"] == 0
        assert point["rows_per_s"] > 0
    assert report["metric"] == "agreement with the first"
    assert report["scores"]["mlp:1"] == 1.0
    drawn = figures_drawn(page)
    assert [t for t, _, _ in drawn] == ["Latency vs batch size", "Throughput vs concurrency",
                                        "Accuracy vs speed"]  # fmt: skip
    assert all(width > 200 and marks > 10 for _, width, marks in drawn)
    assert "server added (p50)" in page.read_text()


def test_bad_requests_are_refused_before_any_work(
    two_versions: tuple[modelport.Repository, Path],
) -> None:
    repo, _ = two_versions
    with pytest.raises(OptimizationError, match="needs the service's gRPC address"):
        Remote("http://127.0.0.1:1", ("grpc",))
    result = cli("bench", "mlp", "--repo", repo.root, "--batch-sizes", "0")
    assert result.returncode == 2
    assert "give whole numbers >= 1" in result.stderr
    result = cli("bench", "mlp", "--repo", repo.root, "--providers", "cuda")
    assert result.returncode == 1
    assert "install onnxruntime-gpu" in result.stderr
