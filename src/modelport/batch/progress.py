"""A progress line for long runs: rows, rows/s, ETA, rejects.

On a terminal it redraws one line a few times a second; in a log (not a terminal) it writes a
line every ``log_every_s`` so that cron mails and CI logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from modelport.batch.job import RunSummary


def duration(seconds: float) -> str:
    """``3725`` -> ``1h02m``; ``42.5`` -> ``42s``."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f}s"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    def __init__(
        self, total_rows: int | None, stream: TextIO = sys.stderr, log_every_s: float = 10.0
    ) -> None:
        self.total = total_rows
        self.stream = stream
        self.live = stream.isatty()
        self.every_s = 0.2 if self.live else log_every_s
        self._last = 0.0
        self._drawn = False

    def __call__(self, run: RunSummary) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self._write(self.line(run))

    def line(self, run: RunSummary) -> str:
        rate = run.rows_per_s
        done = f"{run.rows:,}" + (f" / {self.total:,} rows" if self.total else " rows")
        parts = [done, f"{rate:,.0f} rows/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {duration(max(self.total - run.rows, 0) / rate)}")
        if run.skipped:
            parts.append(f"{run.skipped:,} already scored")
        if run.rejected:
            parts.append(f"{run.rejected:,} rejected")
        return "  ".join(parts)

    def _write(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
