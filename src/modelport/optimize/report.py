"""The trade-off of a quantization or distillation: a table for the terminal, a page for people.

print(report.table())             # one row per candidate, ratios against the baseline
report.write_html(Path("q.html"))  # the same table and its plots (accuracy vs latency, size)
report.to_dict()                  # what the manifest's lineage and --json keep
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One model measured on the same rows: the baseline (parent/teacher) or a result."""

    label: str
    size_bytes: int
    p50_ms: dict[int, float]  # by batch size
    score: float  # accuracy with labels, else agreement with the baseline
    agreement: float  # with the baseline's predictions (1.0 for the baseline itself)
    drop: float = 0.0  # baseline score - this score

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size_bytes": self.size_bytes,
            "p50_ms": {str(b): round(ms, 4) for b, ms in self.p50_ms.items()},
            "score": round(self.score, 6),
            "agreement": round(self.agreement, 6),
            "drop": round(self.drop, 6),
        }


@dataclass
class Report:
    """Candidates against a baseline, the metric they were scored by, and what was chosen."""

    title: str
    metric: str  # "accuracy", "agreement" or "r2"
    baseline: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    max_drop: float | None = None
    chosen: str | None = None
    notes: list[str] = field(default_factory=list)

    def within_budget(self, candidate: Candidate) -> bool:
        return self.max_drop is None or candidate.drop <= self.max_drop + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "metric": self.metric,
            "max_drop": self.max_drop,
            "chosen": self.chosen,
            "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
        }

    def rows(self) -> list[list[str]]:
        """The table's cells, header first: sizes and latencies with their ratio to the
        baseline (x4.0 smaller, x2.1 faster)."""
        base = self.baseline
        batches = sorted(base.p50_ms)
        both = self.metric == "accuracy"  # with labels: agreement with the baseline too
        header = ["model", "size", *[f"p50 b{b}" for b in batches], self.metric, "drop"]
        header += ["agreement", ""] if both else [""]
        body = []
        for c in [base, *self.candidates]:
            first = c is base
            cells = [c.label, _size(c.size_bytes) + _ratio(base.size_bytes, c.size_bytes, first)]
            for b in batches:
                ms = c.p50_ms.get(b, float("nan"))
                cells.append(f"{ms:.3f} ms" + _ratio(base.p50_ms[b], ms, first))
            cells += [f"{c.score:.4f}", "" if c is base else f"{c.drop * 100:+.2f} pt"]
            cells += [f"{c.agreement:.4f}"] if both else []
            mark = "chosen" if c.label == self.chosen else ""
            if c is not base and not self.within_budget(c):
                mark = "over budget"
            body.append([*cells, mark])
        return [header, *body]

    def table(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
        budget = "" if self.max_drop is None else f", budget {self.max_drop * 100:.2f} pt"
        lines.insert(0, f"{self.title} ({self.metric}{budget})")
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes)])

    def write_html(self, path: Path) -> None:
        from modelport.optimize import charts

        batch = max(self.baseline.p50_ms)
        floor = None if self.max_drop is None else self.baseline.score - self.max_drop
        plots = [
            charts.scatter(
                "Accuracy vs speed",
                f"p50 latency at batch {batch} (ms)",
                self.metric,
                {c.label: (c.p50_ms[batch], c.score) for c in self._all()},
                floor=floor,
            ),
            charts.bars("Size", "MB", {c.label: c.size_bytes / 2**20 for c in self._all()}),
            charts.lines(
                "Latency by batch size",
                "batch size",
                "p50 latency (ms)",
                {c.label: sorted(c.p50_ms.items()) for c in self._all()},
            ),
        ]
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in [self.outcome(), *self.notes])
        page = charts.page(self.title, charts.table_html(self.rows()) + notes, plots)
        path.write_text(page)

    def outcome(self) -> str:
        if self.chosen is not None:
            return f"Chosen: {self.chosen}."
        if self.max_drop is not None and self.candidates:
            return (
                f"Nothing imported: every candidate loses more than {self.max_drop * 100:.2f} "
                f"points of {self.metric}."
            )
        return "Nothing chosen."

    def _all(self) -> list[Candidate]:
        return [self.baseline, *self.candidates]


def _ratio(base: float, value: float, skip: bool) -> str:
    return "" if skip or value <= 0 else f" (x{base / value:.1f})"


def _size(size: int) -> str:
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 1024:.1f} KB"
