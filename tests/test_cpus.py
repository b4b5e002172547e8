"""CPU sizing: the affinity mask and cgroup quotas, read as the kernel writes them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.cpus import cgroup_quota, cpu_budget

V1_MOUNTS = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:23 / {root}/cpu rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 / {root}/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
"""
V2_MOUNTS = "30 25 0:26 / {root} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"


def fake_proc(tmp_path: Path, cgroup: str, mounts: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mounts.format(root=tmp_path / "fs"))
    return proc


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v1_quota_is_quota_over_period_and_the_tightest_on_the_path(
    tmp_path: Path,
) -> None:
    proc = fake_proc(tmp_path, "4:memory:/pod\n3:cpu,cpuacct:/pod/box\n", V1_MOUNTS)
    cpu = tmp_path / "fs" / "cpu"
    write(cpu / "pod" / "box" / "cpu.cfs_quota_us", "-1")  # unlimited here ...
    write(cpu / "pod" / "box" / "cpu.cfs_period_us", "100000")
    write(cpu / "pod" / "cpu.cfs_quota_us", "150000")  # ... but its parent allows 1.5 CPUs
    write(cpu / "pod" / "cpu.cfs_period_us", "100000")
    assert cgroup_quota(proc) == 1.5
    write(cpu / "pod" / "box" / "cpu.cfs_quota_us", "50000")
    assert cgroup_quota(proc) == 0.5


def test_cgroup_v2_cpu_max(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/system.slice/app.service\n", V2_MOUNTS)
    leaf = tmp_path / "fs" / "system.slice" / "app.service"
    write(leaf / "cpu.max", "max 100000")
    assert cgroup_quota(proc) is None
    write(leaf / "cpu.max", "200000 100000")
    assert cgroup_quota(proc) == 2.0


def test_a_container_sees_its_own_cgroup_at_the_mount_root(tmp_path: Path) -> None:
    # A private cgroup namespace: the process is at "/" and the mount's root is its cgroup.
    proc = fake_proc(tmp_path, "0::/\n", V2_MOUNTS)
    write(tmp_path / "fs" / "cpu.max", "100000 100000")
    assert cgroup_quota(proc) == 1.0


def test_no_cgroup_information_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path / "missing") is None


def test_the_budget_is_the_affinity_mask_or_the_quota_whichever_is_smaller() -> None:
    budget = cpu_budget()
    assert budget.count == min(
        len(os.sched_getaffinity(0)), max(1, int(budget.quota or budget.machine))
    )
    assert str(budget.count) in budget.reason()


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_server_pinned_to_one_core_runs_one_onnxruntime_thread(
    tiny_onnx_file: Path,
) -> None:
    code = (
        "import logging, sys; from pathlib import Path;"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from modelport.config import ServerConfig;"
        "from modelport.server.registry import load_registry;"
        f"load_registry(Path({str(tiny_onnx_file)!r}), ServerConfig()).close()"
    )
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "onnxruntime threads per model instance: 1 (" in out
    assert "1 CPU: affinity allows 1 of" in out
