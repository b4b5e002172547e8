"""The soak's two-minute form (benchmarks/soak.py): mixed load through every door, versions
pinned and latest, cache churn; no errors, and memory that stops growing once warm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).parents[1] / "benchmarks" / "soak.py"


def test_two_minutes_of_mixed_load_without_errors_or_growth() -> None:
    run = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "2", "--report-s", "20", "--warmup-s", "45",
         "--concurrency", "4"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert " 0 errors" in run.stdout
    assert "growth after warm-up" in run.stdout
