"""``modelport demo``: flags in, modelport.demo.tour does the rest."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path), default="demo-models")
@click.option("--rebuild", is_flag=True, help="Add new versions even if the demo is built.")
@click.option(
    "--torch/--no-torch",
    "with_torch",
    default=None,
    help="Include the PyTorch CNN (default: when torch is installed).",
)
@click.option(
    "--serve",
    "then_serve",
    is_flag=True,
    help="Then serve the demo models on 127.0.0.1:8000 (Ctrl-C stops).",
)
def demo(path: Path, rebuild: bool, with_torch: bool | None, then_serve: bool) -> None:
    """Build the demo model repository, run a prediction on each model, optionally serve."""
    from modelport.demo.tour import check_folder, run_demo

    try:
        check_folder(path)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    run_demo(path, rebuild=rebuild, with_torch=with_torch, serve=then_serve, log=click.echo)
