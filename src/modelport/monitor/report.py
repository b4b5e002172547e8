"""``modelport monitor``: the logged predictions of a model against its training data.

    report = monitor(open_log("predictions.db"), "churn", Path("train.parquet"), since_s)
    print(table(report)); Path("drift.html").write_text(html(report))

Features are the model's inputs as rows: a ``[-1]`` or ``[-1, 1]`` input is one feature named
after it, a wider one a feature per column (``input[0]``, ``input[1]``...). The reference table
(CSV with a header, or Parquet) names its columns like the features; where none of its columns
carry those names, its columns are taken in order (a single-matrix model fitted on a plain
table). Outputs are features too: compared with the reference's column of the same name (say,
the training labels against the predicted labels), else shown alone; a class-score output is
summarised by its argmax.
"""

from __future__ import annotations

import html as _html
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from modelport.errors import InvalidInputError
from modelport.monitor.drift import ALPHA, PSI_THRESHOLD, Drift, compare
from modelport.monitor.store import Logged, read_log


@dataclass
class Report:
    model: str
    since_s: float
    requests: int
    rows: int
    features: list[Drift]
    outputs: list[Drift]
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[Drift]:
        return [d for d in (*self.features, *self.outputs) if d.drifted]


def monitor(
    engine: sa.Engine, model: str, reference: Path, since_s: float, version: str | None = None,
    psi_threshold: float = PSI_THRESHOLD, alpha: float = ALPHA,
) -> Report:  # fmt: skip
    """Compare what was logged for ``model`` since ``since_s`` with ``reference``."""
    columns = read_table(reference)
    logged = read_log(engine, model, since_s, version)
    if not logged:
        raise InvalidInputError(
            f"no predictions of model {model!r} were logged in that time; serve it with "
            "--log-predictions URL (and --sample 1 to keep every request)"
        )
    notes = []
    with_inputs = [r for r in logged if r.inputs is not None]
    features: list[Drift] = []
    if not with_inputs:
        notes.append("inputs were logged as hashes only (--log-inputs hash): outputs compared")
    else:
        names = with_inputs[0].inputs or {}
        live = explode({n: _stack([r.inputs[n] for r in with_inputs if r.inputs]) for n in names})
        outputs_named = set(explode(_outputs(logged)))
        for name, (ref, now) in _pair(live, columns, outputs_named, reference).items():
            features.append(compare(name, ref, now, psi_threshold, alpha))
    outputs = []
    for name, values in explode(_outputs(logged), argmax=True).items():
        if name not in columns:
            notes.append(f"output {name}: no column of that name in the reference; not compared")
            continue
        outputs.append(compare(name, columns[name], values, psi_threshold, alpha))
    rows = sum(len(next(iter(r.outputs.values()))) for r in logged if r.outputs)
    return Report(model, since_s, len(logged), rows, features, outputs, notes)


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A CSV (with a header) or Parquet file's columns; text stays text, nulls are None."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InvalidInputError(f"--reference {path}: no such file")
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except Exception as exc:  # pyarrow's own errors name the line or the column
        raise InvalidInputError(f"--reference {path}: cannot read it as a table: {exc}") from exc
    return {
        name: np.asarray(table.column(name).to_numpy(zero_copy_only=False))
        for name in table.column_names
    }


def explode(tensors: dict[str, np.ndarray], argmax: bool = False) -> dict[str, np.ndarray]:
    """Tensors of rows as features: ``name`` for one column, ``name[j]`` for several."""
    features = {}
    for name, array in tensors.items():
        rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        if rows.shape[1] == 1:
            features[name] = rows[:, 0]
        elif argmax and rows.dtype.kind == "f":
            features[f"argmax({name})"] = rows.argmax(axis=1)
        else:
            features.update({f"{name}[{j}]": rows[:, j] for j in range(rows.shape[1])})
    return features


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a if a.ndim else a.reshape(1) for a in arrays])


def _outputs(logged: list[Logged]) -> dict[str, np.ndarray]:
    names = logged[0].outputs
    return {n: _stack([r.outputs[n] for r in logged if n in r.outputs]) for n in names}


def _pair(
    live: dict[str, np.ndarray], columns: dict[str, np.ndarray], outputs: set[str], path: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    named = {f: (columns[f], v) for f, v in live.items() if f in columns}
    if named:
        return named
    spare = [c for c in columns if c not in outputs]
    if len(spare) != len(live):
        raise InvalidInputError(
            f"--reference {path}: none of its columns is named like the model's features "
            f"({', '.join(list(live)[:4])}...), and its {len(spare)} other columns are not "
            f"the {len(live)} features in order; name the columns like the features"
        )
    return {f: (columns[c], v) for (f, v), c in zip(live.items(), spare, strict=True)}


# -- showing it --------------------------------------------------------------------------------


def table(report: Report) -> str:
    """The terminal's view: one line per feature and output, drifted ones marked."""
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.since_s))
    lines = [
        f"model {report.model}: {report.requests} logged requests ({report.rows} rows) since "
        f"{since}",
        "",
        f"{'feature':24} {'kind':8} {'PSI':>7} {'test':>5} {'p-value':>9} {'ref n':>7} "
        f"{'live n':>7}  drift",
    ]
    for drift in (*report.features, *report.outputs):
        lines.append(
            f"{drift.feature[:24]:24} {drift.kind:8} {drift.psi:7.3f} {drift.test:>5} "
            f"{drift.p_value:9.2g} {drift.reference_n:7d} {drift.live_n:7d}  "
            f"{'DRIFT' if drift.drifted else '-'}"
        )
    lines += ["", *report.notes] if report.notes else []
    count = len(report.drifted)
    lines.append(f"{count} of {len(report.features) + len(report.outputs)} drifted")
    return "\n".join(lines)


def html(report: Report) -> str:
    """A page with a chart per feature (reference against live shares), drifted ones first."""
    cards = [_card(d) for d in sorted((*report.features, *report.outputs), key=_order)]
    notes = "".join(f"<p class=note>{_html.escape(n)}</p>" for n in report.notes)
    title = f"Drift report: {_html.escape(report.model)}"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.since_s))
    return f"""<!doctype html><meta charset=utf-8><title>{title}</title>
<style>{_STYLE}</style>
<h1>{title}</h1>
<p>{report.requests} logged requests ({report.rows} rows) since {since};
<b>{len(report.drifted)}</b> of {len(report.features) + len(report.outputs)} features and
outputs drifted (PSI &ge; threshold and p-value under alpha).</p>
<p class=legend><span style="background:{_REFERENCE}"></span>reference
<span style="background:{_LIVE}"></span>live</p>
{notes}{"".join(cards)}"""


_REFERENCE, _LIVE = "#7f8c8d", "#2980b9"
_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}
.card{display:inline-block;vertical-align:top;margin:0 1em 1em 0;padding:.6em;
  border:1px solid #ddd;border-radius:6px}
.drift{border-color:#c0392b;background:#fdf2f0} .note{color:#666} h2{font-size:1em;margin:.2em 0}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}"""


def _order(drift: Drift) -> tuple[bool, float]:
    return (not drift.drifted, -drift.psi)


def _card(drift: Drift) -> str:
    width, height, n = 320, 120, max(len(drift.bins), 1)
    top = max([*drift.reference_share, *drift.live_share, 1e-9])
    bars = []
    step = width / n
    for i, (ref, live) in enumerate(zip(drift.reference_share, drift.live_share, strict=True)):
        for j, (share, color) in enumerate(((ref, _REFERENCE), (live, _LIVE))):
            h = share / top * (height - 10)
            x = i * step + j * step / 2 + 1
            label = _html.escape(f"{drift.bins[i]}: {share:.1%}")
            bars.append(
                f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{step / 2 - 2:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{label}</title></rect>'
            )
    verdict = "DRIFT" if drift.drifted else "stable"
    return (
        f'<div class="card{" drift" if drift.drifted else ""}"><h2>{_html.escape(drift.feature)}'
        f" &mdash; {verdict}</h2>PSI {drift.psi:.3f}, {drift.test} p {drift.p_value:.2g}, "
        f"n {drift.reference_n} / {drift.live_n}<br>"
        f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}</svg></div>'
    )
