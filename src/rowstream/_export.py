"""``rowstream.export``: a table or query into a CSV, JSON Lines or Parquet file.

Data path: source -> statement (a table name becomes a quoted ``select``) -> strategy -> sink
-> atomic file -> report.

- ``copy`` (PostgreSQL, when rowstream owns the connection): the server renders the rows with
  ``COPY ... TO STDOUT`` (:mod:`rowstream._pgcopy`); for Parquet it sends binary COPY, which
  ADBC's driver decodes into Arrow while the encoder writes (:mod:`rowstream._pgarrow`), and
  a cursor reads when ADBC cannot connect.
- ``stream`` (every database): rows come through :func:`rowstream.stream` in byte-sized
  batches and are rendered by the sink. On PostgreSQL the server still renders each value as
  text, so both strategies write the same bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select, TextualSelect

from ._atomic import STDOUT, AtomicFile, check_writable, write_error
from ._coltypes import column_kind, column_notes, declared_types, query_kinds, typed_arrow
from ._exceptions import ConfigurationError, QueryError, RowstreamError, SourceError
from ._guard import check_read_only, check_where
from ._pgcopy import (
    PgColumn,
    Write,
    copy_csv,
    copy_jsonl,
    json_array,
    json_text,
    pg_transaction,
    probe,
    quote_ident,
)
from ._progress import ExportProgress, format_bytes, peak_memory_mb
from ._sinks import CsvSink, JsonlSink, Sink, check_compression
from ._sinks._options import FORMATS, Format, check_edge_values
from ._sizing import DEFAULT_BATCH_BYTES
from ._source import (
    ResolvedSource,
    Source,
    create_engine,
    mask_url,
    resolve_source,
    resolve_url,
)
from ._strategy import shielded
from ._stream import stream
from ._translate import raise_translated
from ._values import (
    DEFAULT_ZERO_DATES,
    Kind,
    Plan,
    PlanColumn,
    ZeroDates,
    check_zero_dates,
)
from ._watchdog import DEFAULT_READ_TIMEOUT, Watchdog, check_read_timeout

if TYPE_CHECKING:
    # pyarrow loads only for Parquet (see rowstream._sinks).
    from ._arrow import ArrowColumn
    from ._pgtypes import PgRead
    from ._sinks._parquet import ParquetSink

__all__ = ["FORMATS", "ExportReport", "export", "format_for_path"]

logger = logging.getLogger("rowstream")

ExportStrategy = Literal["auto", "copy", "stream"]
InfinityChoice = Literal["error", "null", "clamp", "text"]
NanChoice = Literal["error", "null", "text"]
TEXT_COMPRESSIONS = ("gzip", "none")
EXPORT_STRATEGIES = ("auto", "copy", "stream")
WRITE_BEHIND_BYTES = 32 * 1024 * 1024

# Longest suffixes first: "orders.csv.gz" is gzip'd CSV, not a ".gz" format.
_SUFFIXES: tuple[tuple[str, Format, str | None], ...] = (
    (".csv.gz", "csv", "gzip"),
    (".jsonl.gz", "jsonl", "gzip"),
    (".ndjson.gz", "jsonl", "gzip"),
    (".csv", "csv", None),
    (".jsonl", "jsonl", None),
    (".ndjson", "jsonl", None),
    (".parquet", "parquet", None),
    (".pq", "parquet", None),
)

TableOrStatement = str | sa.Table | Select[Any] | TextualSelect | TextClause


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    ``bytes`` is the size of the output file; ``peak_memory_mb`` the process's peak resident
    memory at the end (it includes whatever the process held before the export).
    """

    path: str
    format: str
    rows: int
    bytes: int
    seconds: float
    strategy: str
    peak_memory_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: rows, seconds, rows/s, output size, peak memory."""
        return (
            f"exported {self.rows:,} rows to {self.path} in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s), {format_bytes(self.bytes)}, "
            f"peak memory {self.peak_memory_mb:.0f} MB"
        )


def format_for_path(
    path: str | Path, format: str | None = None, compression: str | None = None
) -> tuple[Format, str | None]:
    """The format and compression an export to ``path`` uses: explicit ones win, else the suffix.

    >>> format_for_path("orders.csv.gz")
    ('csv', 'gzip')
    """
    name = str(path).lower()
    by_suffix = next(((f, c) for s, f, c in _SUFFIXES if name.endswith(s)), None)
    if format is None:
        if name == STDOUT:
            format = "csv"
        elif by_suffix is None:
            raise ConfigurationError(
                f"cannot tell the format of {str(path)!r} from its suffix: pass --format "
                "csv, jsonl or parquet, or name the file .csv, .csv.gz, .jsonl, .ndjson or .parquet"
            )
        else:
            format = by_suffix[0]
    if format not in FORMATS:
        raise ConfigurationError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if compression is None and by_suffix is not None and by_suffix[0] == format:
        compression = by_suffix[1]
    if format == "parquet":
        if name == STDOUT:
            raise ConfigurationError(
                "Parquet cannot be written to standard output (its footer points back into "
                "the file): give a file name, or use --format csv or jsonl with -o -"
            )
        return "parquet", check_compression(compression or "zstd")
    if compression not in (None, *TEXT_COMPRESSIONS):
        raise ConfigurationError(
            f"unknown compression {compression!r} for {format}: use gzip or none"
        )
    return format, None if compression == "none" else compression


class _Counter:
    """A write-only file that counts bytes and cannot be closed by the writers above it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.bytes = 0
        self.closed = False
        self._advised = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._out.write(data)
        self.bytes += len(data)
        if self.bytes - self._advised >= WRITE_BEHIND_BYTES:
            self._write_behind()
        return n

    def _write_behind(self) -> None:
        # Start writing finished pages to disk now, so the final fsync has little left to do
        # (on a 584 MB CSV it took 1.2 s at the end); Linux starts write-back of dirty pages
        # on POSIX_FADV_DONTNEED without waiting for it. Pipes and other systems: no-op.
        start, self._advised = self._advised, self.bytes
        with contextlib.suppress(OSError, AttributeError, ValueError):
            self._out.flush()
            os.posix_fadvise(self._out.fileno(), start, 0, os.POSIX_FADV_DONTNEED)

    def flush(self) -> None:
        self._out.flush()

    def tell(self) -> int:
        return self.bytes

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        # Parquet and gzip writers close their file; the atomic file must stay open to fsync.
        pass


@dataclass
class _Job:
    format: Format
    compression: str | None
    batch_rows: int | None
    batch_bytes: int | None
    progress: ExportProgress
    out: BinaryIO
    counter: _Counter
    infinity: str = "error"
    nan: str = "error"
    rows: int = 0
    strategy: str = ""
    kinds: list[PlanColumn] | None = None
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES
    text_columns: frozenset[str] = frozenset()
    read_timeout: float | None = DEFAULT_READ_TIMEOUT


async def export(
    source: Source,
    table_or_statement: TableOrStatement,
    path: str | Path,
    *,
    format: Format | None = None,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    compression: str | None = None,
    strategy: ExportStrategy = "auto",
    progress: bool = False,
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
    text_columns: Sequence[str] | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    infinity: InfinityChoice = "error",
    nan: NanChoice = "error",
) -> ExportReport:
    """Export a table or a query to ``path`` (CSV, JSON Lines or Parquet), atomically.

    ``table_or_statement`` is a table name (``"orders"``, ``"sales.orders"``; quoted by
    SQLAlchemy, never pasted), a ``Table``, a ``select()`` or a ``text()``. ``where`` (SQL) and
    ``columns`` narrow a table. The format follows the suffix (``.csv``, ``.csv.gz``,
    ``.jsonl``, ``.ndjson``, ``.parquet``) unless given; ``"-"`` is standard output (CSV or
    JSONL). The file appears only when complete: on an error or cancellation the target is
    untouched and the query is cancelled on the server.

    Values are written as PostgreSQL writes them: CSV as ``COPY ... WITH CSV HEADER``, JSONL
    values as ``to_jsonb()``, timestamps in UTC; in Parquet, ``numeric(p, s)`` is a decimal,
    and ``interval``, ``uuid``, ``json`` and unconstrained ``numeric`` are their PostgreSQL
    text (Parquet cannot store Arrow's month_day_nano interval). ``strategy="auto"`` uses COPY
    on PostgreSQL when rowstream opens the connection, and :func:`rowstream.stream` otherwise
    (``"stream"`` forces it; ``batch_rows``/``batch_bytes`` apply to it). ``read_timeout``
    bounds each wait for the database on every path, as in :func:`rowstream.stream`: on the
    COPY and ADBC paths each chunk of data pushes the deadline back, so only silence counts,
    and an export cut short says to run it again.

    A value is written exactly or the export stops with a :class:`SinkError` that names the
    column and the way past it (docs/types-mariadb.md, docs/types-sqlite.md):
    ``zero_dates`` is what MariaDB's zero dates (``0000-00-00``) become, ``"refuse"`` (the
    default), ``"null"`` or ``"text"`` (the server's text; the column is text in Parquet);
    ``text_columns`` are written to Parquet as text (each value as CSV writes it), for SQLite
    columns that hold values of several storage classes.

    PostgreSQL values a Parquet type cannot hold stop the export with a line naming the
    column and the value, unless told otherwise: ``infinity=`` for ``infinity``/``-infinity``
    and instants past 294247 in dates and timestamps (``"null"``, ``"clamp"`` to the type's
    extremes, which DuckDB reads as infinity, or ``"text"``), ``nan=`` for ``NaN`` in
    ``numeric(p, s)`` (``"null"`` or ``"text"``). Arrays of several dimensions are refused
    (cast them to text). CSV and JSONL hold every value as PostgreSQL renders it.

    Example::

        report = await rowstream.export(
            "postgresql://app@db/shop", "orders", "orders.parquet", where="status = 'paid'"
        )
        print(report.summary())
    """
    started = time.perf_counter()
    fmt, compression = format_for_path(path, format, compression)
    if strategy not in EXPORT_STRATEGIES:
        raise ConfigurationError(
            f"unknown export strategy {strategy!r}: choose one of {', '.join(EXPORT_STRATEGIES)}"
        )
    if batch_rows is not None and batch_rows < 1:
        raise ConfigurationError(f"batch_rows must be at least 1, not {batch_rows}")
    if batch_bytes is not None and batch_bytes < 1:
        raise ConfigurationError(f"batch_bytes must be positive, not {batch_bytes}")
    check_edge_values(infinity, nan)
    if str(path) != STDOUT:
        check_writable(Path(path))
    _check_sqlite_file(source)
    zero_dates = check_zero_dates(zero_dates)
    as_text = frozenset(text_columns or ())
    resolved = resolve_source(source)
    pg_engine = _asyncpg_engine(resolved)
    target = AtomicFile(path)
    try:
        if as_text and resolved.dialect == "postgresql":
            raise ConfigurationError(
                "text_columns (--text-columns) is for MariaDB and SQLite: on PostgreSQL, cast "
                "the column to text in the query (col::text)"
            )
        statement, arrow, kinds = await _statement(
            resolved, table_or_statement, where, columns, fmt
        )
        if resolved.dialect != "postgresql":
            if kinds is None and isinstance(statement, (TextClause, TextualSelect)):
                statement, kinds = await query_kinds(resolved, statement)
            arrow = typed_arrow(arrow, kinds, resolved.dialect, fmt, zero_dates, as_text)
        with ExportProgress(enabled=progress) as bar, target as raw:
            counter = _Counter(raw)
            out: BinaryIO = counter  # type: ignore[assignment]
            zipped: gzip.GzipFile | None = None
            if compression == "gzip":
                # mtime=0: the same rows give the same bytes.
                zipped = gzip.GzipFile(fileobj=out, mode="wb", mtime=0)
                out = zipped  # type: ignore[assignment]
            job = _Job(fmt, compression, batch_rows, batch_bytes, bar, out, counter, infinity, nan)
            job.kinds, job.zero_dates, job.text_columns = kinds, zero_dates, as_text
            job.read_timeout = check_read_timeout(read_timeout)
            use_copy = (
                resolved.dialect == "postgresql"
                and resolved.borrowed is None
                and strategy != "stream"
            )
            if strategy == "copy" and not use_copy:
                raise ConfigurationError(
                    "strategy='copy' needs PostgreSQL and a URL or engine (not a connection)"
                )
            try:
                if use_copy:
                    await _export_copy(pg_engine, statement, job)
                else:
                    await _export_stream(resolved, pg_engine, statement, arrow, job)
                if zipped is not None:
                    zipped.close()
            except OSError as exc:
                raise write_error(str(path), exc) from None
    finally:
        if pg_engine is not resolved.engine:
            await shielded(pg_engine.dispose())
        await shielded(resolved.aclose())
    return ExportReport(
        path=str(path),
        format=fmt,
        rows=job.rows,
        bytes=target.size or counter.bytes,
        seconds=time.perf_counter() - started,
        strategy=job.strategy,
        peak_memory_mb=peak_memory_mb(),
    )


# ---------------------------------------------------------------- statement


def _check_sqlite_file(source: Source) -> None:
    """SQLite creates a missing database file on connect: an export must not leave one."""
    if not isinstance(source, (str, URL)):
        return
    url = resolve_url(source)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or url.query.get("uri"):
        return
    if not Path(database).is_file():
        raise SourceError(
            f"cannot use {mask_url(url)}: there is no SQLite database at {database!r}; "
            "check the path (sqlite:///relative.db or sqlite:////absolute.db)"
        )


def _split_name(name: str) -> tuple[str | None, str]:
    if not name or any(not part for part in name.split(".")) or name.count(".") > 1:
        raise ConfigurationError(f"bad table name {name!r}: write table or schema.table")
    schema, _, table = name.rpartition(".")
    return schema or None, table


async def _statement(
    resolved: ResolvedSource,
    table_or_statement: TableOrStatement,
    where: str | None,
    columns: Sequence[str] | None,
    fmt: Format,
) -> tuple[
    Select[Any] | TextualSelect | TextClause, list[ArrowColumn] | None, list[PlanColumn] | None
]:
    """The statement to export, the Arrow columns its types give (None: untyped) and what its
    values need to be exact (:mod:`rowstream._values`; None: nothing known)."""
    arrow: list[ArrowColumn] | None
    kinds: list[PlanColumn] | None = None
    if where is not None and isinstance(table_or_statement, (str, sa.Table)):
        if not where.strip():
            raise ConfigurationError("--where is empty: give a condition, or leave it out")
        # Before the catalog is read: one boolean expression, nothing more. The statement it
        # ends up in is checked as a whole before it is sent (by _sql() or stream()).
        check_where(where, resolved.dialect)
    if isinstance(table_or_statement, (Select, TextualSelect, TextClause)):
        if where is not None or columns is not None:
            raise ConfigurationError(
                "where= and columns= narrow a table: with a statement, put them in it"
            )
        arrow = None
        if isinstance(table_or_statement, Select):
            arrow = _arrow_columns(table_or_statement.selected_columns, resolved.dialect, fmt)
        return table_or_statement, arrow, None
    if isinstance(table_or_statement, str):
        schema, name = _split_name(table_or_statement)
        if resolved.dialect == "postgresql":
            # Types come from the server later; here only names, quoted by SQLAlchemy.
            table: sa.TableClause = sa.table(
                name, *(sa.column(c) for c in columns or ()), schema=schema
            )
            selected: list[Any] = list(table.c) if columns else [sa.literal_column("*")]
            arrow = None
        else:
            table, notes = await _reflect(resolved, schema, name)
            picked = _pick(table, columns, table_or_statement)
            arrow = _arrow_columns(picked, resolved.dialect, fmt)
            kinds = [PlanColumn(c.name, column_kind(c, resolved.dialect, notes)) for c in picked]
            selected = [_raw(c, k.kind, resolved) for c, k in zip(picked, kinds, strict=True)]
    elif isinstance(table_or_statement, sa.Table):
        table = table_or_statement
        selected = _pick(table, columns, table.fullname)
        arrow = _arrow_columns(selected, resolved.dialect, fmt)
        if resolved.dialect != "postgresql":
            # The same reading as a reflected table; SQLite's declared types are the DDL the
            # Table's types compile to.
            notes = declared_types(selected, resolved) if resolved.dialect == "sqlite" else {}
            kinds = [PlanColumn(c.name, column_kind(c, resolved.dialect, notes)) for c in selected]
            selected = [_raw(c, k.kind, resolved) for c, k in zip(selected, kinds, strict=True)]
    else:
        raise ConfigurationError(
            f"cannot export a {type(table_or_statement).__name__}: pass a table name, a "
            "Table, a select() or a text()"
        )
    statement = sa.select(*selected).select_from(table)
    if where is not None:
        statement = statement.where(sa.text(f"({where})"))
    return statement, arrow, kinds


def _arrow_columns(columns: Any, dialect: str, fmt: Format) -> list[ArrowColumn] | None:
    """Arrow columns from SQLAlchemy types, for Parquet only (pyarrow loads only then)."""
    if fmt != "parquet":
        return None
    from ._arrow import sqla_column

    return [sqla_column(c.name, c.type, dialect) for c in columns]


def _pick(table: sa.TableClause, columns: Sequence[str] | None, label: str) -> list[Any]:
    if not columns:
        return list(table.c)
    missing = [c for c in columns if c not in table.c]
    if missing:
        raise QueryError(
            f"unknown column {missing[0]!r} in table {label!r}: it has "
            + ", ".join(c.name for c in table.c)
        )
    return [table.c[c] for c in columns]


def _raw(column: Any, kind: Kind | None, resolved: ResolvedSource) -> Any:
    """The column as the driver returns it, without SQLAlchemy's result processing.

    The processors are lossy for export: MySQL's DOUBLE comes back as a Decimal padded to 10
    places, TIME (a duration of up to 838 hours) as a time of day modulo 24 hours, SQLite's
    NUMERIC as a padded Decimal, SQLite's dates parsed (and refused unless ISO text, converted
    to UTC when they have an offset). The column keeps its reflected type for Parquet (see
    :func:`_arrow_columns`). MariaDB's FLOAT is read as a DOUBLE: the text protocol rounds a
    FLOAT to 6 digits, the DOUBLE of a float32 is exact.
    """
    if kind == "float":
        quoted = resolved.engine.dialect.identifier_preparer.quote(column.name)
        # Not sa.cast(): SQLAlchemy skips (with a warning) a CAST to DOUBLE on MySQL.
        return sa.literal_column(f"CAST({quoted} AS DOUBLE)").label(column.name)
    return sa.type_coerce(column, sa.types.NullType()).label(column.name)


async def _reflect(
    resolved: ResolvedSource, schema: str | None, name: str
) -> tuple[sa.Table, dict[str, str]]:
    """The table, and per column what reflection does not say: SQLite's declared type (for
    its affinity), or ``"json"`` for MariaDB's JSON (a LONGTEXT with a json_valid() check)."""
    engine = resolved.engine
    try:
        conn = await engine.connect()
    except Exception as exc:
        raise_translated(exc, url=engine.url, connecting=True)
    try:
        table = await conn.run_sync(
            lambda sync: sa.Table(name, sa.MetaData(), schema=schema, autoload_with=sync)
        )
        return table, await column_notes(conn, resolved.dialect, schema, name)
    except NoSuchTableError:
        label = f"{schema}.{name}" if schema else name
        raise QueryError(
            f"unknown table {label!r} in {mask_url(engine.url)}: check the name (schema.table)"
        ) from None
    except Exception as exc:
        raise_translated(exc, url=engine.url)
    finally:
        await shielded(conn.close())


def _sql(engine: AsyncEngine, statement: Select[Any] | TextualSelect | TextClause) -> str:
    """The statement as PostgreSQL's COPY, probe and ADBC paths send it, checked to be a single
    read, without a trailing ';' or comment (it is wrapped in ``(...) AS t``)."""
    try:
        compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    except Exception as exc:
        raise ConfigurationError(
            f"cannot render this statement for export: {str(exc).splitlines()[0]}; "
            "use literal values instead of bound parameters"
        ) from None
    return check_read_only(str(compiled), engine.dialect.name)


# ---------------------------------------------------------------- PostgreSQL COPY


async def _pg_connection(engine: AsyncEngine) -> AsyncConnection:
    try:
        return await engine.connect()
    except Exception as exc:
        raise_translated(exc, url=engine.url, connecting=True)


def _asyncpg_engine(resolved: ResolvedSource) -> AsyncEngine:
    """The engine PostgreSQL's COPY and catalog probe go through: asyncpg's.

    They use asyncpg's own API (``copy_from_query``, prepared statement attributes); a source
    on another driver (``postgresql+psycopg://``) gets a private asyncpg engine on the same
    URL for them, while the rows of the stream strategy still come through the source.
    """
    engine = resolved.engine
    if resolved.dialect != "postgresql" or engine.dialect.driver == "asyncpg":
        return engine
    return create_engine(engine.url.set(drivername="postgresql+asyncpg"), pool_size=1)


async def _export_copy(
    engine: AsyncEngine, statement: Select[Any] | TextualSelect | TextClause, job: _Job
) -> None:
    sql = _sql(engine, statement)
    async with _pg_session(engine, job.read_timeout) as (apg, progress):
        columns, estimate = await probe(apg, sql)
        job.progress.set_estimate(estimate)
        if job.format != "parquet":
            job.strategy = "copy"
            await _copy_text(apg, sql, columns, job, progress)
            return
    # Parquet: the rows come over a connection of ADBC's (binary COPY decoded in C++); the
    # probe's connection is back in the pool by then, so a pool of one cannot deadlock.
    from ._pgtypes import PgRead
    from ._sinks._parquet import ParquetSink

    read = PgRead(columns, infinity=job.infinity, nan=job.nan)
    sink = ParquetSink(job.out, read.columns, compression=job.compression or "zstd")
    sink.begin([c.name for c in columns])
    try:
        await _copy_parquet(engine, sql, read, sink, job)
    except BaseException:
        sink.abort()
        raise
    sink.finish()


@contextlib.asynccontextmanager
async def _pg_session(
    engine: AsyncEngine, read_timeout: float | None
) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
    """An asyncpg connection in rowstream's COPY transaction (see :func:`pg_transaction`),
    and the function to call whenever data arrives on it.

    Every wait on the connection (the probe, the COPY, a cursor's fetch) is bounded: with no
    data for ``read_timeout`` seconds, and the server not busy with the query, the network
    counts as silent and the connection is abandoned (a ConnectionLostError; see
    :mod:`rowstream._watchdog`). A COPY is one long wait, so its data calls ``progress()``.
    """
    conn: AsyncConnection | None = None
    dog = Watchdog(engine, read_timeout, where=mask_url(engine.url), resumable=False)
    try:
        async with dog.watch(lambda: conn) as watch:
            conn = await _pg_connection(engine)
            async with pg_transaction(conn) as apg:
                yield apg, watch.kick
    except RowstreamError:
        raise
    except Exception as exc:
        raise_translated(exc, url=engine.url, resumable=False)
    finally:
        if conn is not None:
            await shielded(_close(conn))


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


def _progress_writer(job: _Job, arrived: Callable[[], None]) -> Write:
    out, progress = job.out, job.progress

    async def write(chunk: bytes) -> None:
        arrived()
        out.write(chunk)
        if progress.enabled:  # counting lines costs a pass over the data
            progress.advance(rows=chunk.count(b"\n"), nbytes=job.counter.bytes - progress.bytes)

    return write


async def _copy_text(
    apg: Any, sql: str, columns: list[PgColumn], job: _Job, arrived: Callable[[], None]
) -> None:
    write = _progress_writer(job, arrived)
    if job.format == "csv":
        job.rows = await copy_csv(apg, sql, write)
    else:
        job.rows = await copy_jsonl(apg, sql, columns, write)


async def _copy_parquet(
    engine: AsyncEngine, sql: str, read: PgRead, sink: ParquetSink, job: _Job
) -> None:
    from ._pgarrow import CannotConnect, copy_to_parquet

    progress = job.progress

    def advance(rows: int) -> None:
        progress.advance(rows=rows, nbytes=job.counter.bytes - progress.bytes)

    try:
        watchdog = Watchdog(engine, job.read_timeout, where=mask_url(engine.url), resumable=False)
        job.rows = await copy_to_parquet(engine.url, sql, read, sink, advance, watchdog)
        job.strategy = "copy"
        return
    except CannotConnect as exc:
        # Connect arguments a URL cannot carry (an SSL context, a custom creator): read
        # through the engine's own connections instead, slower but the same file.
        logger.info("ADBC cannot connect (%s); reading Parquet through a cursor", exc)
    job.strategy = "cursor"
    query = read.query(sql, adbc=False)
    size = job.batch_rows or 10_000
    async with _pg_session(engine, job.read_timeout) as (apg, arrived):
        # No probe ran on this connection: make the transaction read-only here.
        await apg.execute("SET TRANSACTION READ ONLY")
        cursor = await apg.cursor(query)
        while rows := await cursor.fetch(size):
            arrived()
            sink.write_batch(read.rows_batch(rows))
            job.rows += len(rows)
            advance(len(rows))


# ---------------------------------------------------------------- generic stream


async def _pg_columns(
    engine: AsyncEngine, sql: str, read_timeout: float | None
) -> tuple[list[PgColumn], int | None]:
    async with _pg_session(engine, read_timeout) as (apg, _arrived):
        return await probe(apg, sql)


def _pg_text(column: PgColumn, fmt: Format) -> str:
    """The server's own text of a column, as COPY (CSV) or to_jsonb() (JSONL) renders it."""
    ref = f"t.{quote_ident(column.name)}"
    if column.typname == "timestamptz":
        # Whatever the session's time zone: UTC, as the COPY path writes it. The offset goes
        # before a BC suffix, and infinity has none.
        local = f"({ref} AT TIME ZONE 'UTC')"
        inf = f"to_jsonb({ref})::text" if fmt == "jsonl" else f"{ref}::text"
        if fmt == "jsonl":
            text = f"rtrim(to_jsonb({local})::text, '\"')"
            utc = f"{text} || '+00:00\"'"
            bc = f"replace({text}, ' BC', '+00:00 BC') || '\"'"
        else:
            utc = f"{local}::text || '+00'"
            bc = f"replace({local}::text, ' BC', '+00 BC')"
        return (
            f"CASE WHEN NOT isfinite({ref}) THEN {inf} "
            f"WHEN {ref} < TIMESTAMPTZ '0001-01-01 00:00:00+00' THEN {bc} ELSE {utc} END"
        )
    if fmt == "jsonl":
        # to_jsonb() itself, not the COPY path's cheaper equivalents (_pgcopy.json_value):
        # the tests hold the two paths' bytes against each other.
        if column.typname == "json":
            return json_text(ref)
        return json_array(ref) if column.typname.startswith("_") else f"to_jsonb({ref})::text"
    if column.typname == "bool":
        return f"CASE WHEN {ref} THEN 't' WHEN NOT {ref} THEN 'f' END"
    if column.typname in ("bpchar", "inet"):
        # Their casts to text differ from their output (COPY's): char(n) loses its padding,
        # inet gains a /32 or /128. format() uses the output function.
        return f"CASE WHEN {ref} IS NOT NULL THEN format('%s', {ref}) END"
    return f"{ref}::text"


class _RawJsonl(JsonlSink):
    """JSONL from values the server already rendered as JSON text."""

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) == 1:
            self._write_alone(rows[0])
            return
        keys = self._keys
        lines = [
            "{"
            + ", ".join(k + ("null" if v is None else v) for k, v in zip(keys, row, strict=True))
            + "}\n"
            for row in rows
        ]
        self._out.write("".join(lines).encode())

    def _write_value(self, value: Any) -> None:
        self._out.write(b"null" if value is None else value.encode())


class _CheckedParquet:
    """Rows of a :class:`PgRead` query, checked and cast, into a Parquet sink."""

    def __init__(self, sink: ParquetSink, read: PgRead) -> None:
        self._sink = sink
        self._read = read

    def begin(self, columns: Sequence[str]) -> None:
        self._sink.begin(columns)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._sink.write_batch(self._read.rows_batch(rows))

    def finish(self) -> None:
        self._sink.finish()

    def abort(self) -> None:
        self._sink.abort()


async def _export_stream(
    resolved: ResolvedSource,
    pg_engine: AsyncEngine,
    statement: Select[Any] | TextualSelect | TextClause,
    typed: list[ArrowColumn] | None,
    job: _Job,
) -> None:
    engine = resolved.engine
    job.strategy = "stream"
    stream_source: Any = resolved.borrowed or engine
    sink: Sink
    arrow: list[ArrowColumn] = []
    if resolved.dialect == "postgresql":
        sql = _sql(engine, statement)
        pg, estimate = await _pg_columns(pg_engine, sql, job.read_timeout)
        job.progress.set_estimate(estimate)
        names = [c.name for c in pg]
        if job.format == "parquet":
            from ._pgtypes import PgRead
            from ._sinks._parquet import ParquetSink

            read = PgRead(pg, infinity=job.infinity, nan=job.nan)
            query = read.query(sql, adbc=False)
            sink = _CheckedParquet(
                ParquetSink(job.out, read.columns, compression=job.compression or "zstd"), read
            )
        else:
            query = f"SELECT {', '.join(_pg_text(c, job.format) for c in pg)} FROM ({sql}) AS t"
            sink = CsvSink(job.out) if job.format == "csv" else _RawJsonl(job.out)
        statement = sa.text(query)
    else:
        arrow = typed or []
        names = [c.name for c in arrow]
        job.progress.set_estimate(await _estimate(resolved, statement))
        # Parquet: made once the columns and their checks are known (_parquet_sink).
        sink = CsvSink(job.out) if job.format == "csv" else JsonlSink(job.out)
    sink = await _stream_into(stream_source, statement, names, arrow, sink, resolved, job)
    sink.finish()


async def _stream_into(
    stream_source: Any,
    statement: Select[Any] | TextualSelect | TextClause,
    names: list[str],
    arrow: list[ArrowColumn],
    sink: Sink,
    resolved: ResolvedSource,
    job: _Job,
) -> Sink:
    """Stream the rows into the sink; on any error the sink is aborted (no half-written footer)."""
    try:
        async with stream(
            stream_source,
            statement,
            batch_rows=job.batch_rows,
            batch_bytes=job.batch_bytes,
            read_timeout=job.read_timeout,
        ) as rows:
            keys = list(rows.keys())
            if not names or len(names) != len(keys):
                names = keys
            plan = _plan(names, resolved.dialect, job)
            fix = None
            if job.format == "parquet" and resolved.dialect != "postgresql":
                sink = _parquet_sink(job, arrow, names, plan)
            elif plan is not None and plan.active:
                fix = plan.apply
            sink.begin(names)
            async for batch in rows.batches():
                # Only columns that need it are touched (see rowstream._values).
                sink.write_rows(fix(batch) if fix is not None else batch)
                job.rows += len(batch)
                job.progress.advance(rows=len(batch), nbytes=job.counter.bytes - job.progress.bytes)
                del batch  # not alive while the next one is read (it may be one 50 MB row)
    except BaseException:
        abort = getattr(sink, "abort", None)
        if abort is not None:
            abort()
        raise
    return sink


def _plan(names: list[str], dialect: str, job: _Job) -> Plan | None:
    unknown = sorted(job.text_columns.difference(names))
    if unknown:
        raise ConfigurationError(
            f"unknown column {unknown[0]!r} in text_columns (--text-columns): the export has "
            + ", ".join(names)
        )
    kinds = job.kinds
    if kinds is None and dialect == "sqlite":
        # A query's columns have no declared type: in Parquet each keeps the storage class
        # of its first values.
        kinds = [PlanColumn(n, "blob") for n in names]
    if dialect == "postgresql" or kinds is None:
        return None
    return Plan(kinds, job.format, dialect, job.zero_dates, job.text_columns)


def _parquet_sink(
    job: _Job, arrow: list[ArrowColumn], names: list[str], plan: Plan | None
) -> ParquetSink:
    """Parquet for MariaDB and SQLite: the columns' types (untyped ones inferred from the first
    rows), each with the check that keeps its values exact (run on the column the Arrow
    conversion extracts anyway, so columns without one cost nothing more)."""
    import dataclasses

    import pyarrow as pa

    from ._arrow import ArrowColumn
    from ._sinks._parquet import ParquetSink

    if len(arrow) != len(names):
        text = pa.string()
        arrow = [ArrowColumn(n, text if n in job.text_columns else None) for n in names]
    if plan is not None:
        checks = plan.checks()
        arrow = [dataclasses.replace(c, check=checks.get(i)) for i, c in enumerate(arrow)]
    return ParquetSink(job.out, arrow, compression=job.compression or "zstd")


async def _estimate(
    resolved: ResolvedSource, statement: Select[Any] | TextualSelect | TextClause
) -> int | None:
    """MySQL's TABLE_ROWS for a whole table (an estimate for InnoDB); None otherwise."""
    if resolved.dialect not in ("mysql", "mariadb") or not isinstance(statement, Select):
        return None
    if statement.whereclause is not None:
        return None
    froms = statement.get_final_froms()
    if len(froms) != 1 or not isinstance(froms[0], sa.TableClause):
        return None
    table = froms[0]
    query = sa.text(
        "SELECT TABLE_ROWS FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
    )
    with contextlib.suppress(Exception):
        async with resolved.engine.connect() as conn:
            value = await conn.scalar(query, {"schema": table.schema, "name": table.name})
            return int(value) if value is not None else None
    return None
