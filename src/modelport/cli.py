"""The ``modelport`` command: thin, it parses flags and calls the library."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from modelport.config import (
    BatchConfig,
    BatchingConfig,
    LoadOptions,
    LookupConfig,
    RuntimeConfig,
    ServerConfig,
    ServerLimits,
)
from modelport.errors import ModelportError, installed
from modelport.repository import Repository, VersionPolicy

REPO_OPTION = click.option(
    "--repo",
    "repo_path",
    envvar="MODELPORT_REPO",
    default="models",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model repository folder (env MODELPORT_REPO).",
)
TRUST_OPTION = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow pickle/joblib files, which can run arbitrary code when loaded.",
)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelport")
def main() -> None:
    """modelport: take a trained model from a notebook to production."""


@main.group()
def repo() -> None:
    """Manage a model repository."""


@repo.command("init")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path), default="models")
def repo_init(path: Path) -> None:
    """Create a model repository folder (existing models are kept)."""
    Repository.init(path)
    click.echo(f"model repository ready at {path}")


@main.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name; the import becomes its next version.")
@click.option(
    "--sample-input",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A few real input rows (JSON, .npy, .npz, CSV): needed to convert scikit-learn and "
    "PyTorch models (parity check) and code models without a declared signature.",
)
@click.option("--description", default="", help="Free text stored in the manifest.")
@REPO_OPTION
@TRUST_OPTION
def import_(
    source: Path,
    name: str,
    sample_input: Path | None,
    description: str,
    repo_path: Path,
    trust_pickle: bool,
) -> None:
    """Import an ONNX file, a scikit-learn/PyTorch model file or a code-model folder."""
    from modelport.datafiles import read_sample
    from modelport.importing import add_model

    sample = read_sample(sample_input) if sample_input else None
    created = not repo_path.exists()
    try:
        manifest = add_model(
            Repository.init(repo_path),
            name,
            source,
            sample_input=sample,
            trust_pickle=trust_pickle,
            description=description,
        )
    except BaseException:
        if created:  # a mistyped --repo should not leave a new empty folder behind
            shutil.rmtree(repo_path, ignore_errors=True)
        raise
    click.echo(f"imported {manifest.name}:{manifest.version} ({manifest.runtime}) into {repo_path}")


@main.command("list")
@REPO_OPTION
def list_(repo_path: Path) -> None:
    """List the models and versions in the repository."""
    repository = Repository.open(repo_path)
    names = repository.names()
    if not names:
        click.echo(f"no models in {repo_path}; add one with 'modelport import'")
    for name in names:
        versions = ",".join(map(str, repository.versions(name)))
        try:
            manifest = repository.manifest(name)
            about = f"{manifest.runtime:7} {manifest.created_at}"
        except ModelportError as exc:  # one broken version must not hide the others
            about = f"BROKEN: {exc}"
        click.echo(f"{name:24} versions {versions:12} {about}")


@main.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@REPO_OPTION
def show(ref: str, repo_path: Path) -> None:
    """Print a model version's manifest (latest version when none is given)."""
    _echo_json(Repository.open(repo_path).manifest(ref).to_dict())


@main.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inputs as JSON, .npy, .npz or CSV.",
)
@REPO_OPTION
@TRUST_OPTION
def predict(ref: str, input_path: Path, repo_path: Path, trust_pickle: bool) -> None:
    """Run a one-off prediction offline and print the outputs as JSON."""
    from modelport.datafiles import read_inputs, to_json

    options = LoadOptions(trust_pickle=trust_pickle)
    with Repository.open(repo_path).load(ref, options=options) as model:
        outputs = model.predict(read_inputs(input_path, model.signature))
        _echo_json({"model": model.name, "version": model.version, "outputs": to_json(outputs)})


def _limit_options(function: Any) -> Any:
    """One option per ServerLimits field, named after it (a test keeps them in step)."""
    defaults = ServerLimits()
    helps = {
        "max_body_bytes": "Largest request body accepted (413 beyond).",
        "max_json_depth": "Deepest JSON nesting accepted.",
        "max_elements": "Most elements in one input tensor.",
        "request_timeout_s": "Deadline per request, queueing included (504 beyond).",
        "max_queue": "Requests waiting per model version before 503 (Retry-After).",
    }
    for name, text in reversed(helps.items()):
        function = click.option(
            f"--{name.replace('_', '-')}", name, default=getattr(defaults, name),
            show_default=True, type=type(getattr(defaults, name)), help=text,
        )(function)  # fmt: skip
    return click.option(
        "--allow-non-finite", "allow_non_finite", is_flag=True,
        help="Accept NaN and Infinity in float inputs.",
    )(function)  # fmt: skip


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path), default="models")
@click.option(
    "--host",
    default=ServerConfig.host,
    show_default=True,
    help="Address to listen on; beyond loopback a token is required.",
)
@click.option("--port", default=ServerConfig.port, show_default=True, type=int)
@click.option(
    "--grpc-port",
    default=ServerConfig.grpc_port,
    type=int,
    help="Also serve the Open Inference Protocol over gRPC on this port, on the same host "
    "(needs modelport[grpc]).",
)
@click.option(
    "--workers",
    default=ServerConfig.workers,
    show_default=True,
    type=int,
    help="Processes on the same port, each with its own model instances.",
)
@click.option(
    "--token",
    envvar="MODELPORT_TOKEN",
    help="Access token clients must send as 'Authorization: Bearer ...' (env MODELPORT_TOKEN).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the access token from this file.",
)
@click.option("--no-auth", is_flag=True, help="Allow listening beyond loopback without a token.")
@click.option(
    "--grace-s",
    default=ServerConfig.grace_s,
    show_default=True,
    type=float,
    help="Seconds requests in flight may take to finish at shutdown.",
)
@click.option(
    "--version-policy",
    default=ServerConfig.version_policy,
    show_default=True,
    help="Versions to serve: latest, latest:N, all, specific:1,3.",
)
@click.option(
    "--threads",
    "intra_op_threads",
    default=0,
    type=int,
    help="onnxruntime threads per model instance (0: one per core).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="JSON-lines access log on stdout.",
)
@click.option(
    "--max-batch-size",
    type=int,
    default=None,
    help="Batch every model's requests into calls of up to N rows (overrides the "
    "manifests' batching settings).",
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="With --max-batch-size: how long a batch waits for more rows.",
)
@click.option(
    "--latency-budget-ms",
    type=float,
    default=None,
    help="With --max-batch-size: choose window and batch size from the model's measured cost "
    "to keep p99 within this budget (replaces --max-delay-ms).",
)
@click.option(
    "--cache",
    default=ServerConfig.cache,
    show_default=True,
    help="Prediction cache: memory (per process), off, or a redis:// URL shared by "
    "all workers and replicas.",
)
@click.option(
    "--cache-ttl-s",
    default=ServerConfig.cache_ttl_s,
    show_default=True,
    type=float,
    help="Seconds a cached prediction stays valid.",
)
@click.option(
    "--store",
    default=None,
    help="Also serve stored batch predictions from this store (SQLite file or postgresql:// "
    "URL) at /v2/models/NAME/predictions.",
)
@click.option(
    "--max-age", "max_age", multiple=True, metavar="[MODEL=]AGE",
    help="With --store: stored predictions older than this are stale (24h; fraud=1h).",
)  # fmt: skip
@click.option(
    "--write-back",
    is_flag=True,
    help="With --store: store predictions computed live for stale or missing keys.",
)
@click.option(
    "--http",
    type=click.Choice(["modelport", "uvicorn"]),
    default=ServerConfig.http,
    show_default=True,
    help="HTTP/1.1 implementation: modelport's own (faster per request) or uvicorn's.",
)
@_limit_options
@TRUST_OPTION
def serve(
    source: Path, host: str, port: int, grpc_port: int | None, workers: int, token: str | None,
    token_file: Path | None, no_auth: bool, grace_s: float, version_policy: str,
    intra_op_threads: int, access_log: bool, trust_pickle: bool, max_batch_size: int | None,
    max_delay_ms: float, latency_budget_ms: float | None, cache: str, cache_ttl_s: float,
    store: str | None, max_age: tuple[str, ...], write_back: bool, http: str, **limits: Any,
) -> None:  # fmt: skip
    """Serve a model repository (or one model) over the Open Inference Protocol."""
    from modelport.server.lifecycle import serve as run_server

    if token_file is not None:
        token = token_file.read_text().strip()
    try:
        VersionPolicy.parse(version_policy)  # fail now, not in every worker
        if (max_age or write_back) and store is None:
            raise ValueError("--max-age and --write-back need --store")
        if max_age:
            from modelport.batch.freshness import MaxAge

            MaxAge.parse(max_age)
        if cache not in ("memory", "off") and not cache.startswith(("redis://", "rediss://")):
            raise ValueError(f"unknown cache {cache!r}: use memory, off or a redis:// URL")
        config = ServerConfig(
            host=host, port=port, grpc_port=grpc_port, workers=workers, token=token or None,
            no_auth=no_auth,
            grace_s=grace_s, version_policy=version_policy, limits=ServerLimits(**limits),
            runtime=RuntimeConfig(intra_op_threads=intra_op_threads), trust_pickle=trust_pickle,
            cache=cache, cache_ttl_s=cache_ttl_s, http=http,
            lookups=None if store is None else LookupConfig(store, max_age, write_back),
            batching=None if max_batch_size is None else BatchingConfig(
                max_batch_size=max_batch_size, max_delay_s=max_delay_ms / 1000,
                latency_budget_s=None if latency_budget_ms is None else latency_budget_ms / 1000,
            ),
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    run_server(source, config, access_log=access_log)


@main.command()
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
    from modelport.datafiles import read_inputs, to_json
    from modelport.demo import SAMPLES, build_demo

    repository = Repository(path)
    if path.is_dir() and repository.names() and not (path / SAMPLES).is_dir():
        raise click.UsageError(
            f"{path} holds models but is not a demo repository; pick a new folder"
        )
    if rebuild or not path.is_dir() or not repository.names():
        build_demo(path, with_torch=with_torch, log=click.echo)
    for name in repository.names():
        sample = path / SAMPLES / f"{name}.json"
        with repository.load(name) as model:
            outputs = to_json(model.predict(read_inputs(sample, model.signature)))
        shown = {k: v if len(json.dumps(v)) < 120 else "[...]" for k, v in outputs.items()}
        click.echo(f"{name}:{model.version} -> {json.dumps(shown)}")
    first = repository.names()[0]
    click.echo(
        "\nTry one yourself:\n"
        f"  modelport predict {first} --repo {path} --input {path / SAMPLES / first}.json"
    )
    batch_installed = installed("pyarrow") and installed("sqlalchemy")
    lookups = _demo_batch(repository) if batch_installed else None
    if then_serve:
        from modelport.server.lifecycle import serve as run_server

        config = ServerConfig(lookups=lookups)
        base = f"http://{config.host}:{config.port}"
        click.echo(
            f"\nServing {path} on {base} (docs: {base}/docs). Example requests:\n"
            f"  curl -s {base}/v2/models/{first}/infer -d @{path / SAMPLES / first}.v2.json\n"
            f"  curl -s {base}/v2/models/{first}\n"
            + (f"  curl -s {base}/v2/models/digits/predictions/d42\n" if lookups else "")
        )
        run_server(path, config)


def _demo_batch(repository: Repository) -> LookupConfig:
    """Score the digits table into the demo's SQLite store: batch prediction, then lookups."""
    from modelport.batch import Store, open_source, score_table
    from modelport.demo import STORE, write_batch_table

    table = write_batch_table(repository.root)
    store_path = repository.root / STORE
    with Store(store_path) as store, repository.load("digits") as model:
        summary = score_table(model, open_source(str(table)), store, BatchConfig(key="id"))
    click.echo(
        f"\nBatch prediction: {summary.rows:,} rows of {table.name} scored by "
        f"digits:{summary.version} into {store_path} ({summary.scored:,} new, "
        f"{summary.skipped:,} unchanged). Freshness:\n"
        f"  modelport batch status --store {store_path} --max-age 24h"
    )
    return LookupConfig(str(store_path), ("24h",))


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


@main.group(cls=_RunByDefault)
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
def batch_run(
    ref: str, source: str, table: str | None, query: str | None, store: str, key: str | None,
    mapping: tuple[str, ...], outputs: tuple[str, ...], chunk_rows: int | None,
    batch_size: int | None, engine: str, ray_address: str | None, force: bool,
    max_reject_ratio: float, allow_non_finite: bool, progress: bool, repo_path: Path,
    trust_pickle: bool,
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
                    Repository.open(repo_path), ref, table_source, sink, config,
                    ray_address, trust_pickle, shown,
                )  # fmt: skip
            else:
                from modelport.batch import score_table

                # One onnxruntime thread per call, a call per core (see Runtime.parallel_calls)
                single = RuntimeConfig(intra_op_threads=1)
                options = LoadOptions(trust_pickle=trust_pickle, runtime=single)
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
        _echo_json([f.to_dict() for f in report])
    else:
        click.echo(freshness_table(report))
    if any(f.stale for f in report):
        ctx.exit(1)


def run() -> None:
    """Entry point: errors print as one clear line and exit 1, with no traceback."""
    try:
        code = main(standalone_mode=False)  # a command's ctx.exit(n) comes back as n
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ModelportError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("MODELPORT_DEBUG"):
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (this is a bug in modelport; "
            "set MODELPORT_DEBUG=1 to see the traceback and report it)",
            err=True,
        )
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
