"""A benchmark's results, its table for the terminal and its page with plots.

In-process rows carry their p50 against the first model's at the same provider, threads and
batch ("x2.0" = twice as fast); rows measured through a service carry what the server added
over the fastest in-process p50 of the same model and batch.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelport.optimize import charts


@dataclass(frozen=True)
class Point:
    model: str
    provider: str
    threads: int
    batch: int
    calls: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float


@dataclass
class BenchResult:
    points: list[Point] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # by model, when rows were given
    metric: str = ""
    remote: list[Any] = field(default_factory=list)  # remote.RemotePoint, with --url
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [asdict(p) for p in self.points],
            "metric": self.metric,
            "scores": self.scores,
            "remote": [asdict(p) for p in self.remote],
            "notes": self.notes,
        }

    def table(self) -> str:
        return table(self)

    def write_html(self, path: Path) -> None:
        write_html(self, path)


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def local_rows(result: BenchResult) -> list[list[str]]:
    first = result.points[0].model if result.points else ""
    base = {(p.provider, p.threads, p.batch): p.p50_ms for p in result.points if p.model == first}
    header = ["model", "provider", "threads", "batch", "p50 ms", "p99 ms", "rows/s", "vs first"]
    if result.scores:
        header.append(result.metric)
    rows = [header]
    for p in result.points:
        ref = base.get((p.provider, p.threads, p.batch))
        ratio = f"x{ref / p.p50_ms:.2f}" if ref and p.p50_ms > 0 else ""
        row = [p.model, p.provider, str(p.threads), str(p.batch), f"{p.p50_ms:.3f}",
               f"{p.p99_ms:.3f}", f"{p.rows_per_s:,.0f}", ratio]  # fmt: skip
        if result.scores:
            row.append(f"{result.scores.get(p.model, float('nan')):.4f}")
        rows.append(row)
    return rows


def _in_process_p50(result: BenchResult, model: str, batch: int) -> float | None:
    times = [p.p50_ms for p in result.points if p.model == model and p.batch == batch]
    return min(times) if times else None


def remote_rows(result: BenchResult) -> list[list[str]]:
    header = ["model", "protocol", "concurrency", "batch", "p50 ms", "p99 ms", "rows/s",
              "errors", "server added (p50)"]  # fmt: skip
    rows = [header]
    for r in result.remote:
        local = _in_process_p50(result, r.model, r.batch)
        added = "" if local is None else f"{r.p50_ms - local:+.3f} ms"
        rows.append([r.model, r.protocol, str(r.concurrency), str(r.batch), f"{r.p50_ms:.3f}",
                     f"{r.p99_ms:.3f}", f"{r.rows_per_s:,.0f}", str(r.errors), added])  # fmt: skip
    return rows


def table(result: BenchResult) -> str:
    lines = ["in process (model calls back to back)", *_grid(local_rows(result))]
    if result.remote:
        lines += ["", "through the service", *_grid(remote_rows(result))]
    return "\n".join([*lines, *(f"note: {n}" for n in result.notes)])


def _series(points: list[Point]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        key = f"{p.model} {p.provider} t{p.threads}"
        series.setdefault(key, []).append((p.batch, p.p50_ms))
    return series


def write_html(result: BenchResult, path: Path) -> None:
    plots = [
        charts.lines(
            "Latency vs batch size", "batch size", "p50 latency (ms)", _series(result.points)
        )
    ]
    if result.remote:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in result.remote:
            key = f"{r.model} {r.protocol} b{r.batch}"
            series.setdefault(key, []).append((r.concurrency, r.rows_per_s))
        plots.append(charts.lines("Throughput vs concurrency", "concurrent requests",
                                  "rows/s", series))  # fmt: skip
    if result.scores and result.points:
        largest = max(p.batch for p in result.points)
        speed = {}
        for model in result.scores:
            times = [p.p50_ms for p in result.points if p.model == model and p.batch == largest]
            if times:
                speed[model] = (min(times), result.scores[model])
        plots.append(charts.scatter("Accuracy vs speed", f"p50 at batch {largest} (ms)",
                                    result.metric, speed))  # fmt: skip
    body = "<h2>In process</h2>" + charts.table_html(local_rows(result))
    if result.remote:
        body += "<h2>Through the service</h2>" + charts.table_html(remote_rows(result))
    body += "".join(f"<p>{html.escape(n)}</p>" for n in result.notes)
    path.write_text(charts.page("modelport bench", body, plots))
