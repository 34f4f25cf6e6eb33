"""The one adapter between :mod:`rowstream.web` and the export's plan, readers and sinks.

A web download must hold the same bytes as ``rowstream export`` of the same rows, so it is
built from the export's own pieces: the plan (:func:`rowstream._export_plan.plan_export`:
the statement, its types and values, PostgreSQL's SQL rendered and checked once, the
method), the readers' renderings (:func:`rowstream._readers._rows.pg_text`,
:class:`rowstream._pgtypes.PgRead`, :func:`rowstream._readers._rows.rows_writer`) and the
encoders (:class:`rowstream._sinks.Sinks`). It differs in how the rows are read: by keyset
pages whenever the statement has a key, so that a slow client never holds a transaction open
(each page is its own short transaction, and nothing is open while the bytes wait on the
network), and the output is handed out page by page, so memory is bounded whatever the
client's speed.

- PostgreSQL CSV and JSONL of a table with an integer key, when the plan's method is COPY:
  :class:`CopyPages`, each page one ``COPY`` of the rows between two keys, rendered by the
  COPY functions the export's COPY reader calls (:mod:`rowstream._pgcopy`).
- Everything else: :func:`rowstream.stream` (``strategy="keyset"`` when a key exists, else as
  the export reads) into the export's sinks, through a buffer emptied after each batch.

The export's readers run a whole read into a sink; a response pulls one batch at a time and
sends it before reading further, so this module drives the stream itself and borrows only the
readers' renderings.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import Select

from ._exceptions import ConfigurationError, StreamKeyError
from ._export_plan import ExportOptions, ExportPlan, plan_export
from ._keyfind import _reflect_table
from ._pgcopy import PgColumn, copy_csv, copy_jsonl, quote_ident, quote_literal
from ._readers._pgsession import asyncpg_engine, pg_columns, pg_session
from ._readers._rows import pg_text, rows_writer
from ._sinks import Sinks, check_compression
from ._sinks._options import FORMATS, Format
from ._source import ResolvedSource, Source, resolve_source
from ._statement import TableOrStatement, check_sqlite_file
from ._strategy import shielded
from ._stream import RowStream, stream
from ._values import ZeroDates
from ._watchdog import dispose

Rows = Sequence[Sequence[Any]]
#: Given the stream's column names, the sink's function each batch of rows goes to.
OpenWrite = Callable[[list[str]], Callable[[Rows], None]]

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
        sinks: Sinks,
        write: Callable[[Rows], None],
        buffer: _Buffer,
        zipped: gzip.GzipFile | None,
        width: int | None,
    ) -> None:
        self._resolved = resolved
        self._rows = rows
        self._sinks = sinks
        self._write = write
        self._buffer = buffer
        self._zipped = zipped
        self._width = width
        self.strategy = rows.stats.strategy
        self.rows = 0
        self._pending: asyncio.Future[Any] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes: the header first, then one piece per batch, then the end.

        The next batch is read while this one is rendered and sent (at most one ahead, so
        memory stays two batches): the database's time and the client's overlap. With keyset
        pages the read batch holds no transaction while it waits.
        """
        buffer, write, width = self._buffer, self._write, self._width
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
            # Keyset pages carry the raw key after the file's columns.
            rows: Rows = batch if width is None else [row[:width] for row in batch]
            write(rows)
            del batch, rows
            data = buffer.take()
            if data:
                yield data
        self._sinks.finish()
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
        self._sinks.abort()  # after finish() there is nothing left to drop
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
    options = ExportOptions(
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        read_timeout=read_timeout,
        infinity=infinity,
        nan=nan,
        zero_dates=zero_dates,
        text_columns=frozenset(text_columns or ()),
    )
    if fmt == "parquet":
        check_compression(compression)
    check_sqlite_file(source)
    resolved = resolve_source(source)
    buffer = _Buffer()
    out: BinaryIO = buffer  # type: ignore[assignment]
    zipped: gzip.GzipFile | None = None
    if gzip_level is not None and fmt != "parquet":
        # mtime=0, as the export writes .gz: the same rows give the same bytes.
        zipped = gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=gzip_level)
        out = zipped  # type: ignore[assignment]
    sinks = Sinks(fmt, out, compression if fmt == "parquet" else None)
    pg_engine: AsyncEngine | None = None
    try:
        if resolved.dialect != "postgresql":
            plain = _as_table(resolved, table_or_statement)
            if plain is not None:
                table_or_statement, where, columns = plain
        # "auto": COPY on PostgreSQL unless the caller lends a connection, as the export.
        plan = await plan_export(
            resolved,
            table_or_statement,
            format=fmt,
            method="auto",
            where=where,
            columns=columns,
            options=options,
        )
        if resolved.dialect == "postgresql":
            pg_engine = asyncpg_engine(resolved)
            opened = await _open_pg(resolved, pg_engine, plan, sinks, buffer, zipped)
            if isinstance(opened, CopyPages):
                pg_engine = None  # the pages own it now (see CopyPages.aclose)
            return opened
        statement = plan.statement
        paged = await _pageable(resolved, statement)
        names = [c.name for c in plan.arrow or []] or [c.name for c in plan.kinds or []]
        if paged is not None and not names and isinstance(statement, Select):
            names = list(statement.selected_columns.keys())

        def open_rows(keys: list[str]) -> Callable[[Rows], None]:
            return rows_writer(plan, sinks, keys)

        return await _open(
            resolved, plan, statement, paged, names, open_rows, sinks, buffer, zipped
        )
    except BaseException:
        await shielded(resolved.aclose())
        raise
    finally:
        if pg_engine is not None and pg_engine is not resolved.engine:
            await shielded(dispose(pg_engine))


def _as_table(resolved: ResolvedSource, statement: Any) -> tuple[str, str | None, list[str]] | None:
    """A select() of one table's own columns (an ORM entity, say), filtered at most, as the
    table name, the condition and the columns ``rowstream export --table --where --columns``
    takes: MariaDB and SQLite values are then read raw and checked as the export reads a
    table (SQLAlchemy's result processing is lossy for export; see ``_statement._raw``)."""
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
    pg_engine: AsyncEngine,
    plan: ExportPlan,
    sinks: Sinks,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
) -> Rendered | CopyPages:
    """PostgreSQL renders each value itself, as in the export's readers."""
    sql, options = plan.sql, plan.options
    pg, _estimate = await pg_columns(pg_engine, sql, options.read_timeout, estimate=False)
    names = [c.name for c in pg]
    opener: OpenWrite
    if plan.format == "parquet":
        from ._pgtypes import PgRead

        read = PgRead(pg, infinity=options.infinity, nan=options.nan)
        text = sa.text(read.query(sql, adbc=False))

        def open_batches(keys: list[str]) -> Callable[[Rows], None]:
            # The rows are PgRead's select list (guards included), checked into its batches.
            sink = sinks.batches(read.columns)

            def write(rows: Rows) -> None:
                if rows:
                    sink.write_batch(read.rows_batch(rows))

            return write

        opener = open_batches
    else:
        if plan.method == "copy":
            pages = await _copy_pages(resolved, pg_engine, plan, pg, sinks, buffer, zipped)
            if pages is not None:
                return pages
        texts = ", ".join(pg_text(c, plan.format) for c in pg)
        text = sa.text(f"SELECT {texts} FROM ({sql}) AS t")

        def open_rendered_rows(keys: list[str]) -> Callable[[Rows], None]:
            return sinks.rows(keys, rendered=True).write_rows

        opener = open_rendered_rows
    paged = await _pg_pageable(resolved, plan.statement, pg, plan)
    return await _open(resolved, plan, text, paged, names, opener, sinks, buffer, zipped)


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


#: A statement to read by keyset pages, and how many of its columns are the file's (its key
#: columns come after them).
Paged = tuple[Select[Any], int]


async def _pageable(resolved: ResolvedSource, statement: Any) -> Paged | None:
    """MariaDB/SQLite: the statement with its raw key after its columns (the export reads each
    column without SQLAlchemy's processing, so the key is not among them as such)."""
    key = await _key_of(resolved, statement)
    if key is None:
        return None
    paged: Select[Any] = statement.add_columns(*key)
    return paged, len(statement.selected_columns)


async def _pg_pageable(
    resolved: ResolvedSource,
    statement: Any,
    pg: list[PgColumn],
    plan: ExportPlan,
) -> Paged | None:
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
    # The export's renderings read the derived table "t"; here each reads the table's own
    # column (the statement's condition may name the table).
    qualified = resolved.engine.dialect.identifier_preparer.format_table(table)
    if plan.format == "parquet":
        from ._pgtypes import PgRead

        options = plan.options
        read = PgRead(pg, infinity=options.infinity, nan=options.nan, table=qualified)
        exprs = read.select_list(adbc=False)
    else:
        exprs = [pg_text(c, plan.format, qualified) for c in pg]
    listed: list[Any] = [sa.literal_column(e).label(f"c{i}") for i, e in enumerate(exprs)]
    paged = sa.select(*listed, *key).select_from(key[0].table)
    if statement.whereclause is not None:
        paged = paged.where(statement.whereclause)
    return paged, len(listed)


async def _open(
    resolved: ResolvedSource,
    plan: ExportPlan,
    statement: Any,
    paged: Paged | None,
    names: list[str],
    opener: OpenWrite,
    sinks: Sinks,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
) -> Rendered:
    """Open the stream by keyset pages when a key allows it, else as the export reads."""
    source: Any = resolved.borrowed or resolved.engine
    width: int | None = None
    rows: RowStream | None = None
    keyed = paged[0] if paged is not None else statement
    if isinstance(keyed, Select):
        candidate = _stream(source, keyed, plan.options, "keyset")
        try:
            await candidate.__aenter__()
            rows = candidate
            width = paged[1] if paged is not None else None
        except StreamKeyError:
            rows = None  # no usable key: read as the export does
    if rows is None:
        rows = _stream(source, statement, plan.options, "auto")
        await rows.__aenter__()
    try:
        keys = list(rows.keys())
        if width is not None:
            keys = keys[:width]
        if not names or len(names) != len(keys):
            names = keys
        write = opener(names)
    except BaseException:
        await shielded(rows.aclose())
        raise
    return Rendered(resolved, rows, sinks, write, buffer, zipped, width)


def _stream(source: Any, statement: Any, options: ExportOptions, strategy: Any) -> RowStream:
    return stream(
        source,
        statement,
        batch_rows=options.batch_rows,
        batch_bytes=options.batch_bytes,
        read_timeout=options.read_timeout,
        strategy=strategy,
        # Zero dates as the server's text: the export's plan applies zero_dates.
        zero_dates="text",
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

    The server renders every value (the bytes of ``rowstream export``'s COPY reader, by the
    same functions, in the same session settings); Python only moves bytes, so a download
    keeps up with the export to a file, and no transaction waits on the network.
    """

    strategy = "keyset"

    def __init__(
        self,
        resolved: ResolvedSource,
        engine: AsyncEngine,
        plan: ExportPlan,
        key: str,
        pg: list[PgColumn],
        sinks: Sinks,
        buffer: _Buffer,
        zipped: gzip.GzipFile | None,
    ) -> None:
        self._resolved = resolved
        self._engine = engine
        self._plan = plan
        self._key = key
        self._pg = pg
        # COPY's bytes go to the export's encoder for them, as in its COPY reader.
        self._sink = sinks.encoded([c.name for c in pg])
        self._buffer = buffer
        self._zipped = zipped
        self._pending: asyncio.Future[Any] | None = None
        self.rows = 0

    async def _page(self, last: int | None, size: int) -> tuple[bytes, int, int | None]:
        """The rendered rows after ``last`` (at most ``size``), their count, and the last key
        (None at the end)."""
        sql, fmt = self._plan.sql, self._plan.format
        key = f"t.{quote_ident(self._key)}"
        after = f" WHERE {key} > {quote_literal(str(last))}" if last is not None else ""
        parts: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            arrived()
            parts.append(bytes(chunk))

        async with pg_session(self._engine, self._plan.options.read_timeout) as (apg, arrived):
            await apg.execute("SET TRANSACTION READ ONLY")
            bound = await apg.fetchval(
                f"SELECT {key} FROM ({sql}) AS t{after} ORDER BY {key} OFFSET {size - 1} LIMIT 1"
            )
            upper = f" {'AND' if after else 'WHERE'} {key} <= {bound}" if bound is not None else ""
            page = f"SELECT t.* FROM ({sql}) AS t{after}{upper} ORDER BY {key}"
            if fmt == "csv":
                count = await copy_csv(apg, page, collect)
            else:
                count = await copy_jsonl(apg, page, self._pg, collect)
        data = b"".join(parts)
        if fmt == "csv" and last is not None:
            data = data[data.index(b"\n") + 1 :]  # COPY's header: only the first page's
        return data, count, None if bound is None else int(bound)

    async def chunks(self) -> AsyncIterator[bytes]:
        sink, buffer = self._sink, self._buffer
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
            sink.write_bytes(data)
            del data
            piece = buffer.take()
            if piece:
                yield piece
            if last is None:
                break
        sink.finish()
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
            await shielded(dispose(self._engine))
        await shielded(self._resolved.aclose())


async def _copy_pages(
    resolved: ResolvedSource,
    pg_engine: AsyncEngine,
    plan: ExportPlan,
    pg: list[PgColumn],
    sinks: Sinks,
    buffer: _Buffer,
    zipped: gzip.GzipFile | None,
) -> CopyPages | None:
    """Keyset COPY pages when the statement is one table's plain columns with an integer
    primary key among them (other keys: rows through rowstream.stream)."""
    statement = plan.statement
    if not isinstance(statement, Select) or statement._order_by_clauses:
        return None
    if statement._limit_clause is not None or statement._offset_clause is not None:
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
    return CopyPages(resolved, pg_engine, plan, name, pg, sinks, buffer, zipped)
