"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota.

    budget = cpu_budget()
    budget.count        # 1 under `taskset -c 0` or in a container run with --cpus=1
    budget.reason()     # "1 CPU: affinity allows 1 of 2; no cgroup CPU quota"

``os.cpu_count()`` counts the machine's cores, not those a process may run on: sized by it, a
server pinned to one core runs a thread per core of the machine on that one core, and they
wait for each other. Thread pools, onnxruntime's intra-op threads and worker counts are sized
by ``count`` instead: the smaller of the affinity mask and the cgroup quota (v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` or v2 ``cpu.max``, the tightest along the cgroup's
path), rounded down and at least 1, as Go's automaxprocs and the JVM do.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs a process may use, and what limited them."""

    count: int  # whole CPUs to size thread pools to, >= 1
    machine: int  # os.cpu_count()
    affinity: int  # CPUs in the affinity mask
    quota: float | None  # CPUs' worth of time the cgroup quota allows; None: no quota

    def reason(self) -> str:
        plural = "s" if self.count != 1 else ""
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g} CPUs"
        mask = f"affinity allows {self.affinity} of {self.machine}"
        return f"{self.count} CPU{plural}: {mask}; {quota}"


def cpu_budget(proc: Path = Path("/proc/self")) -> CpuBudget:
    """The CPU budget of this process (``proc`` is read for the cgroup; tests pass a copy)."""
    machine = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = machine
    quota = cgroup_quota(proc)
    count = affinity if quota is None else min(affinity, max(1, math.floor(quota)))
    return CpuBudget(max(1, count), machine, affinity, quota)


def cgroup_quota(proc: Path = Path("/proc/self")) -> float | None:
    """The CPU quota of the process's cgroup in CPUs (1.5: 150 ms each 100 ms), the tightest
    of v1 and v2 along its path up to the mount; None when there is none or nothing says."""
    try:
        memberships = _memberships((proc / "cgroup").read_text())
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in mounts:
        mount = _cgroup_mount(line)
        if mount is None:
            continue
        mount_root, mount_point, version = mount
        path = memberships.get(version)
        if path is None:
            continue
        relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
        folder = (Path(mount_point) / relative).resolve()
        while True:
            quota = _read_quota(folder, version)
            if quota is not None:
                quotas.append(quota)
            if folder == Path(mount_point) or folder.parent == folder:
                break
            folder = folder.parent
    return min(quotas, default=None)


def _memberships(text: str) -> dict[str, str]:
    """The process's cgroup path per hierarchy: "v1" (the one with the cpu controller), "v2"."""
    found = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found["v2"] = path
        elif "cpu" in controllers.split(","):
            found["v1"] = path
    return found


def _cgroup_mount(line: str) -> tuple[str, str, str] | None:
    """(root, mount point, "v1" or "v2") of a mountinfo line that mounts a CPU cgroup."""
    head, sep, tail = line.partition(" - ")
    fields, after = head.split(), tail.split()
    if not sep or len(fields) < 5 or len(after) < 3:
        return None
    root, mount_point = _unescape(fields[3]), _unescape(fields[4])
    if after[0] == "cgroup2":
        return root, mount_point, "v2"
    if after[0] == "cgroup" and "cpu" in after[2].split(","):
        return root, mount_point, "v1"
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _read_quota(folder: Path, version: str) -> float | None:
    try:
        if version == "v2":
            quota, _, period = (folder / "cpu.max").read_text().partition(" ")
            if quota.strip() == "max":
                return None
            return int(quota) / int(period or "100000")
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
