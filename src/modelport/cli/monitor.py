"""``modelport monitor``: logged predictions against the training data, with exit code 1 on
drift (for cron and alerts)."""

from __future__ import annotations

from pathlib import Path

import click

from modelport.monitor.drift import ALPHA, PSI_THRESHOLD


@click.command()
@click.argument("name")
@click.option(
    "--reference",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The training data: a CSV file with a header, or Parquet, columns named like the "
    "model's features.",
)
@click.option(
    "--log",
    "log_url",
    required=True,
    metavar="URL",
    help="The prediction log the server writes (its --log-predictions): a SQLite file or a "
    "postgresql:// URL.",
)
@click.option("--since", default="24h", show_default=True, help="How far back: 90m, 24h, 7d.")
@click.option("--version", default=None, help="Only this version's predictions.")
@click.option(
    "--psi-threshold",
    default=PSI_THRESHOLD,
    show_default=True,
    type=float,
    help="A feature drifts when its population stability index reaches this...",
)
@click.option(
    "--alpha",
    default=ALPHA,
    show_default=True,
    type=float,
    help="...and its test (Kolmogorov-Smirnov, chi-squared) p-value is under this.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as an HTML page with a chart per feature.",
)
@click.pass_context
def monitor(
    ctx: click.Context, name: str, reference: Path, log_url: str, since: str,
    version: str | None, psi_threshold: float, alpha: float, html_path: Path | None,
) -> None:  # fmt: skip
    """Compare a model's logged inputs and outputs with its training data."""
    from modelport.errors import require

    require("sqlalchemy", "monitor")
    require("scipy", "monitor")
    from modelport.monitor import report, store

    try:
        since_s = store.since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    found = report.monitor(
        store.open_log(log_url), name, reference, since_s, version, psi_threshold, alpha
    )
    click.echo(report.table(found))
    if html_path is not None:
        html_path.write_text(report.html(found))
        click.echo(f"report: {html_path}")
    if found.drifted:
        ctx.exit(1)
