"""The one adapter between :mod:`rowstream.web` and the export's readers and sinks.

A web download must hold the same bytes as ``rowstream export`` of the same rows, so it is
built from the export's own pieces (the statement, PostgreSQL's server-side rendering, the
MariaDB/SQLite value plans, the sinks) and differs in how the rows are read: by keyset pages
whenever the statement has a key, so that a slow client never holds a transaction open (each
page is its own short transaction, and nothing is open while the bytes wait on the network),
and the output is handed out page by page, so memory is bounded whatever the client's speed.

- PostgreSQL CSV and JSONL of a table with an integer key: :class:`CopyPages`, each page one
  ``COPY`` of the rows between two keys, rendered by the export's COPY functions.
- Everything else: :func:`rowstream.stream` (``strategy="keyset"`` when a key exists, else as
  the export reads) into the export's sinks, through a buffer emptied after each batch.

Everything this module takes from :mod:`rowstream._export` is imported here and nowhere else
in the web code: when the export is split into readers and sinks, only these imports move.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import Select

from ._coltypes import query_kinds, typed_arrow
from ._exceptions import ConfigurationError, StreamKeyError
from ._export import (
    TableOrStatement,
    _asyncpg_engine,
    _check_sqlite_file,
    _CheckedParquet,
    _Counter,
    _Job,
    _parquet_sink,
    _pg_columns,
    _pg_session,
    _pg_text,
    _plan,
    _RawJsonl,
    _sql,
    _statement,
)
from ._keys import _reflect_table
from ._pgcopy import PgColumn, copy_csv, copy_jsonl, quote_ident, quote_literal
from ._progress import ExportProgress
from ._sinks import CsvSink, JsonlSink, Sink, check_compression
from ._sinks._options import FORMATS, Format, check_edge_values
from ._source import ResolvedSource, Source, resolve_source
from ._strategy import shielded
from ._stream import RowStream, stream
from ._values import ZeroDates, check_zero_dates

if TYPE_CHECKING:
    from ._arrow import ArrowColumn

__all__ = ["CopyPages", "Rendered", "open_rendered"]

# How long closing waits for a read ahead to stop (it is cancelled; this only bounds the wait).
CLOSE_TIMEOUT = 5.0


class _Buffer:
    """A write-only binary file whose contents are taken out after each batch."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.closed = False
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._parts.append(bytes(data))
        self._size += len(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        # pyarrow and gzip close their file at the end; the buffer's last bytes are still due.
        pass


class Rendered:
    """An open stream of rows rendered as ``rowstream export`` renders them.

    ``chunks()`` yields the file's bytes a batch at a time; ``aclose()`` closes the stream
    (cursor, transaction, connection) and is safe to call on every path, twice.
    """

    def __init__(
        self,
        resolved: ResolvedSource,
        rows: RowStream,
        sink: Sink,
        buffer: _Buffer,
        zipped: gzip.GzipFile | None,
        width: int | None,
        fix: Any,
        skip: int = 0,
    ) -> None:
        self._resolved = resolved
        self._rows = rows
        self._sink = sink
        self._buffer = buffer
        self._zipped = zipped
        self._width = width
        self._skip = skip
        self._fix = fix
        self.strategy = rows.stats.strategy
        self.rows = 0
        self._pending: asyncio.Future[Any] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes: the header first, then one piece per batch, then the end.

        The next batch is read while this one is rendered and sent (at most one ahead, so
        memory stays two batches): the database's time and the client's overlap. With keyset
        pages the read batch holds no transaction while it waits.
        """
        buffer, sink, width, fix = self._buffer, self._sink, self._width, self._fix
        head = buffer.take()
        if head:
            yield head
        batches = self._rows.batches()
        self._pending = asyncio.ensure_future(anext(batches, None))
        while True:
            batch = await self._pending
            if batch is None:
                self._pending = None
                break
            self._pending = asyncio.ensure_future(anext(batches, None))
            self.rows += len(batch)
            # Keyset pages on PostgreSQL carry the raw key after the rendered columns.
            rows: Sequence[Sequence[Any]] = batch
            if width is not None:
                rows = [row[:width] for row in batch]
            elif self._skip:
                rows = [row[self._skip :] for row in batch]
            sink.write_rows(fix(rows) if fix is not None else rows)
            del batch, rows
            data = buffer.take()
            if data:
                yield data
        sink.finish()
        if self._zipped is not None:
            self._zipped.close()
        tail = buffer.take()
        if tail:
            yield tail

    async def aclose(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            # A read ahead in flight: stop it before the stream closes under it.
            pending.cancel()
            await asyncio.wait([pending], timeout=CLOSE_TIMEOUT)
        elif pending is not None and not pending.cancelled():
            pending.exception()  # retrieved: an error there is moot once the client left
        abort = getattr(self._sink, "abort", None)
        if abort is not None:
            abort()
        await shielded(self._rows.aclose())
        await shielded(self._resolved.aclose())


async def open_rendered(
    source: Source,
    table_or_statement: TableOrStatement,
    fmt: Format,
    *,
    gzip_level: int | None = None,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int | None = None,
    batch_bytes: int | None = None,
    compression: str = "zstd",
    zero_dates: ZeroDates = "refuse",
    text_columns: Sequence[str] | None = None,
    read_timeout: float | None = None,
    infinity: str = "error",
    nan: str = "error",
) -> Rendered | CopyPages:
    """Open the stream and write the file's header into its buffer; raise before any byte.

    ``gzip_level`` gzips CSV and JSONL (None: plain). Nothing is sent by this function, so
    every error here (bad statement, unreachable database, unusable option) comes before the
    HTTP response starts.
    """
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_edge_values(infinity, nan)
    if fmt == "parquet":
        check_compression(compression)
    _check_sqlite_file(source)
    zero_dates = check_zero_dates(zero_dates)
    as_text = frozenset(text_columns or ())
    resolved = resolve_source(source)
    pg_engine = _asyncpg_engine(resolved)
    buffer = _Buffer()
    out: BinaryIO = buffer  # type: ignore[assignment]
    zipped: gzip.GzipFile | None = None
    if gzip_level is not None and fmt != "parquet":
        # mtime=0, as the export writes .gz: the same rows give the same bytes.
        zipped = gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=gzip_level)
        out = zipped  # type: ignore[assignment]
    job = _Job(
        fmt,
        compression if fmt == "parquet" else None,
        batch_rows,
        batch_bytes,
        ExportProgress(enabled=False),
        out,
        _Counter(out),
        infinity,
        nan,
    )
    job.zero_dates, job.text_columns, job.read_timeout = zero_dates, as_text, read_timeout
    try:
        if as_text and resolved.dialect == "postgresql":
            raise ConfigurationError(
                "text_columns is for MariaDB and SQLite: on PostgreSQL, cast the column to "
                "text in the query (col::text)"
            )
        if resolved.dialect != "postgresql":
            plain = _as_table(resolved, table_or_statement)
            if plain is not None:
                table_or_statement, where, columns = plain
        statement, arrow, kinds = await _statement(
            resolved, table_or_statement, where, columns, fmt
        )
        job.kinds = kinds
        if resolved.dialect == "postgresql":
            opened = await _open_pg(resolved, pg_engine, statement, job, buffer, zipped)
            if isinstance(opened, CopyPages):
                pg_engine = resolved.engine  # the pages own it now (see CopyPages.aclose)
            return opened
        if kinds is None and not isinstance(statement, Select):
            statement, kinds = await query_kinds(resolved, statement)
            job.kinds = kinds
        arrow = typed_arrow(arrow, kinds, resolved.dialect, fmt, zero_dates, as_text)
        sink: Sink = CsvSink(out) if fmt == "csv" else JsonlSink(out)
        paged = await _pageable(resolved, statement)
        names = [c.name for c in arrow or []] or [c.name for c in kinds or []]
        if isinstance(paged, Select) and not names and isinstance(statement, Select):
            names = list(statement.selected_columns.keys())
        return await _open(
            resolved, statement, paged, names, arrow or [], sink, job, buffer, zipped
        )
    except BaseException:
        await shielded(resolved.aclose())
        raise
    finally:
        if pg_engine is not resolved.engine:
            await shielded(pg_engine.dispose())


def _as_table(resolved: ResolvedSource, statement: Any) -> tuple[str, str | None, list[str]] | None:
    """A select() of one table's own columns (an ORM entity, say), filtered at most, as the
    table name, the condition and the columns ``rowstream export --table --where --columns``
    takes: MariaDB and SQLite values are then read raw and checked as the export reads a
    table (SQLAlchemy's result processing is lossy for export; see ``_export._raw``)."""
    if not isinstance(statement, Select):
        return None
    froms = statement.get_final_froms()
    table = froms[0] if len(froms) == 1 else None
    if (
        not isinstance(table, sa.Table)
        or statement._order_by_clauses
        or statement._group_by_clauses
        or statement._distinct
        or statement._limit_clause is not None
        or statement._offset_clause is not None
        or statement._having_criteria
    ):
        return None
    names = []
    for column in statement.selected_columns:
        if getattr(column, "table", None) is not table or column.key != column.name:
            return None
        names.append(str(column.name))
    where = None
    if statement.whereclause is not None:
        dialect = resolved.engine.dialect
        compiled = statement.whereclause.compile(
            dialect=dialect, compile_kwargs={"literal_binds": True}
        )
        where = str(compiled)
    assert table is not None
    name = f"{table.schema}.{table.name}" if table.schema else table.name
    return name, where, names


async def _open_pg(
    resolved: ResolvedSource,
    pg_engine: Any,
    statement: Any,
    job: _Job,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
) -> Rendered | CopyPages:
    """PostgreSQL renders each value itself, as in the export's stream path."""
    engine = resolved.engine
    sql = _sql(engine, statement)
    pg, _estimate = await _pg_columns(pg_engine, sql, job.read_timeout)
    names = [c.name for c in pg]
    sink: Sink
    if job.format == "parquet":
        from ._pgtypes import PgRead
        from ._sinks._parquet import ParquetSink

        read = PgRead(pg, infinity=job.infinity, nan=job.nan)
        query = read.query(sql, adbc=False)
        text = sa.text(query)
        sink = _CheckedParquet(
            ParquetSink(job.out, read.columns, compression=job.compression or "zstd"), read
        )
        paged, skip = None, 0
        suffix = f" FROM ({sql}) AS t"
        if query.startswith("SELECT ") and query.endswith(suffix):
            listed = query.removeprefix("SELECT ").removesuffix(suffix)
            found = await _pg_pageable(resolved, statement, pg, job.format, listed)
            if found is not None:
                paged, skip = found
        return await _open(resolved, text, paged, names, [], sink, job, buffer, zipped, skip=skip)
    pages = await _copy_pages(resolved, pg_engine, statement, sql, pg, job, buffer, zipped)
    if pages is not None:
        return pages
    sink = CsvSink(job.out) if job.format == "csv" else _RawJsonl(job.out)
    text = sa.text(f"SELECT {', '.join(_pg_text(c, job.format) for c in pg)} FROM ({sql}) AS t")
    paged = await _pg_pageable(resolved, statement, pg, job.format)
    return await _open(resolved, text, paged, names, [], sink, job, buffer, zipped)


async def _key_of(resolved: ResolvedSource, statement: Any) -> list[Any] | None:
    """The primary key columns of the one table a statement reads plainly (no join, no
    grouping), or None: then there is no key to page by and the stream reads as the export's."""
    if not isinstance(statement, Select) or statement._group_by_clauses or statement._distinct:
        return None
    froms = statement.get_final_froms()
    if len(froms) != 1 or not isinstance(froms[0], sa.TableClause):
        return None
    table = froms[0]
    catalog = await _reflect_table(resolved, table)
    if catalog is None or not catalog.primary_key:
        return None
    if isinstance(table, sa.Table):
        return [table.c[n] for n in catalog.primary_key]
    keyed = sa.table(table.name, *(sa.column(n) for n in catalog.primary_key), schema=table.schema)
    return [keyed.c[n] for n in catalog.primary_key]


async def _pageable(resolved: ResolvedSource, statement: Any) -> Select[Any] | None:
    """MariaDB/SQLite: the statement with its raw key after its columns (the export reads each
    column without SQLAlchemy's processing, so the key is not among them as such)."""
    key = await _key_of(resolved, statement)
    if key is None:
        return None
    paged: Select[Any] = statement.add_columns(*key)
    return paged


async def _pg_pageable(
    resolved: ResolvedSource,
    statement: Any,
    pg: list[PgColumn],
    fmt: Format,
    listed: str | None = None,
) -> Any:
    """The rendered columns as a select() of the table itself, with its key after them, so
    that it can be read by keyset pages; None when the statement is not one table's plain
    columns (an expression, a label: then the export's derived table is read)."""
    if not isinstance(statement, Select):
        return None
    table = next(iter(statement.get_final_froms()), None)
    for column in statement.selected_columns:
        star = isinstance(column, ColumnClause) and column.is_literal and column.name == "*"
        own = isinstance(column, ColumnClause) and getattr(column, "table", None) is table
        if not (star or (own and column.key == column.name)):
            return None
    key = await _key_of(resolved, statement)
    if key is None or table is None:
        return None
    qualified = resolved.engine.dialect.identifier_preparer.format_table(table)
    if listed is not None:
        # Parquet: PgRead's select list (its casts, then its guards) reads the derived table
        # "t"; here the table's own columns, with the key first: the list is one literal to
        # SQLAlchemy, so only the columns before it have known positions.
        for col in pg:
            listed = listed.replace(
                f"t.{quote_ident(col.name)}", f"{qualified}.{quote_ident(col.name)}"
            )
        parquet = sa.select(*key, sa.literal_column(listed)).select_from(key[0].table)
        if statement.whereclause is not None:
            parquet = parquet.where(statement.whereclause)
        return parquet, len(key)
    exprs: list[Any] = []
    for i, col in enumerate(pg):
        # _pg_text reads the column of the derived table "t"; here it is the table's own.
        ref = f"t.{quote_ident(col.name)}"
        own_ref = f"{qualified}.{quote_ident(col.name)}"
        exprs.append(sa.literal_column(_pg_text(col, fmt).replace(ref, own_ref)).label(f"c{i}"))
    paged = sa.select(*exprs, *key).select_from(key[0].table)
    if statement.whereclause is not None:
        paged = paged.where(statement.whereclause)
    return paged


async def _open(
    resolved: ResolvedSource,
    statement: Any,
    paged: Select[Any] | None,
    names: list[str],
    arrow: list[ArrowColumn],
    sink: Sink,
    job: _Job,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
    skip: int = 0,
) -> Rendered:
    """Open the stream by keyset pages when a key allows it, else as the export reads.

    ``paged`` carries its key after the rendered columns, or (``skip``) before them."""
    source: Any = resolved.borrowed or resolved.engine
    width: int | None = None
    rows: RowStream | None = None
    keyed = paged if paged is not None else statement
    if isinstance(keyed, Select):
        candidate = _stream(source, keyed, job, "keyset")
        try:
            await candidate.__aenter__()
            rows = candidate
            width = len(names) if paged is not None and not skip else None
        except StreamKeyError:
            rows = None  # no usable key: read as the export does
    if rows is None:
        skip = 0
        rows = _stream(source, statement, job, "auto")
        await rows.__aenter__()
    try:
        keys = list(rows.keys())
        if width is not None:
            keys = keys[:width]
        if skip:
            keys = names  # the rendered columns are one literal select list there
        if not names or len(names) != len(keys):
            names = keys
        plan = _plan(names, resolved.dialect, job)
        fix = None
        if job.format == "parquet" and resolved.dialect != "postgresql":
            sink = _parquet_sink(job, arrow, names, plan)
        elif plan is not None and plan.active:
            fix = plan.apply
        sink.begin(names)
    except BaseException:
        await shielded(rows.aclose())
        raise
    return Rendered(resolved, rows, sink, buffer, zipped, width, fix, skip)


def _stream(source: Any, statement: Any, job: _Job, strategy: Any) -> RowStream:
    return stream(
        source,
        statement,
        batch_rows=job.batch_rows,
        batch_bytes=job.batch_bytes,
        read_timeout=job.read_timeout,
        strategy=strategy,
    )


# Rows per COPY page: the first pages are small (the first bytes go out at once), later ones
# hold about PAGE_BYTES of output, which is buffered whole: the page's transaction ends before
# its bytes wait on the client.
FIRST_PAGE_ROWS = 1_000
MAX_PAGE_ROWS = 200_000
PAGE_BYTES = 4 * 1024 * 1024


class CopyPages:
    """PostgreSQL CSV and JSON Lines by keyset pages, each page one ``COPY`` of the rows
    between two keys in a short read-only transaction of its own.

    The server renders every value (the bytes of ``rowstream export``'s COPY path, by the same
    functions); Python only moves bytes, so a download keeps up with the export to a file,
    and no transaction waits on the network.
    """

    strategy = "keyset"

    def __init__(
        self,
        resolved: ResolvedSource,
        engine: Any,
        sql: str,
        key: str,
        pg: list[PgColumn],
        job: _Job,
        buffer: _Buffer,
        zipped: gzip.GzipFile | None,
    ) -> None:
        self._resolved = resolved
        self._engine = engine
        self._sql = sql
        self._key = key
        self._pg = pg
        self._job = job
        self._buffer = buffer
        self._zipped = zipped
        self._pending: asyncio.Future[Any] | None = None
        self.rows = 0

    async def _page(self, last: int | None, size: int) -> tuple[bytes, int, int | None]:
        """The rendered rows after ``last`` (at most ``size``), their count, and the last key
        (None at the end)."""
        key = f"t.{quote_ident(self._key)}"
        after = f" WHERE {key} > {quote_literal(str(last))}" if last is not None else ""
        parts: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            arrived()
            parts.append(bytes(chunk))

        async with _pg_session(self._engine, self._job.read_timeout) as (apg, arrived):
            await apg.execute("SET TRANSACTION READ ONLY")
            bound = await apg.fetchval(
                f"SELECT {key} FROM ({self._sql}) AS t{after} ORDER BY {key} "
                f"OFFSET {size - 1} LIMIT 1"
            )
            upper = f" {'AND' if after else 'WHERE'} {key} <= {bound}" if bound is not None else ""
            page = f"SELECT t.* FROM ({self._sql}) AS t{after}{upper} ORDER BY {key}"
            if self._job.format == "csv":
                count = await copy_csv(apg, page, collect)
            else:
                count = await copy_jsonl(apg, page, self._pg, collect)
        data = b"".join(parts)
        if self._job.format == "csv" and last is not None:
            data = data[data.index(b"\n") + 1 :]  # COPY's header: only the first page's
        return data, count, None if bound is None else int(bound)

    async def chunks(self) -> AsyncIterator[bytes]:
        out, buffer = self._job.out, self._buffer
        size = FIRST_PAGE_ROWS
        pending = self._pending = asyncio.ensure_future(self._page(None, size))
        while True:
            data, count, last = await pending
            self._pending = None
            if last is not None:
                if count:
                    size = max(
                        FIRST_PAGE_ROWS, min(MAX_PAGE_ROWS, PAGE_BYTES * count // max(1, len(data)))
                    )
                # The next page is read while this one goes out.
                pending = self._pending = asyncio.ensure_future(self._page(last, size))
            self.rows += count
            out.write(data)
            del data
            piece = buffer.take()
            if piece:
                yield piece
            if last is None:
                break
        if self._zipped is not None:
            self._zipped.close()
        tail = buffer.take()
        if tail:
            yield tail

    async def aclose(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait([pending], timeout=CLOSE_TIMEOUT)
        elif pending is not None and not pending.cancelled():
            pending.exception()
        if self._engine is not self._resolved.engine:
            await shielded(self._engine.dispose())
        await shielded(self._resolved.aclose())


async def _copy_pages(
    resolved: ResolvedSource,
    pg_engine: Any,
    statement: Any,
    sql: str,
    pg: list[PgColumn],
    job: _Job,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
) -> CopyPages | None:
    """Keyset COPY pages when the statement is one table's plain columns with an integer
    primary key among them (other keys: rows through rowstream.stream)."""
    if resolved.borrowed is not None or not isinstance(statement, Select):
        return None
    if statement._order_by_clauses or statement._limit_clause is not None:
        return None
    if statement._offset_clause is not None:
        return None
    key = await _key_of(resolved, statement)
    if key is None or len(key) != 1:
        return None
    name = str(key[0].name)
    types = {c.name: c.typname for c in pg}
    if types.get(name) not in ("int2", "int4", "int8") or len(types) != len(pg):
        return None
    if any("\n" in c.name or "\r" in c.name for c in pg):
        return None  # the header of later pages is cut at its first line break
    return CopyPages(resolved, pg_engine, sql, name, pg, job, buffer, zipped)
