"""The prediction store: predictions, runs and rejects in any SQLAlchemy database.

Three tables, created on first use::

    modelport_predictions  (model, key) -> version, outputs, input_hash, scored_at, run_id
    modelport_runs         one row per run: model version, start, end, rows, rejects, status
    modelport_rejects      rows a run could not score, with the reason

One row per model and key holds the newest prediction; a chunk is written in one transaction
(upsert), so a run killed at any point leaves whole chunks and rerunning it is harmless. Times
are Unix seconds (UTC). ``outputs`` is compact binary; ``decode`` (or a lookup) turns it back
into arrays with the layout recorded in the run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelport.batch.codec import Layout
from modelport.batch.database import (
    connected,
    first_line,
    redact,
    sqlite_pragmas,
    store_url,
    transient,
)
from modelport.batch.tables import (
    METADATA,
    PREDICTIONS,
    REJECTS,
    RUNS,
    Reject,
    Row,
    Run,
    Stored,
    run_of,
    upsert_sql,
)
from modelport.config import RetryPolicy
from modelport.errors import MissingDependencyError, StoreError

log = logging.getLogger("modelport.batch")
T = TypeVar("T")

_IN_CHUNK = 900  # bound parameters per IN (...): under SQLite's oldest limit of 999
_INLINE_OUTPUTS = 5632  # bytes of outputs that fit in a PostgreSQL page beside the largest key


def _fits_in_page(layout: Layout) -> bool:
    """Whether a row of ``layout`` surely fits in one 8 KB PostgreSQL page, whatever its key
    (up to 512 characters, 2 KB in UTF-8) and model name. JSON rows have no bound."""
    return layout.format == "raw" and sum(f.nbytes for f in layout.fields) <= _INLINE_OUTPUTS


class Store:
    """Predictions, runs and rejects in one database. Thread-safe (one engine, pooled)."""

    def __init__(
        self, url: str | os.PathLike[str], retry: RetryPolicy = RetryPolicy(), create: bool = True
    ) -> None:
        """Open (and with ``create``, set up) the store at ``url``; without ``create`` a store
        that does not exist yet is an error rather than a new empty one."""
        self.url = store_url(url)
        self.retry = retry
        database = sa.make_url(self.url).database if self.url.startswith("sqlite") else None
        if database and database != ":memory:":
            path = Path(database)
            if not path.parent.is_dir():
                raise StoreError(f"cannot create the store {path}: {path.parent} is not a folder")
            if not create and not path.is_file():
                raise StoreError(f"no prediction store at {path}; 'modelport batch' creates one")
        try:
            backend = sa.make_url(self.url).get_backend_name()
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"{redact(self.url)} is not a database URL: {exc}") from exc
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"{backend} stores are not supported: use a SQLite file or a postgresql:// URL"
            )
        try:
            self.engine: Engine = sa.create_engine(self.url, pool_pre_ping=True)
        except ImportError as exc:
            raise MissingDependencyError(
                f"the PostgreSQL driver is not installed ({exc}); install it with: "
                "pip install 'modelport[postgres]'"
            ) from exc
        # Reads on PostgreSQL run outside transactions: a lookup is one statement, and a
        # pooled connection in a transaction costs a BEGIN and a ROLLBACK round trip more
        # (a stored-prediction lookup: 1.08 -> 0.70 ms at p50, measured). SQLite's driver
        # begins transactions only to write.
        self._reads: Engine = self.engine
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", sqlite_pragmas)
        else:
            self._reads = sa.create_engine(
                self.url, pool_pre_ping=True, isolation_level="AUTOCOMMIT"
            )
        self._layouts: dict[str, Layout] = {}
        self._lock = threading.Lock()
        self._attempt(lambda: self._create_tables(create), "open the tables")

    def close(self) -> None:
        self.engine.dispose()
        self._reads.dispose()

    def _create_tables(self, create: bool) -> None:
        new = not sa.inspect(self.engine).has_table(RUNS.name)
        if new and not create:
            raise StoreError(
                f"{redact(self.url)} holds no prediction store; 'modelport batch' creates one"
            )
        METADATA.create_all(self.engine)
        if new and self.engine.dialect.name == "postgresql":
            # Outputs are packed numbers that do not compress: rows stay whole in the table's
            # pages, with no attempt at compression and no TOAST table to write (a third less
            # of PostgreSQL's time per row, measured). start_run switches to out-of-line
            # storage for good before the first rows that might not fit in a page.
            self._set_storage("PLAIN")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------

    def start_run(
        self, model: str, version: int, source: str, layout: Layout, status: str = "running"
    ) -> str:
        """A new run; ``status="live"`` records a server's live answers (never a good run)."""
        run_id = uuid.uuid4().hex
        now = time.time()
        row = {
            "run_id": run_id, "model": model, "version": version, "source": source,
            "status": status, "started_at": now, "heartbeat_at": now, "rows_scored": 0,
            "rows_skipped": 0, "rows_rejected": 0, "layout": layout.to_json(),
            "host": socket.gethostname(), "pid": os.getpid(),
        }  # fmt: skip
        self._write(lambda c: c.execute(RUNS.insert(), row), "record the run")
        if self.engine.dialect.name == "postgresql" and not _fits_in_page(layout):
            self._set_storage("EXTERNAL")
        return run_id

    def _set_storage(self, kind: str) -> None:
        """How PostgreSQL stores outputs: PLAIN (in the row) or EXTERNAL (TOAST, any size)."""
        current = sa.text(
            "SELECT attstorage FROM pg_attribute "
            "WHERE attrelid = CAST(:table AS regclass) AND attname = 'outputs'"
        ).bindparams(table=PREDICTIONS.name)

        def alter(conn: Connection) -> None:
            if conn.execute(current).scalar() != kind[0].lower():  # 'p' or 'e'
                conn.execute(sa.text(
                    f"ALTER TABLE {PREDICTIONS.name} ALTER COLUMN outputs SET STORAGE {kind}"
                ))  # fmt: skip

        self._write(alter, "set how outputs are stored")

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        values = {"status": status, "finished_at": time.time(), "error": error}
        self._write(
            lambda c: c.execute(RUNS.update().where(RUNS.c.run_id == run_id).values(**values)),
            "record the end of the run",
        )

    def reap(self, model: str, stale_after_s: float = 600.0) -> int:
        """Mark runs of ``model`` that died without finishing as ``interrupted``.

        A run is dead when its process is gone (same host) or it has not written for
        ``stale_after_s`` (another host). Returns how many were marked.
        """
        host, now, dead = socket.gethostname(), time.time(), []
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(RUNS.c.run_id, RUNS.c.host, RUNS.c.pid, RUNS.c.heartbeat_at).where(
                    RUNS.c.model == model, RUNS.c.status == "running"
                )
            ).all()
        for run_id, run_host, pid, heartbeat in rows:
            if (run_host == host and not _alive(pid)) or now - heartbeat > stale_after_s:
                dead.append(run_id)
        for run_id in dead:
            self.finish_run(run_id, "interrupted", "the process stopped before the run ended")
        return len(dead)

    def runs(self, model: str | None = None) -> list[Run]:
        """Runs, newest first."""
        query = sa.select(RUNS).order_by(RUNS.c.started_at.desc())
        if model is not None:
            query = query.where(RUNS.c.model == model)
        with self._reads.connect() as conn:
            return [run_of(r) for r in conn.execute(query).mappings()]

    def rejects(self, run_id: str) -> list[Reject]:
        query = sa.select(REJECTS.c.row, REJECTS.c.key, REJECTS.c.reason).where(
            REJECTS.c.run_id == run_id
        )
        with self._reads.connect() as conn:
            return [Reject(*r) for r in conn.execute(query.order_by(REJECTS.c.row))]

    # -- writing ------------------------------------------------------------------------------

    def has_predictions(self, model: str, version: int) -> bool:
        query = sa.select(PREDICTIONS.c.key).where(
            PREDICTIONS.c.model == model, PREDICTIONS.c.version == version
        )
        with self._reads.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def scored(self, model: str, version: int, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """key -> (input hash, run id), for the keys ``version`` of ``model`` has scored."""

        def read(conn: Connection) -> dict[str, tuple[str, str]]:
            found: dict[str, tuple[str, str]] = {}
            for start in range(0, len(keys), _IN_CHUNK):
                query = sa.select(
                    PREDICTIONS.c.key, PREDICTIONS.c.input_hash, PREDICTIONS.c.run_id
                ).where(
                    PREDICTIONS.c.model == model,
                    PREDICTIONS.c.version == version,
                    PREDICTIONS.c.key.in_(keys[start : start + _IN_CHUNK]),
                )
                found.update((key, (digest, run)) for key, digest, run in conn.execute(query))
            return found

        return self._attempt(lambda: connected(self._reads, read), "read scored keys")

    def write_chunk(
        self, run_id: str, model: str, version: int, rows: Sequence[Row],
        rejects: Sequence[Reject], skipped: int, first_wins: bool = True,
    ) -> int:  # fmt: skip
        """One transaction: a chunk's predictions, its rejects and the run's counters. All of
        it lands, or none of it.

        With ``first_wins``, a key that an earlier chunk of the same run already wrote (a
        duplicate further down the table) keeps its first prediction and the later row becomes
        a reject; returns how many. Without it (a server's live answers, which may refresh a
        key again later), the newest row replaces the stored one.
        """
        now = time.time()
        values = [(model, r.key, version, r.outputs, r.input_hash, now, run_id) for r in rows]

        def write(conn: Connection) -> int:
            duplicates: list[Reject] = []
            if values:
                # Straight to the driver: SQLAlchemy's per-row parameter handling cost as much
                # as the database's own work on wide outputs (measured).
                done = conn.exec_driver_sql(self._upsert(first_wins), values)
                kept_earlier = 0 <= done.rowcount < len(values)  # rows not written
                if first_wins and kept_earlier:
                    duplicates = self._duplicates(conn, run_id, model, rows, now)
            bad = [
                {"run_id": run_id, "model": model, "row": r.row, "key": r.key, "reason": r.reason}
                for r in [*rejects, *duplicates]
            ]
            if bad:
                conn.execute(REJECTS.insert(), bad)
            conn.execute(
                RUNS.update().where(RUNS.c.run_id == run_id).values(
                    rows_scored=RUNS.c.rows_scored + len(values) - len(duplicates),
                    rows_skipped=RUNS.c.rows_skipped + skipped,
                    rows_rejected=RUNS.c.rows_rejected + len(bad),
                    heartbeat_at=now,
                )
            )  # fmt: skip
            return len(duplicates)

        return self._write(write, f"write {len(values)} predictions")

    @staticmethod
    def _duplicates(
        conn: Connection, run_id: str, model: str, rows: Sequence[Row], now: float
    ) -> list[Reject]:
        """Rows whose key this run had written before this chunk (its rows carry ``now``)."""
        earlier: set[str] = set()
        for start in range(0, len(rows), _IN_CHUNK):
            query = sa.select(PREDICTIONS.c.key).where(
                PREDICTIONS.c.model == model,
                PREDICTIONS.c.run_id == run_id,
                PREDICTIONS.c.scored_at != now,
                PREDICTIONS.c.key.in_([r.key for r in rows[start : start + _IN_CHUNK]]),
            )
            earlier.update(conn.execute(query).scalars())
        reason = "duplicate key {!r}: an earlier row of this run has it (the first one is kept)"
        return [Reject(r.row, r.key, reason.format(r.key)) for r in rows if r.key in earlier]

    def _upsert(self, first_wins: bool) -> str:
        return upsert_sql(self.engine.dialect.name, self.engine.dialect.paramstyle, first_wins)

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, model: str, keys: Sequence[str]) -> dict[str, Stored]:
        """The stored predictions for ``keys`` (missing keys are absent)."""
        if not keys:
            return {}

        def read(conn: Connection) -> list[Any]:
            found: list[Any] = []
            for start in range(0, len(keys), _IN_CHUNK):
                part = keys[start : start + _IN_CHUNK]
                where = (
                    PREDICTIONS.c.key == part[0] if len(part) == 1 else PREDICTIONS.c.key.in_(part)
                )
                found.extend(
                    conn.execute(
                        sa.select(
                            PREDICTIONS.c.key, PREDICTIONS.c.version, PREDICTIONS.c.outputs,
                            PREDICTIONS.c.scored_at, PREDICTIONS.c.run_id,
                        ).where(PREDICTIONS.c.model == model, where)
                    ).all()
                )  # fmt: skip
            return found

        rows = self._attempt(lambda: connected(self._reads, read), "look up predictions")
        return {
            key: Stored(key, version, self.layout(run_id).decode(blob), scored_at, run_id)
            for key, version, blob, scored_at, run_id in rows
        }

    def layout(self, run_id: str) -> Layout:
        """The output layout a run wrote its predictions with (cached: it never changes)."""
        with self._lock:
            known = self._layouts.get(run_id)
        if known is not None:
            return known
        query = sa.select(RUNS.c.layout).where(RUNS.c.run_id == run_id)
        with self._reads.connect() as conn:
            text = conn.execute(query).scalar_one()
        layout = Layout.from_json(text)
        with self._lock:
            self._layouts[run_id] = layout
        return layout

    def models(self) -> set[str]:
        """Every model with a run in the store."""
        with self._reads.connect() as conn:
            return set(conn.execute(sa.select(RUNS.c.model).distinct()).scalars())

    def count(self, model: str) -> int:
        query = sa.select(sa.func.count()).select_from(PREDICTIONS)
        with self._reads.connect() as conn:
            return int(conn.execute(query.where(PREDICTIONS.c.model == model)).scalar_one())

    # -- retries ------------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T], what: str) -> T:
        def transaction() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return self._attempt(transaction, what)

    def _attempt(self, work: Callable[[], T], what: str) -> T:
        """Run ``work``, retrying with exponential backoff while the database is unreachable.

        Only connection-level failures are retried; a transaction that failed was rolled
        back by the database, so running it again is safe.
        """
        delay = self.retry.first_delay_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return work()
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if not transient(exc):
                    raise StoreError(
                        f"could not {what} in {redact(self.url)}: {first_line(exc)}"
                    ) from exc
                if attempt == self.retry.attempts:
                    raise StoreError(
                        f"could not {what} in {redact(self.url)} after {attempt} attempts: "
                        f"{first_line(exc)}. Once the database is back, run the same command "
                        "again (a batch run resumes where it stopped)"
                    ) from exc
                log.warning(
                    "warning: store %s: could not %s (%s); retrying in %.1f s",
                    redact(self.url), what, first_line(exc), delay,
                )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, self.retry.max_delay_s)
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(f"could not {what} in {redact(self.url)}: {exc}") from exc
        raise AssertionError("unreachable")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
