"""Smaller and faster models: quantize, distill, bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION
from modelport.errors import AccuracyDropError
from modelport.repository import Repository

ROWS = click.Path(exists=True, dir_okay=False, path_type=Path)
REPORT_OPTION = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the comparison with its plots to this HTML file.",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
NAME_OPTION = click.option(
    "--name", help="Import the result as a new version of this model (default: the same model)."
)
LABELS_OPTION = click.option(
    "--labels",
    metavar="COLUMN",
    help="Column (or .npz array) of true labels: score accuracy rather than agreement.",
)
SECONDS_OPTION = click.option(
    "--bench-seconds",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds of back-to-back calls for each latency measured.",
)


def _log(line: str) -> None:
    click.echo(line, err=True)


def _show(report: Any, report_path: Path | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.table())
    if report_path is not None:
        report.write_html(report_path)
        _log(f"report written to {report_path}")


@click.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--eval", "eval_path", required=True, type=ROWS,
              help="Rows to score accuracy (with --labels) or agreement on.")  # fmt: skip
@click.option("--calibration", type=ROWS, help="Rows to calibrate activation ranges on (static).")
@LABELS_OPTION
@click.option("--method", type=click.Choice(["auto", "dynamic", "static"]), default="auto",
              show_default=True, help="dynamic (weights), static (weights and activations, "
              "QDQ) or auto (both, keep the better within budget).")  # fmt: skip
@click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Largest loss of accuracy (or agreement) allowed, as a fraction.")  # fmt: skip
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Static: a scale per output channel of a weight, or one a tensor.")  # fmt: skip
@NAME_OPTION
@REPORT_OPTION
@JSON_OPTION
@SECONDS_OPTION
@REPO_OPTION
@click.pass_context
def quantize(
    ctx: click.Context,
    ref: str,
    eval_path: Path,
    calibration: Path | None,
    labels: str | None,
    method: str,
    max_drop: float,
    per_channel: bool,
    name: str | None,
    report_path: Path | None,
    as_json: bool,
    bench_seconds: float,
    repo_path: Path,
) -> None:
    """Quantize a model to int8; import it as the next version if accuracy holds.

    Exits 1, importing nothing, when every candidate loses more than --max-drop.
    """
    from modelport.optimize.quantize import Measuring
    from modelport.optimize.quantize import quantize as run

    try:
        result = run(
            Repository.open(repo_path),
            ref,
            eval_path,
            calibration=calibration,
            labels=labels,
            method=method,
            max_drop=max_drop,
            name=name,
            per_channel=per_channel,
            measuring=Measuring(seconds=bench_seconds),
            log=_log,
        )
    except AccuracyDropError as exc:
        if exc.report is not None:
            _show(exc.report, report_path, as_json)
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    _show(result.report, report_path, as_json)
    manifest = result.manifest
    _log(f"imported {manifest.name}:{manifest.version} (int8 {result.method}) into {repo_path}")


COMMANDS = (quantize,)
