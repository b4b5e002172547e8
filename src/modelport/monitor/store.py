"""The prediction log's table: one row per logged request, written by the server
(``serve --log-predictions URL``) and read by ``modelport monitor``.

    engine = open_log("predictions.db")        # a SQLite file, or a PostgreSQL URL
    records = read_log(engine, "digits", since_s=time.time() - 86400)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from modelport.batch.database import first_line, sqlite_pragmas, store_url
from modelport.errors import StoreError

TABLE = "modelport_predictions"
_metadata = sa.MetaData()
predictions = sa.Table(
    TABLE,
    _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("logged_at", sa.Float, nullable=False),  # seconds since the epoch
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),  # arrival to outputs ready
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("inputs", sa.Text),  # JSON {name: nested list}; NULL when kept as a hash only
    sa.Column("inputs_sha256", sa.String(64), nullable=False),
    sa.Column("outputs", sa.Text, nullable=False),  # JSON {name: nested list}
    sa.Index(f"{TABLE}_model_time", "model", "logged_at"),
)


def write(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (column -> value) in one transaction."""
    with engine.begin() as connection:
        connection.execute(predictions.insert(), rows)


@dataclass(frozen=True)
class Logged:
    """One logged request, its tensors decoded."""

    logged_at: float
    model: str
    version: str
    request_id: str
    latency_ms: float
    inputs: dict[str, np.ndarray] | None
    outputs: dict[str, np.ndarray]


def open_log(url: str) -> sa.Engine:
    """An engine on the log's database, its table created if missing; StoreError when the
    database cannot be reached."""
    engine = sa.create_engine(store_url(url))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", sqlite_pragmas)
    try:
        _metadata.create_all(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot open the prediction log at {where}: {first_line(exc)}") from None
    return engine


def encode(tensors: dict[str, np.ndarray]) -> str:
    """Tensors as JSON (numbers straight from numpy: some ten times faster than lists)."""
    plain = {name: _plain(array) for name, array in tensors.items()}
    return orjson.dumps(plain, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _plain(array: np.ndarray) -> Any:
    if array.dtype.kind in "iufb" and array.dtype != np.float16:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "OSU":  # text as text; other bytes decoded, never refused
        flat = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array.tolist()


def read_log(
    engine: sa.Engine, model: str, since_s: float = 0.0, version: str | None = None
) -> list[Logged]:
    """The logged requests of ``model`` (one version, or all) since ``since_s``, oldest first."""
    query = sa.select(predictions).where(
        predictions.c.model == model, predictions.c.logged_at >= since_s
    )
    if version is not None:
        query = query.where(predictions.c.version == version)
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(predictions.c.logged_at)).all()
    return [_logged(row) for row in rows]


def _logged(row: Any) -> Logged:
    inputs = None if row.inputs is None else _decode(row.inputs)
    return Logged(
        row.logged_at, row.model, row.version, row.request_id, row.latency_ms, inputs,
        _decode(row.outputs),
    )  # fmt: skip


def _decode(text: str) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in orjson.loads(text).items()}


def since(spec: str, now: float | None = None) -> float:
    """``24h``, ``30m``, ``7d`` or ``90s`` ago, in seconds since the epoch."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = spec[:-1], spec[-1:]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or amount < 0:
        raise ValueError(f"--since {spec!r}: expected a number and a unit, like 24h, 30m or 7d")
    return (time.time() if now is None else now) - amount * units[unit]
