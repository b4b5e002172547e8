"""Tables to score, read in chunks so that memory stays flat however large the input.

CSV, Parquet and JSON-lines files (pyarrow), or a SQL table or query at any SQLAlchemy URL.
Every source yields ``Chunk``s of at most ``chunk_rows`` rows, numbered from 0 in source order;
rows a source cannot even parse (a malformed JSON line) come out as rejects, not errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelport.errors import BatchError, MissingDependencyError

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


@dataclass
class Chunk:
    batch: pa.RecordBatch
    first_row: int | None  # None: read in parallel, position unknown (rows need a key column)
    # Rows the source could not parse: row offset within the chunk -> reason. They are in
    # ``batch`` as nulls so that numbering stays aligned.
    rejects: dict[int, str] = field(default_factory=dict)


class Source(Protocol):
    """Where rows come from."""

    @property
    def description(self) -> str: ...

    def columns(self) -> list[str]: ...

    def total_rows(self) -> int | None: ...

    def read(self, chunk_rows: int) -> Iterator[Chunk]: ...


def open_source(spec: str, table: str | None = None, query: str | None = None) -> Source:
    """A file path (format from its suffix) or a SQLAlchemy URL with ``table`` or ``query``."""
    if "://" in spec:
        if (table is None) == (query is None):
            raise BatchError(
                f"--input {spec!r} is a database: pass exactly one of --table or --query"
            )
        from modelport.batch.database import redact, store_url

        url = store_url(spec)
        return SqlSource(url, table, query, f"{redact(url)} ({table or 'query'})")
    if table or query:
        raise BatchError(
            "--table and --query are for database inputs (a URL such as sqlite:///x.db)"
        )
    path = Path(spec)
    if not path.is_file():
        raise BatchError(f"--input {spec!r}: no such file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BatchError(
            f"--input {spec!r}: unknown format {path.suffix!r}; expected one of "
            f"{', '.join(sorted(FORMATS))}, or a database URL"
        )
    if kind == "csv":
        return CsvSource(path)
    return ParquetSource(path) if kind == "parquet" else JsonLinesSource(path)


def rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _numbered(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[Chunk]:
    first = 0
    for batch in rechunk(batches, rows):
        yield Chunk(batch, first)
        first += batch.num_rows


@dataclass
class ParquetSource:
    path: Path

    @property
    def description(self) -> str:
        return str(self.path)

    def _file(self) -> pq.ParquetFile:
        try:
            # pre_buffer=False: with read-ahead buffering on, pyarrow keeps every row group
            # it has read until the file is closed (memory grew with the file, measured).
            return pq.ParquetFile(self.path, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchError(f"{self.path} is not a readable Parquet file: {exc}") from exc

    def columns(self) -> list[str]:
        return list(self._file().schema_arrow.names)

    def total_rows(self) -> int | None:
        return int(self._file().metadata.num_rows)

    def read(self, chunk_rows: int) -> Iterator[Chunk]:
        # Memory holds one row group plus a chunk: files written with huge row groups cost
        # that much; modelport's own writers use row groups of 64k rows or fewer.
        return _numbered(self._file().iter_batches(batch_size=chunk_rows), chunk_rows)


@dataclass
class CsvSource:
    path: Path

    @property
    def description(self) -> str:
        return str(self.path)

    def columns(self) -> list[str]:
        try:
            with pacsv.open_csv(self.path) as reader:
                return list(reader.schema.names)
        except pa.ArrowInvalid as exc:
            raise BatchError(f"{self.path} is not a readable CSV file: {exc}") from exc

    def total_rows(self) -> int | None:
        lines = 0
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                lines += block.count(b"\n")
        return max(lines - 1, 0)  # the header; an estimate if fields hold newlines

    def read(self, chunk_rows: int) -> Iterator[Chunk]:
        # Every column is read as text: pyarrow infers types from the first block only and
        # would stop the whole run at the first later value that does not fit. Text is cast
        # to numbers per chunk, with per-row rejects where that fails.
        names = self.columns()
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            null_values=[""],
        )
        reader = pacsv.open_csv(
            self.path, read_options=pacsv.ReadOptions(block_size=8 << 20), convert_options=convert
        )
        try:
            yield from _numbered(iter(reader), chunk_rows)
        except pa.ArrowInvalid as exc:
            raise BatchError(f"{self.path}: {exc}") from exc
        finally:
            reader.close()


@dataclass
class JsonLinesSource:
    path: Path

    @property
    def description(self) -> str:
        return str(self.path)

    def columns(self) -> list[str]:
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise BatchError(f"{self.path}: the first line is not JSON: {exc}") from exc
                    if not isinstance(record, dict):
                        raise BatchError(f"{self.path}: each line must be a JSON object")
                    return list(record)
        raise BatchError(f"{self.path} is empty")

    def total_rows(self) -> int | None:
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.strip())

    def read(self, chunk_rows: int) -> Iterator[Chunk]:
        names = self.columns()
        first = 0
        with open(self.path, "rb") as f:
            lines = (line for line in f if line.strip())
            while block := [line for _, line in zip(range(chunk_rows), lines, strict=False)]:
                yield self.parse(block, names, first)
                first += len(block)

    @staticmethod
    def parse(lines: list[Any], names: list[str], first_row: int | None) -> Chunk:
        """One chunk from JSON lines; a line that is not a JSON object becomes a reject."""
        records: list[Any] = []
        rejects: dict[int, str] = {}
        for i, line in enumerate(lines):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                record, rejects[i] = {}, f"not valid JSON: {exc}"
            if not isinstance(record, dict):
                record, rejects[i] = {}, "the line is not a JSON object"
            records.append(record)
        columns = {n: [r.get(n) for r in records] for n in names}
        return Chunk(columns_to_batch(columns, rejects), first_row, rejects)


@dataclass
class SqlSource:
    url: str
    table: str | None
    query: str | None
    description: str

    def _select(self) -> Any:
        import sqlalchemy as sa

        if self.query is not None:
            return sa.text(self.query).columns().subquery("q")
        return sa.table(self.table or "")

    def _rows(self) -> Any:
        import sqlalchemy as sa

        return sa.select(sa.text("*")).select_from(self._select())

    def _engine(self) -> Any:
        import sqlalchemy as sa

        try:
            return sa.create_engine(self.url)
        except ImportError as exc:
            raise MissingDependencyError(
                f"the database driver for {self.description} is not installed ({exc}); for "
                "PostgreSQL: pip install 'modelport[postgres]'"
            ) from exc

    def columns(self) -> list[str]:
        import sqlalchemy as sa

        from modelport.batch.database import first_line

        engine = self._engine()
        try:
            with engine.connect() as conn:
                if self.table is not None:
                    if not sa.inspect(conn).has_table(self.table):
                        raise BatchError(f"{self.description}: there is no table {self.table!r}")
                    return [c["name"] for c in sa.inspect(conn).get_columns(self.table)]
                return list(conn.execute(self._rows().limit(0)).keys())
        except sa.exc.SQLAlchemyError as exc:
            raise BatchError(f"cannot read {self.description}: {first_line(exc)}") from exc
        finally:
            engine.dispose()

    def total_rows(self) -> int | None:
        import sqlalchemy as sa

        engine = self._engine()
        try:
            with engine.connect() as conn:
                counted = sa.select(sa.func.count()).select_from(self._select())
                return int(conn.execute(counted).scalar_one())
        except sa.exc.SQLAlchemyError:
            return None  # only the ETA needs it
        finally:
            engine.dispose()

    def read(self, chunk_rows: int) -> Iterator[Chunk]:
        import sqlalchemy as sa

        from modelport.batch.database import first_line

        engine = self._engine()
        first = 0
        try:
            with engine.connect() as conn:
                result = conn.execution_options(
                    stream_results=True, max_row_buffer=chunk_rows
                ).execute(self._rows())
                names = list(result.keys())
                for rows in result.partitions(chunk_rows):
                    columns = {n: [row[i] for row in rows] for i, n in enumerate(names)}
                    rejects: dict[int, str] = {}
                    yield Chunk(columns_to_batch(columns, rejects), first, rejects)
                    first += len(rows)
        except sa.exc.SQLAlchemyError as exc:
            raise BatchError(f"cannot read {self.description}: {first_line(exc)}") from exc
        finally:
            engine.dispose()


def columns_to_batch(columns: dict[str, list[Any]], rejects: dict[int, str]) -> pa.RecordBatch:
    """Python values to Arrow columns. A value of another kind than the rest of its column (a
    word among numbers) makes its row a reject rather than the whole chunk unreadable."""
    arrays = []
    for name, values in columns.items():
        try:
            arrays.append(pa.array(values))
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        kinds = [_kind(v) for v in values]
        counted = {k: kinds.count(k) for k in set(kinds) - {"null"}}
        common = max(counted, key=lambda k: counted[k])
        cleaned = list(values)
        for i, kind in enumerate(kinds):
            if kind not in ("null", common):
                rejects.setdefault(i, f"feature {name!r}: expected {common}, got {values[i]!r:.40}")
                cleaned[i] = None
        try:
            arrays.append(pa.array(cleaned))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise BatchError(
                f"column {name!r} mixes values that cannot form one column: {exc}"
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        numbers = all(v is None or isinstance(v, (bool, int, float)) for v in value)
        return "a list of numbers" if numbers else "a list of other values"
    return "text" if isinstance(value, str) else type(value).__name__
