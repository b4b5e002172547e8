"""How old stored predictions may be: ``--max-age 24h``, per model with ``--max-age fraud=1h``,
and the report behind ``modelport batch status``."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelport.batch.store import Store
from modelport.batch.tables import Run

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_age(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"1.5h"`` -> seconds. The unit is required:
    a bare ``24`` could mean hours as easily as seconds."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not an age; expected a number with s, m, h, d or w (24h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class MaxAge:
    """The freshness policy: a default and per-model overrides (``None``: never stale)."""

    default_s: float | None = None
    per_model_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Sequence[str]) -> MaxAge:
        default, per_model = None, {}
        for item in items:
            name, sep, age = item.rpartition("=")
            if sep:
                per_model[name.strip()] = parse_age(age)
            else:
                default = parse_age(age)
        return cls(default, per_model)

    def of(self, model: str) -> float | None:
        return self.per_model_s.get(model, self.default_s)


@dataclass(frozen=True)
class Freshness:
    model: str
    last_good: Run | None
    latest: Run
    max_age_s: float | None
    age_s: float | None  # since the last good run ended

    @property
    def stale(self) -> bool:
        if self.last_good is None:
            return True
        return self.max_age_s is not None and (self.age_s or 0.0) > self.max_age_s

    @property
    def rows(self) -> int | None:
        """Rows the last good run covered (scored now or unchanged since)."""
        good = self.last_good
        return None if good is None else good.rows_scored + good.rows_skipped

    def to_dict(self) -> dict[str, Any]:
        good = self.last_good
        return {
            "model": self.model, "stale": self.stale, "age_s": self.age_s,
            "max_age_s": self.max_age_s, "version": good.version if good else None,
            "rows": self.rows, "last_good_run": good.run_id if good else None,
            "latest_run": self.latest.run_id, "latest_status": self.latest.status,
        }  # fmt: skip


def freshness(store: Store, policy: MaxAge, now: float | None = None) -> list[Freshness]:
    """Per model in the store: its last good run and whether that is too old."""
    now = time.time() if now is None else now
    latest: dict[str, Run] = {}
    good: dict[str, Run] = {}
    for run in store.runs():  # newest first
        if run.status == "live":  # a server's live answers, not a batch run
            continue
        latest.setdefault(run.model, run)
        if run.status == "succeeded":
            good.setdefault(run.model, run)
    report = []
    for model in sorted(latest):
        last = good.get(model)
        age = now - (last.finished_at or last.started_at) if last else None
        report.append(Freshness(model, last, latest[model], policy.of(model), age))
    return report


def freshness_table(report: list[Freshness]) -> str:
    """The report as aligned text columns, one model a line."""
    if not report:
        return "(no runs in this store yet)"
    from modelport.batch.progress import duration

    rows = [("MODEL", "VERSION", "ROWS", "AGE", "MAX AGE", "STATE", "LATEST RUN")]
    for f in report:
        good = f.last_good
        rows.append((
            f.model,
            str(good.version) if good else "-",
            f"{f.rows:,}" if f.rows is not None else "-",
            duration(f.age_s) if f.age_s is not None else "-",
            duration(f.max_age_s) if f.max_age_s is not None else "-",
            "NEVER SCORED" if not good else "STALE" if f.stale
            else "fresh" if f.max_age_s is not None else "scored",
            f"{f.latest.status} {f.latest.run_id[:8]}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
