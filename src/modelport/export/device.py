"""``modelport bench --device-profile low-end``: the model on a device-like budget.

    report = bench_on_device(Repository.open("models"), "digits", DEVICE_PROFILES["low-end"])
    report["p50_ms"], report["within_budget"]

The model runs in a child process held to the profile's CPU share and memory by Linux control
groups (v2 when it is mounted with the cpu and memory controllers, else v1's cpu and memory
hierarchies), made for the run and removed after it. The child reads back its own limits, so
the report shows what it really ran under, and its CPU time against wall time shows the quota
at work. onnxruntime runs natively there, which is faster than the browser's WASM build: the
page measures the device itself on first use (modelport.js), this is the check before shipping.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import ModelportError
from modelport.export.web import BUDGET_MS, check_web_model
from modelport.manifest import read_manifest, verify_artifacts
from modelport.repository import ONNX_FILE, Repository, parse_ref

CGROUPS = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class DeviceProfile:
    """A device's share of CPU (0.5: half of one core) and memory in bytes."""

    cpus: float
    memory_bytes: int

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.memory_bytes < 16 * 2**20:
            raise ValueError("cpus must be > 0 and memory at least 16m")


DEVICE_PROFILES = {
    "low-end": DeviceProfile(0.5, 512 * 2**20),
    "mid-range": DeviceProfile(1.0, 1024 * 2**20),
    "high-end": DeviceProfile(2.0, 4096 * 2**20),
}


def parse_memory(text: str) -> int:
    """``512m``, ``1g``, ``300000k`` or bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"invalid memory size {text!r}: use 512m, 1g or bytes") from None


class Limits:
    """Control groups for one run: ``add(pid)`` puts a process in; ``close()`` removes them."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.folders: list[Path] = []
        name = f"modelport-bench-{uuid.uuid4().hex[:8]}"
        unified = _unified_root()
        try:
            if unified is not None:
                folder = self._make(unified / name)
                (folder / "cpu.max").write_text(f"{int(profile.cpus * 100_000)} 100000")
                (folder / "memory.max").write_text(str(profile.memory_bytes))
                (folder / "memory.swap.max").write_text("0")
            else:
                cpu = self._make(_v1_root("cpu") / name)
                (cpu / "cpu.cfs_period_us").write_text("100000")
                (cpu / "cpu.cfs_quota_us").write_text(str(int(profile.cpus * 100_000)))
                memory = self._make(_v1_root("memory") / name)
                (memory / "memory.limit_in_bytes").write_text(str(profile.memory_bytes))
        except OSError as exc:
            self.close()
            raise ModelportError(
                f"cannot limit a process to the device profile here ({exc}): bench needs "
                "Linux control groups it may write to (run as root, or in a container with "
                "its cgroup writable)"
            ) from None

    def _make(self, folder: Path) -> Path:
        folder.mkdir()
        self.folders.append(folder)
        return folder

    def add(self, pid: int) -> None:
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):  # a process still in it: gone in a moment
                folder.rmdir()


def _unified_root() -> Path | None:
    """Our own cgroup v2 folder when v2 runs the cpu and memory controllers, else None."""
    for root in (CGROUPS, CGROUPS / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and {"cpu", "memory"} <= set(controllers.read_text().split()):
            own = _own_path("")
            return root / own.lstrip("/") if own is not None else root
    return None


def _v1_root(controller: str) -> Path:
    own = _own_path(controller) or "/"
    return CGROUPS / controller / own.lstrip("/")


def _own_path(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or (controller == "" and names == ""):
            return path
    return None


def bench_on_device(
    repo: Repository, ref: str, profile: DeviceProfile, *, budget_ms: float = BUDGET_MS,
    runs: int = 200, batch: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Latency of ``ref`` in a process held to ``profile``, against the page's budget."""
    name, version = parse_ref(ref)
    folder = repo.version_dir(name, version)
    manifest = read_manifest(folder)
    check_web_model(manifest)
    verify_artifacts(folder, manifest)
    limits = Limits(profile)
    try:
        threads = max(1, int(profile.cpus + 0.999))
        signature = json.dumps(manifest.signature.to_dict())
        command = [sys.executable, "-m", "modelport.export._device_run", str(folder / ONNX_FILE),
                   signature, str(runs), str(batch), str(threads)]  # fmt: skip
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            limits.add(child.pid)
        except OSError:
            child.kill()
            raise
        out, err = child.communicate("go\n", timeout=600)
    finally:
        limits.close()
    if child.returncode != 0:
        if child.returncode in (-9, 137):
            raise ModelportError(
                f"{name}:{manifest.version} did not fit in {profile.memory_bytes // 2**20} MiB: "
                "the memory limit stopped it"
            )
        raise ModelportError(f"the benchmark process failed: {err.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out)
    result.update(
        model=f"{name}:{manifest.version}", cpus=profile.cpus,
        memory_bytes=profile.memory_bytes, budget_ms=budget_ms,
        within_budget=result["p50_ms"] / batch <= budget_ms,
    )  # fmt: skip
    return result
