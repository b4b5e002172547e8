"""The same scoring run on Ray Data: read in parallel, score and write in a pool of actors
(each loads the model once), for tables too big for one machine.

Each actor scores a block with the local engine's ``Scorer`` and writes it to the store in one
transaction, so the store ends up exactly as after a local run (the same keys, versions,
outputs and input hashes); only the run id differs, and rejects carry no row number (blocks
are read in parallel, so rows have no global position: ``--key`` is required).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from modelport.batch.job import RunSummary, Scorer, check_rejects, make_scorer, model_identity
from modelport.batch.sources import (
    Chunk,
    CsvSource,
    JsonLinesSource,
    ParquetSource,
    Source,
    SqlSource,
)
from modelport.batch.store import Store
from modelport.config import BatchConfig, LoadOptions, RuntimeConfig
from modelport.cpus import cpu_budget
from modelport.errors import BatchError, ModelportError, require
from modelport.ray_env import loopback
from modelport.repository import Repository

# Keep every Ray socket on loopback (Ray otherwise swaps 127.0.0.1 for the machine's external
# address) and nothing phoning home.


class _ScoreBlocks:
    """A Ray actor: loads the model once, then scores and stores block after block."""

    def __init__(
        self, repo: str, ref: str, store_url: str, run_id: str,
        recipe: dict[str, Any], trust_pickle: bool, trust_code: bool,
        json_columns: list[str] | None,
    ) -> None:  # fmt: skip
        options = LoadOptions(
            trust_pickle=trust_pickle, trust_code=trust_code,
            runtime=RuntimeConfig(intra_op_threads=1),
        )  # fmt: skip
        model = Repository.open(Path(repo)).load(ref, options=options)
        self.scorer = Scorer(model=model, **{**recipe, "threads": 1})  # an actor a core
        self.store = Store(store_url, self.scorer.config.retry)
        self.run_id = run_id
        self.json_columns = json_columns

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.json_columns is not None:  # JSON lines arrive as text, parsed like locally
            lines = table.column("text").to_pylist()
            chunk = JsonLinesSource.parse(lines, self.json_columns, None)
        else:
            chunk = Chunk(table.combine_chunks().to_batches()[0] if table.num_rows else
                          pa.RecordBatch.from_pylist([], schema=table.schema), None)  # fmt: skip
        scored = self.scorer.score(chunk, self.store)
        duplicates = scored.write(self.store, self.run_id, self.scorer.name, self.scorer.version)
        return pa.table({
            "rows": [scored.read], "scored": [len(scored.keys) - duplicates],
            "skipped": [scored.skipped], "rejected": [len(scored.rejects) + duplicates],
        })  # fmt: skip


def score_on_ray(
    repo: Repository, ref: str, source: Source, store: Store, config: BatchConfig,
    address: str | None = None, trust_pickle: bool = False, trust_code: bool = False,
    progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:  # fmt: skip
    """Score ``source`` into ``store`` on a Ray cluster (a local one unless ``address``).

    ``trust_pickle`` and ``trust_code`` allow what they allow in LoadOptions, on every actor.
    """
    require("ray", "ray")
    if config.key is None:
        raise BatchError(
            "--engine ray needs --key: blocks are read in parallel, so row numbers are not "
            "stable keys"
        )
    loopback()  # before Ray is imported: it reads these then
    import ray
    from ray.data import ActorPoolStrategy

    options = LoadOptions(trust_pickle=trust_pickle, trust_code=trust_code)
    with repo.load(ref, options=options) as model:
        name, version = model_identity(model)
        store.reap(name)
        scorer = make_scorer(model, name, version, source.columns(), config, store)
    exact = f"{name}:{version}"
    # What each actor needs besides the model, which it loads itself.
    recipe = {
        f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer) if f.name != "model"
    }
    run_id = store.start_run(name, version, source.description, scorer.layout)
    started = time.monotonic()
    counts = dict.fromkeys(("rows", "scored", "skipped", "rejected"), 0)
    status, error = "failed", None
    try:
        _connect(ray, address)
        actors = _pool_size(ray, address)
        json_columns = source.columns() if isinstance(source, JsonLinesSource) else None
        dataset = _read(ray, source, config)
        scored = dataset.map_batches(
            _ScoreBlocks,
            fn_constructor_kwargs={
                "repo": str(repo.root.resolve()), "ref": exact, "store_url": store.url,
                "run_id": run_id, "recipe": recipe,
                "trust_pickle": trust_pickle, "trust_code": trust_code,
                "json_columns": json_columns,
            },
            batch_size=scorer.chunk_rows,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=actors),
            num_cpus=1,
        )  # fmt: skip
        for stats in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            for column in counts:
                counts[column] += int(pa.compute.sum(stats.column(column)).as_py() or 0)
            if progress is not None:
                progress(RunSummary.of(run_id, name, version, counts, started, "running"))
        check_rejects(counts, config, store, run_id)
        status = "succeeded"
    except ModelportError as exc:
        error = str(exc)
        raise
    except Exception as exc:  # Ray wraps actor errors; keep the first line
        error = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        raise BatchError(f"the Ray run failed: {error}") from exc
    finally:
        store.finish_run(run_id, status, error)
    return RunSummary.of(run_id, name, version, counts, started, status)


def _pool_size(ray: Any, address: str | None) -> int:
    """One actor per core, keeping a CPU free for the read tasks: actors holding every CPU
    leave none to read with, and the pipeline waits forever."""
    if address is None:
        return cpu_budget().count
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus - 1)


def _connect(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # Logical CPUs beyond the cores keep Ray Data from deadlocking its own actor pool
        # on small machines; the actors themselves use one onnxruntime thread each.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False,
            _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
            num_cpus=4 * cpu_budget().count, object_store_memory=256 * 2**20,
        )  # fmt: skip
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # modelport shows its own


def _read(ray: Any, source: Source, config: BatchConfig) -> Any:
    if isinstance(source, ParquetSource):
        return ray.data.read_parquet(str(source.path))
    if isinstance(source, CsvSource):
        import pyarrow.csv as pacsv

        names = source.columns()
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
            null_values=[""],
        )  # fmt: skip
        return ray.data.read_csv(str(source.path), convert_options=convert)
    if isinstance(source, JsonLinesSource):
        return ray.data.read_text(str(source.path), drop_empty_lines=True)
    if isinstance(source, SqlSource):
        import sqlalchemy as sa

        url = source.url

        def connect() -> Any:
            return sa.create_engine(url).raw_connection()

        return ray.data.read_sql(sql_text(source), connect)
    raise BatchError(f"the Ray engine cannot read {source.description}")


def sql_text(source: SqlSource) -> str:
    """The SQL that reads ``source``: its own query, or its table compiled for its database,
    the name quoted the way that database quotes identifiers (a name is never SQL)."""
    if source.query is not None:
        return source.query
    import sqlalchemy as sa

    dialect = sa.engine.make_url(source.url).get_dialect()()
    statement = sa.select(sa.text("*")).select_from(sa.table(source.table or ""))
    return str(statement.compile(dialect=dialect))
