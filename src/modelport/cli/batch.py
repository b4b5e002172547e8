"""``modelport batch``: score tables offline into a prediction store; check its freshness."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from modelport.cli.options import REPO_OPTION, TRUST_CODE_OPTION, TRUST_OPTION, echo_json
from modelport.config import BatchConfig, LoadOptions, RuntimeConfig
from modelport.repository import Repository


def _log_to_stderr(name: str) -> None:
    """What a long command does (its plan, retries) as plain lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _RunByDefault(click.Group):
    """``modelport batch NAME ...`` is short for ``modelport batch run NAME ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


STORE_OPTION = click.option(
    "--store",
    envvar="MODELPORT_STORE",
    default="predictions.db",
    show_default=True,
    help="Prediction store: a SQLite file or a postgresql:// URL (env MODELPORT_STORE).",
)


@click.group(cls=_RunByDefault)
def batch() -> None:
    """Score tables offline into a prediction store; check how fresh the stored ones are.

    'modelport batch NAME[:VERSION] --input ...' is short for 'modelport batch run ...'.
    """


@batch.command("run")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--input", "source", required=True, help="CSV, Parquet or JSON-lines file, or a database URL."
)
@click.option("--table", help="With a database --input: the table to score.")
@click.option("--query", help="With a database --input: a SELECT whose rows to score.")
@STORE_OPTION
@click.option("--key", help="Column that identifies a row (default: the row number).")
@click.option(
    "--map", "mapping", multiple=True, metavar="INPUT=COLUMNS",
    help="Columns feeding an input: x=a,b,c or 'x=pixel_*' (repeatable).",
)  # fmt: skip
@click.option("--outputs", multiple=True, help="Outputs to store: a,b or repeated (default: all).")
@click.option(
    "--chunk-rows",
    type=int,
    help="Rows per chunk: read, scored and written (one transaction) together "
    "(default: about 32 MiB of features and outputs, at most 10,000).",
)
@click.option("--batch-size", type=int, help="Rows per inference call (default: measured).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="With --engine ray: a cluster to join (default: start one).")
@click.option("--force", is_flag=True, help="Rescore rows this version already scored.")
@click.option(
    "--max-reject-ratio",
    default=BatchConfig.max_reject_ratio,
    show_default=True,
    type=float,
    help="Fail the run when more than this share of rows is rejected.",
)
@click.option("--allow-non-finite", is_flag=True, help="Score rows with NaN or Infinity.")
@click.option("--progress/--no-progress", default=True, help="Show rows, rows/s and ETA.")
@REPO_OPTION
@TRUST_OPTION
@TRUST_CODE_OPTION
def batch_run(
    ref: str, source: str, table: str | None, query: str | None, store: str, key: str | None,
    mapping: tuple[str, ...], outputs: tuple[str, ...], chunk_rows: int | None,
    batch_size: int | None, engine: str, ray_address: str | None, force: bool,
    max_reject_ratio: float, allow_non_finite: bool, progress: bool, repo_path: Path,
    trust_pickle: bool, trust_code: bool,
) -> None:  # fmt: skip
    """Score every row of a table with a model and store the predictions."""
    from modelport.batch import Store, open_source
    from modelport.batch.progress import Progress, duration

    _log_to_stderr("modelport.batch")
    try:
        config = BatchConfig(
            chunk_rows=chunk_rows, batch_size=batch_size, key=key, mapping=mapping,
            outputs=tuple(o.strip() for item in outputs for o in item.split(",") if o.strip())
            or None, force=force, max_reject_ratio=max_reject_ratio,
            allow_non_finite=allow_non_finite,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    table_source = open_source(source, table, query)
    shown = Progress(table_source.total_rows()) if progress else None
    with Store(store, config.retry) as sink:
        try:
            if engine == "ray":
                from modelport.batch.ray_engine import score_on_ray

                summary = score_on_ray(
                    Repository.open(repo_path), ref, table_source, sink, config, ray_address,
                    trust_pickle=trust_pickle, trust_code=trust_code, progress=shown,
                )  # fmt: skip
            else:
                from modelport.batch import score_table

                # One onnxruntime thread per call, a call per core (see Runtime.parallel_calls)
                single = RuntimeConfig(intra_op_threads=1)
                options = LoadOptions(
                    trust_pickle=trust_pickle, trust_code=trust_code, runtime=single
                )
                with Repository.open(repo_path).load(ref, options=options) as model:
                    summary = score_table(model, table_source, sink, config, shown)
        finally:
            if shown is not None:
                shown.close()
        click.echo(
            f"run {summary.run_id} {summary.status}: {summary.model}:{summary.version}, "
            f"{summary.rows:,} rows in {duration(summary.seconds)} "
            f"({summary.rows_per_s:,.0f} rows/s): {summary.scored:,} scored, "
            f"{summary.skipped:,} already scored, {summary.rejected:,} rejected"
        )
        if summary.rejected:
            for reject in sink.rejects(summary.run_id)[:5]:
                where = [f"row {reject.row}"] if reject.row is not None else []
                where += [f"key {reject.key!r}"] if reject.key else []
                click.echo(f"  rejected {', '.join(where) or 'a row'}: {reject.reason}")
            click.echo(f"  all of them: modelport_rejects where run_id = '{summary.run_id}'")


@batch.command("status")
@STORE_OPTION
@click.option(
    "--max-age", "max_age", multiple=True, metavar="[MODEL=]AGE",
    help="Predictions older than this are stale: 24h, or fraud=1h per model (repeatable).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def batch_status(ctx: click.Context, store: str, max_age: tuple[str, ...], as_json: bool) -> None:
    """Per model: the last good run, its rows, version and age. Exits 1 if any is stale."""
    from modelport.batch import Store
    from modelport.batch.freshness import MaxAge, freshness, freshness_table

    try:
        policy = MaxAge.parse(max_age)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with Store(store, create=False) as sink:
        report = freshness(sink, policy)
    if as_json:
        echo_json([f.to_dict() for f in report])
    else:
        click.echo(freshness_table(report))
    if any(f.stale for f in report):
        ctx.exit(1)
