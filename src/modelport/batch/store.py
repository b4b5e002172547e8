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

import functools
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelport.batch.codec import Layout
from modelport.config import RetryPolicy
from modelport.errors import MissingDependencyError, StoreError

log = logging.getLogger("modelport.batch")
T = TypeVar("T")

_meta = sa.MetaData()
RUNS = sa.Table(
    "modelport_runs",
    _meta,
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
    _meta,
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
    _meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("row", sa.BigInteger),  # in the source, from 0; NULL when read in parallel
    sa.Column("key", sa.String(512)),
    sa.Column("reason", sa.Text, nullable=False),
)
_IN_CHUNK = 900  # bound parameters per IN (...): under SQLite's oldest limit of 999
_INLINE_OUTPUTS = 5632  # bytes of outputs that fit in a PostgreSQL page beside the largest key


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


def store_url(spec: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a plain file path (a SQLite file).

    ``postgresql://`` uses psycopg 3, the driver modelport installs, rather than psycopg2.
    """
    text = os.fspath(spec)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    for plain in ("postgresql://", "postgres://"):
        if text.startswith(plain):
            return "postgresql+psycopg://" + text[len(plain) :]
    return text


def redact(url: str) -> str:
    """The URL without its password, for logs and the runs table."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


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
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
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
        _meta.create_all(self.engine)
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
            return [_run(r) for r in conn.execute(query).mappings()]

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

        return self._attempt(lambda: _connected(self._reads, read), "read scored keys")

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
        return _upsert_sql(self.engine.dialect.name, self.engine.dialect.paramstyle, first_wins)

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

        rows = self._attempt(lambda: _connected(self._reads, read), "look up predictions")
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
                if not _transient(exc):
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


_REFUSED = re.compile(
    r"does not exist|authentication failed|no pg_hba\.conf entry|permission denied", re.I
)


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """Worth retrying: the connection broke or the server is busy, not a wrong database name,
    password or query."""
    cause = exc.orig
    state = getattr(cause, "sqlstate", None)  # PostgreSQL's error class
    if state:
        # 08 connection, 40 rolled back (serialization, deadlock), 53 resources, 57 shutdown
        return str(state)[:2] in {"08", "40", "53", "57"}
    name = getattr(cause, "sqlite_errorname", None)
    if name is not None:
        return str(name) in {"SQLITE_BUSY", "SQLITE_LOCKED"}
    # No code: a connection that could not be made or was cut, unless the server refused it
    # for a reason that waiting does not change (psycopg has no code for those at connect).
    return _REFUSED.search(str(cause)) is None


@functools.cache
def _upsert_sql(dialect: str, paramstyle: str, first_wins: bool) -> str:
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


def _fits_in_page(layout: Layout) -> bool:
    """Whether a row of ``layout`` surely fits in one 8 KB PostgreSQL page, whatever its key
    (up to 512 characters, 2 KB in UTF-8) and model name. JSON rows have no bound."""
    return layout.format == "raw" and sum(f.nbytes for f in layout.fields) <= _INLINE_OUTPUTS


def _connected(engine: Engine, read: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return read(conn)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets lookups read while a run writes; NORMAL sync is still durable at each commit
    # point in WAL mode (a power cut can lose the last commits, never corrupt the file).
    cursor = connection.cursor()
    # Each row holds a few KB of outputs: on 64 KiB pages most rows fit in their leaf page
    # instead of a chain of overflow pages (about 8% faster runs, a smaller file). It only
    # takes effect while the file is still empty; an existing store keeps its page size.
    cursor.execute("PRAGMA page_size=65536")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _run(row: Any) -> Run:
    return Run(
        row["run_id"], row["model"], row["version"], row["source"], row["status"],
        row["started_at"], row["finished_at"], row["rows_scored"], row["rows_skipped"],
        row["rows_rejected"], Layout.from_json(row["layout"]), row["error"],
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
