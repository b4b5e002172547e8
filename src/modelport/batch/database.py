"""The store's database: URLs, SQLite's settings, which failures are worth a retry."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")


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


_REFUSED = re.compile(
    r"does not exist|authentication failed|no pg_hba\.conf entry|permission denied", re.I
)


def transient(exc: sa.exc.DBAPIError) -> bool:
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


def connected(engine: Engine, read: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return read(conn)


def sqlite_pragmas(connection: Any, _record: Any) -> None:
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


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
