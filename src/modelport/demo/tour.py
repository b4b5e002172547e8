"""What ``modelport demo`` does: build the demo repository, predict with each model, score the
digits in batch, then (optionally) serve it all.

    run_demo("demo-models", log=click.echo)              # builds on the first run only
    run_demo("demo-models", serve=True)                  # then serves on 127.0.0.1:8000

``check_folder`` raises ValueError for a folder that holds other models, before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelport.config import BatchConfig, LoadOptions, LookupConfig, ServerConfig
from modelport.datafiles import read_inputs, to_json
from modelport.demo import SAMPLES, STORE, build_demo, write_batch_table
from modelport.errors import installed
from modelport.repository import Repository

Log = Callable[[str], Any]
# The demo trusts the one code model it builds, digits-code: modelport/demo/digits_code.
TRUSTED = LoadOptions(trust_code=True)


def check_folder(path: Path) -> None:
    """Raise ValueError if ``path`` holds models but not the demo's: it is not ours to add to."""
    if path.is_dir() and Repository(path).names() and not (path / SAMPLES).is_dir():
        raise ValueError(f"{path} holds models but is not a demo repository; pick a new folder")


def run_demo(
    path: Path,
    *,
    rebuild: bool = False,
    with_torch: bool | None = None,
    serve: bool = False,
    log: Log = print,
) -> None:
    """Build the demo at ``path`` (when missing, or a new version of each with ``rebuild``), run
    each model on its sample, score the digits table into a store, and with ``serve`` serve
    the repository and the stored predictions until interrupted."""
    check_folder(path)
    repository = Repository(path)
    if rebuild or not path.is_dir() or not repository.names():
        build_demo(path, with_torch=with_torch, log=log)
    _predict_each(path, repository, log)
    first = repository.names()[0]
    log(
        "\nTry one yourself:\n"
        f"  modelport predict {first} --repo {path} --input {path / SAMPLES / first}.json"
    )
    batch_installed = installed("pyarrow") and installed("sqlalchemy")
    lookups = _score_in_batch(repository, log) if batch_installed else None
    if serve:
        _serve(path, first, lookups, log)


def _predict_each(path: Path, repository: Repository, log: Log) -> None:
    for name in repository.names():
        sample = path / SAMPLES / f"{name}.json"
        with repository.load(name, options=TRUSTED) as model:
            outputs = to_json(model.predict(read_inputs(sample, model.signature)))
        shown = {k: v if len(json.dumps(v)) < 120 else "[...]" for k, v in outputs.items()}
        log(f"{name}:{model.version} -> {json.dumps(shown)}")


def _score_in_batch(repository: Repository, log: Log) -> LookupConfig:
    """Score the digits table into the demo's SQLite store: batch prediction, then lookups."""
    from modelport.batch import Store, open_source, score_table

    table = write_batch_table(repository.root)
    store_path = repository.root / STORE
    with Store(store_path) as store, repository.load("digits") as model:
        summary = score_table(model, open_source(str(table)), store, BatchConfig(key="id"))
    log(
        f"\nBatch prediction: {summary.rows:,} rows of {table.name} scored by "
        f"digits:{summary.version} into {store_path} ({summary.scored:,} new, "
        f"{summary.skipped:,} unchanged). Freshness:\n"
        f"  modelport batch status --store {store_path} --max-age 24h"
    )
    return LookupConfig(str(store_path), ("24h",))


def _serve(path: Path, first: str, lookups: LookupConfig | None, log: Log) -> None:
    from modelport.server.lifecycle import serve

    config = ServerConfig(lookups=lookups, trust_code=TRUSTED.trust_code)
    base = f"http://{config.host}:{config.port}"
    log(
        f"\nServing {path} on {base} (docs: {base}/docs). Example requests:\n"
        f"  curl -s {base}/v2/models/{first}/infer -d @{path / SAMPLES / first}.v2.json\n"
        f"  curl -s {base}/v2/models/{first}\n"
        + (f"  curl -s {base}/v2/models/digits/predictions/d42\n" if lookups else "")
    )
    serve(path, config)
