"""PostgreSQL fast paths: the server renders the rows (``COPY ... TO STDOUT``).

COPY is the fastest way out of PostgreSQL (ERRATA 10: 852k rows/s as CSV against 390k rows/s
through a cursor), and its CSV *is* the reference the CSV export must match byte for byte.
Everything runs in one REPEATABLE READ transaction on one asyncpg connection with
``SET LOCAL TimeZone = 'UTC'``, so timestamps come out in UTC and the settings die with the
transaction (safe behind a transaction-pooling PgBouncer).

- CSV: COPY CSV straight into the file.
- JSONL: the server builds each line from ``to_jsonb()`` of every column, keys in column order
  (``to_jsonb(row)`` would sort the keys), sent as COPY text.
- Parquet: COPY CSV is cut into blocks of whole records and parsed by Arrow's C++ CSV reader,
  with an explicit schema, in a thread; only a few blocks and the current row group are held.

The statement is prepared first (extended protocol: exactly one statement), and the transaction
is read-only before COPY, so a ``--where`` cannot smuggle in a second statement that writes.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ._exceptions import SinkError
from ._strategy import shielded

if TYPE_CHECKING:
    from ._arrow import ArrowColumn
    from ._sinks._parquet import ParquetSink

__all__ = ["PgColumn", "copy_csv", "copy_jsonl", "copy_parquet", "pg_transaction", "probe"]

Write = Callable[[bytes], Awaitable[None]]

# Blocks of about 1 MiB (some 9,000 orders rows): large enough that parsing runs at full speed,
# small enough that the few blocks in flight cost little memory (measured: 4 and 8 MiB blocks
# raised peak RSS by 10-40 MB for no gain in rows/s).
PARQUET_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PgColumn:
    """A result column as the catalog describes it."""

    name: str
    typname: str
    typmod: int
    element: str | None

    @property
    def arrow(self) -> ArrowColumn:
        from ._arrow import pg_column

        return pg_column(self.name, self.typname, self.typmod, self.element)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    # standard_conforming_strings is set on in the transaction: only quotes need doubling.
    return "'" + text.replace("'", "''") + "'"


_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, MDY'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 1",
    "SET LOCAL standard_conforming_strings = on",
)


@contextlib.asynccontextmanager
async def pg_transaction(conn: AsyncConnection) -> AsyncIterator[Any]:
    """A REPEATABLE READ transaction with UTC and the output settings COPY's text depends on;
    yields the asyncpg connection, to be used inside the transaction only."""
    conn = await conn.execution_options(isolation_level="REPEATABLE READ")
    transaction = await conn.begin()
    try:
        for statement in _SETTINGS:
            await conn.exec_driver_sql(statement)
        raw = await conn.get_raw_connection()
        yield raw.driver_connection
    except BaseException:
        # Cancelled in the middle of a COPY (Ctrl-C), the connection may refuse a rollback
        # ("another operation is in progress"): that must not replace the cancellation. The
        # connection is then dropped, never pooled; closing it ends the backend's COPY too.
        try:
            await shielded(transaction.rollback())
        except Exception:
            with contextlib.suppress(Exception):
                await shielded(conn.invalidate())
        raise
    await transaction.commit()


_PROBE_CATALOG = """
SELECT a.attname, t.typname, a.atttypmod, e.typname
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


async def probe(apg: Any, sql: str) -> tuple[list[PgColumn], int | None]:
    """Check ``sql`` (one statement), and return its columns and the planner's row estimate.

    Column types come from a temporary view (the catalog keeps ``numeric(p, s)``, which the
    wire protocol's description does not expose); where views cannot be created (a standby),
    from the prepared statement, with numerics read as text.
    """
    statement = await apg.prepare(sql)
    columns: list[PgColumn] = []
    try:
        async with apg.transaction():  # a savepoint: the view is gone afterwards
            await apg.fetch("CREATE TEMP VIEW rowstream_probe AS " + sql)
            rows = await apg.fetch(_PROBE_CATALOG, "pg_temp.rowstream_probe")
            columns = [PgColumn(r[0], r[1], r[2], r[3]) for r in rows]
            raise _Rollback
    except _Rollback:
        pass
    except Exception:
        columns = []
    if not columns:
        for attribute in statement.get_attributes():
            kind = attribute.type.kind
            element = None
            if kind == "array":
                element = attribute.type.name.lstrip("_")
            columns.append(PgColumn(attribute.name, attribute.type.name, -1, element))
    estimate: int | None = None
    with contextlib.suppress(Exception):
        plan = await apg.fetchval("EXPLAIN (FORMAT JSON) " + sql)
        if isinstance(plan, str):  # SQLAlchemy's engines decode json, a bare asyncpg does not
            plan = json.loads(plan)
        estimate = int(plan[0]["Plan"]["Plan Rows"])
    # Nothing below writes: make that a guarantee for the statements that follow.
    await apg.execute("SET TRANSACTION READ ONLY")
    return columns, estimate


class _Rollback(Exception):
    pass


def _rows(status: str) -> int:
    # asyncpg returns the command tag, "COPY 5000000".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def select_list(columns: Sequence[ArrowColumn], alias: str = "t") -> str:
    parts = []
    for column in columns:
        ref = f"{alias}.{quote_ident(column.name)}"
        parts.append(f"{ref}::{column.cast}" if column.cast else ref)
    return ", ".join(parts)


async def copy_csv(apg: Any, sql: str, write: Write) -> int:
    """COPY CSV with a header into ``write``; returns the number of rows."""
    status = await apg.copy_from_query(sql, output=write, format="csv", header=True)
    return _rows(str(status))


async def copy_jsonl(apg: Any, sql: str, columns: Sequence[str], write: Write) -> int:
    """One ``to_jsonb()`` object per line, keys in column order; returns the number of rows."""
    # Duplicate names would make t."a" ambiguous; JSON objects cannot hold them anyway.
    fields = [
        quote_literal(json.dumps(name, ensure_ascii=False) + ": ")
        + f" || coalesce(to_jsonb(t.{quote_ident(name)})::text, 'null')"
        for name in columns
    ]
    body = " || ', ' || ".join(fields) if fields else "''"
    query = f"SELECT '{{' || {body} || '}}' FROM ({sql}) AS t"
    carry = b""

    async def unescape(chunk: bytes) -> None:
        # COPY text doubles every backslash; jsonb text has no raw control characters, so
        # that is the only escape. A chunk may end inside a line: keep the tail for the next.
        nonlocal carry
        data = carry + chunk
        end = data.rfind(b"\n") + 1
        carry = data[end:]
        if end:
            await write(data[:end].replace(b"\\\\", b"\\"))

    status = await apg.copy_from_query(query, output=unescape, format="text")
    if carry:
        await write(carry.replace(b"\\\\", b"\\"))
    return _rows(str(status))


def csv_parseable(columns: Sequence[ArrowColumn]) -> bool:
    """True when Arrow's CSV reader can read every column exactly from COPY CSV."""
    import pyarrow as pa

    # With the casts of _arrow.py (interval, uuid, json... as text), these parse exactly;
    # lists, binary (bytea's hex) and times do not.
    parseable = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
        pa.types.is_string,
        pa.types.is_decimal,
        pa.types.is_date32,
        pa.types.is_timestamp,
    )
    return all(c.type is not None and any(check(c.type) for check in parseable) for c in columns)


def record_boundary(block: bytes | bytearray) -> int:
    """The end of the last complete CSV record in ``block`` (0 when there is none).

    A newline ends a record only outside quotes; COPY doubles quotes inside quoted fields, so
    a newline is outside quotes exactly when an even number of quotes precede it.
    """
    end = block.rfind(b"\n")
    while end >= 0 and block.count(b'"', 0, end) % 2:
        end = block.rfind(b"\n", 0, end)
    return end + 1


async def copy_parquet(
    apg: Any,
    sql: str,
    columns: Sequence[ArrowColumn],
    sink: ParquetSink,
    on_chunk: Callable[[bytes], None],
) -> int:
    """COPY CSV, cut into blocks of whole records, parsed by Arrow in a thread into ``sink``.

    One block is parsed while the next is received, and at most one more waits: memory holds
    about three blocks and the current row group, whatever the size of the table. (Arrow's
    streaming CSV reader reads ahead as far as its thread pool allows, which costs far more.)
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from ._arrow import lean_memory_pool

    names = [f"c{i}" for i in range(len(columns))]  # no header: names need not be valid CSV
    parse_schema = pa.schema([pa.field(n, c.type) for n, c in zip(names, columns, strict=True)])
    schema = pa.schema([pa.field(c.name, c.type) for c in columns])
    read_options = pacsv.ReadOptions(column_names=names, use_threads=False)
    # Text may hold newlines inside quotes; Arrow's parser must be told to look for them.
    parse_options = pacsv.ParseOptions(newlines_in_values=True)
    pool = lean_memory_pool()
    convert_options = pacsv.ConvertOptions(
        column_types=parse_schema,
        # COPY CSV: NULL is an unquoted empty field, "" is the empty string.
        null_values=[""],
        quoted_strings_can_be_null=False,
        strings_can_be_null=True,
        true_values=["t"],
        false_values=["f"],
    )
    query = f"SELECT {select_list(columns)} FROM ({sql}) AS t"
    blocks: queue.Queue[memoryview | None] = queue.Queue(maxsize=1)
    errors: list[BaseException] = []

    def consume() -> None:
        while (block := blocks.get()) is not None:
            if errors:
                continue  # keep draining, so the producer never waits forever
            try:
                table = pacsv.read_csv(
                    pa.py_buffer(block),
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                    memory_pool=pool,
                )
                for batch in table.to_batches():
                    sink.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
            except BaseException as exc:  # handed to the event loop below
                errors.append(exc)

    thread = threading.Thread(target=consume, name="rowstream-parquet", daemon=True)
    thread.start()
    # Chunks are gathered in a list and joined once per block: growing one buffer chunk by
    # chunk reallocates it over and over, which fragments the C heap (measured: +20-30 MB).
    chunks: list[bytes] = []
    size = 0

    def hand_over(block: memoryview) -> None:
        # A blocking put: a full queue is the back-pressure that keeps memory flat.
        blocks.put(block)

    async def feed(chunk: bytes) -> None:
        nonlocal size
        chunks.append(chunk)
        size += len(chunk)
        on_chunk(chunk)
        if size >= PARQUET_BLOCK_BYTES:
            data = b"".join(chunks)
            end = record_boundary(data)
            chunks[:] = [data[end:]] if end < len(data) else []
            size = len(data) - end
            if end:
                hand_over(memoryview(data)[:end])

    try:
        status = await apg.copy_from_query(query, output=feed, format="csv")
        if chunks:
            hand_over(memoryview(b"".join(chunks)))
    finally:
        chunks.clear()
        blocks.put(None)
        thread.join()
    if errors:
        error = errors[0]
        if isinstance(error, pa.ArrowException):
            raise SinkError(
                f"cannot convert PostgreSQL's rows to Parquet: {str(error).splitlines()[0]}"
            ) from error
        raise error
    return _rows(str(status))
