"""Plots as inline SVG (matplotlib, headless) and the HTML page that holds them.

The page is one self-contained file: no script, no network, opens anywhere.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from modelport.errors import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Series = Mapping[str, Sequence[tuple[float, float]]]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }
th { background: #f4f4f4; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
"""


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    require("matplotlib", "optimize")
    import matplotlib

    matplotlib.use("Agg")  # no display: a server or CI has none
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2, 3.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _plain(axes: Axes, base2_x: bool = False) -> None:
    """Log axes labelled 1, 2, 4... or 0.01, 0.02, 0.05: not 2^0 or 10^-2, no crowded minors."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (axes.xaxis, axes.yaxis):
        if axis.get_scale() == "log":
            if not (base2_x and axis is axes.xaxis):
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())


def _svg(figure: Figure, title: str) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype: it is inline
    return f'<figure class="plot" data-title="{html.escape(title)}">{svg}</figure>'


def scatter(
    title: str,
    xlabel: str,
    ylabel: str,
    points: dict[str, tuple[float, float]],
    floor: float | None = None,
) -> str:
    """One labelled point each; ``floor`` draws the lowest score the budget allows."""
    figure, axes = _figure(title, xlabel, ylabel)
    if floor is not None:
        axes.axhline(floor, color="#c44e52", linestyle="--", linewidth=1, label="budget")
        axes.annotate("budget", (0.01, floor), xycoords=("axes fraction", "data"),
                      textcoords="offset points", xytext=(2, -12), color="#c44e52")  # fmt: skip
    for label, (x, y) in points.items():
        axes.scatter([x], [y], s=60, label=label)
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4))
    axes.set_xscale("log")
    _plain(axes)
    return _svg(figure, title)


def lines(title: str, xlabel: str, ylabel: str, series: Series, log_x: bool = True) -> str:
    figure, axes = _figure(title, xlabel, ylabel)
    for label, points in series.items():
        xs, ys = zip(*points, strict=True) if points else ((), ())
        axes.plot(xs, ys, marker="o", label=label)
    if log_x:
        axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    _plain(axes, base2_x=log_x)
    axes.legend(fontsize="small")
    return _svg(figure, title)


def bars(title: str, ylabel: str, values: dict[str, float]) -> str:
    figure, axes = _figure(title, "", ylabel)
    axes.bar(list(values), list(values.values()), color="#4c72b0")
    axes.tick_params(axis="x", labelrotation=15)
    return _svg(figure, title)


def table_html(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, plots: list[str]) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}"
        f'<div class="plots">{"".join(plots)}</div></body></html>\n'
    )
