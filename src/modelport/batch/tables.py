"""The prediction store's tables and the records read from them.

modelport_predictions  (model, key) -> version, outputs, input_hash, scored_at, run_id
modelport_runs         one row per run: model version, start, end, rows, rejects, status
modelport_rejects      rows a run could not score, with the reason
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from modelport.batch.codec import Layout
from modelport.errors import StoreError

METADATA = sa.MetaData()
RUNS = sa.Table(
    "modelport_runs",
    METADATA,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    # running, succeeded, failed, interrupted; live: answers a server computed and stored
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("rows_scored", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_skipped", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, default=0),
    sa.Column("layout", sa.Text, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
)
PREDICTIONS = sa.Table(
    "modelport_predictions",
    METADATA,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("outputs", sa.LargeBinary, nullable=False),
    sa.Column("input_hash", sa.String(32), nullable=False),
    sa.Column("scored_at", sa.Float, nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
)
REJECTS = sa.Table(
    "modelport_rejects",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("row", sa.BigInteger),  # in the source, from 0; NULL when read in parallel
    sa.Column("key", sa.String(512)),
    sa.Column("reason", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class Run:
    run_id: str
    model: str
    version: int
    source: str
    status: str
    started_at: float
    finished_at: float | None
    rows_scored: int
    rows_skipped: int
    rows_rejected: int
    layout: Layout
    error: str | None


@dataclass(frozen=True)
class Stored:
    """One stored prediction, decoded: ``outputs`` maps each output to its numpy row."""

    key: str
    version: int
    outputs: dict[str, Any]
    scored_at: float
    run_id: str


class Row(NamedTuple):
    """One scored row, ready to store (a tuple: a million of them are made per million rows)."""

    key: str
    outputs: bytes
    input_hash: str
    row: int | None  # in the source, from 0; None when read in parallel


@dataclass(frozen=True)
class Reject:
    row: int | None
    key: str | None
    reason: str


def run_of(row: Any) -> Run:
    return Run(
        row["run_id"], row["model"], row["version"], row["source"], row["status"],
        row["started_at"], row["finished_at"], row["rows_scored"], row["rows_skipped"],
        row["rows_rejected"], Layout.from_json(row["layout"]), row["error"],
    )  # fmt: skip


@functools.cache
def upsert_sql(dialect: str, paramstyle: str, first_wins: bool) -> str:
    if dialect not in ("postgresql", "sqlite"):
        raise StoreError(f"{dialect} stores are not supported; use SQLite or PostgreSQL")
    columns = [c.name for c in PREDICTIONS.columns]
    mark = "?" if paramstyle == "qmark" else "%s"
    changed = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("model", "key"))
    return (
        f"INSERT INTO {PREDICTIONS.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))}) "
        f"ON CONFLICT (model, key) DO UPDATE SET {changed}"
        # Within one run the first row of a key wins; write_chunk reports the others.
        + (f" WHERE {PREDICTIONS.name}.run_id <> excluded.run_id" if first_wins else "")
    )
