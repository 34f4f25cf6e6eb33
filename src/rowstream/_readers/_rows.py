"""Rows through :func:`rowstream.stream` (server-side cursor or keyset pages), for every database.

plan (method stream) -> :func:`rowstream.stream` in byte-sized batches -> ``sinks.rows()``
(or ``sinks.batches()``) -> the pipeline.

- :class:`PgStreamReader`: PostgreSQL, when the caller lends a connection or asks for
  ``method="stream"``. The server still renders each value as COPY (CSV) or ``to_jsonb()``
  (JSONL) would, so both methods write the same bytes; for Parquet the rows are read as
  :class:`rowstream._pgtypes.PgRead` says and checked into the same Arrow batches as ADBC's.
- :class:`RowsReader`: MariaDB and SQLite. Only columns whose values need it are touched on
  the way (:mod:`rowstream._values`: zero dates, FLOAT's exact text, SQLite's storage classes).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.sql.selectable import Select

from .._exceptions import ConfigurationError
from .._pgcopy import PgColumn, json_array, json_text, quote_ident
from .._values import Plan, PlanColumn
from ._pgsession import asyncpg_engine, pg_columns

if TYPE_CHECKING:
    from .._arrow import ArrowColumn
    from .._export_plan import ExportPlan
    from .._sinks import Sink, Sinks
    from .._sinks._options import Format
    from .._source import ResolvedSource
    from .._statement import Statement
    from . import Progress

__all__ = ["PgStreamReader", "RowsReader", "pg_text", "rows_writer"]

Rows = Sequence[Sequence[Any]]
#: Given the stream's column names, the function each batch of rows goes to.
OpenWrite = Callable[[list[str]], Callable[[Rows], None]]


async def _stream_rows(
    plan: ExportPlan,
    resolved: ResolvedSource,
    statement: Statement,
    open_write: OpenWrite,
    progress: Progress,
) -> int:
    """Stream ``statement``; ``open_write(names)`` gives the function each batch goes to."""
    from .._stream import stream

    options = plan.options
    total = 0
    async with stream(
        resolved.borrowed or resolved.engine,
        statement,
        batch_rows=options.batch_rows,
        batch_bytes=options.batch_bytes,
        read_timeout=options.read_timeout,
        # MariaDB's zero dates come as the server's text: the export's plan decides (its
        # zero_dates, with its own message and for every format), rowstream._values.
        zero_dates="text",
    ) as rows:
        write = open_write(list(rows.keys()))
        async for batch in rows.batches():
            write(batch)
            total += len(batch)
            progress.advance(len(batch))
            del batch  # not alive while the next one is read (it may be one 50 MB row)
    return total


def pg_text(column: PgColumn, fmt: Format, table: str = "t") -> str:
    """The server's own text of a column, as COPY (CSV) or to_jsonb() (JSONL) renders it;
    the column is read from ``table`` (the derived table ``t``, or a table's quoted name)."""
    ref = f"{table}.{quote_ident(column.name)}"
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


class PgStreamReader:
    method = "stream"

    def __init__(self, plan: ExportPlan, resolved: ResolvedSource) -> None:
        self._plan = plan
        self._resolved = resolved
        # The probe goes through asyncpg (its prepared statements describe the columns).
        self._engine = asyncpg_engine(resolved)
        self._owns_engine = self._engine is not resolved.engine
        self._sql = plan.sql

    async def read(self, sinks: Sinks, progress: Progress) -> int:
        plan, sql = self._plan, self._sql
        columns, estimate = await pg_columns(
            self._engine, sql, plan.options.read_timeout, estimate=progress.enabled
        )
        progress.set_estimate(estimate)
        names = [c.name for c in columns]
        if plan.format == "parquet":
            from .._pgtypes import PgRead

            read = PgRead(columns, infinity=plan.options.infinity, nan=plan.options.nan)
            query = read.query(sql, adbc=False)

            def open_batches(keys: list[str]) -> Callable[[Rows], None]:
                sink = sinks.batches(read.columns)

                def write(rows: Rows) -> None:
                    if rows:
                        sink.write_batch(read.rows_batch(rows))

                return write

            opener: OpenWrite = open_batches
        else:
            texts = ", ".join(pg_text(c, plan.format) for c in columns)
            query = f"SELECT {texts} FROM ({sql}) AS t"

            def open_rows(keys: list[str]) -> Callable[[Rows], None]:
                same = len(names) == len(keys)
                return sinks.rows(names if same else keys, rendered=True).write_rows

            opener = open_rows
        return await _stream_rows(plan, self._resolved, sa.text(query), opener, progress)

    async def aclose(self) -> None:
        if self._owns_engine:
            from .._watchdog import dispose

            await dispose(self._engine)


class RowsReader:
    method = "stream"

    def __init__(self, plan: ExportPlan, resolved: ResolvedSource) -> None:
        self._plan = plan
        self._resolved = resolved

    async def read(self, sinks: Sinks, progress: Progress) -> int:
        plan = self._plan
        if progress.enabled:  # only a progress bar shows the estimate
            progress.set_estimate(await _mysql_estimate(self._resolved, plan.statement))

        def open_rows(keys: list[str]) -> Callable[[Rows], None]:
            return rows_writer(plan, sinks, keys)

        return await _stream_rows(plan, self._resolved, plan.statement, open_rows, progress)

    async def aclose(self) -> None:
        """The source is the pipeline's to close."""


def rows_writer(plan: ExportPlan, sinks: Sinks, keys: list[str]) -> Callable[[Rows], None]:
    """MariaDB and SQLite: the sink for a stream of columns ``keys``, begun, and the function
    each batch goes to (only the values that need it are touched on the way)."""
    typed = plan.arrow or []
    names = [c.name for c in typed] if len(typed) == len(keys) else keys
    values = _values_plan(names, plan)
    sink: Sink
    if plan.format == "parquet":
        sink = sinks.rows(names, _parquet_columns(plan, typed, names, values))
        return sink.write_rows
    sink = sinks.rows(names)
    if values is None or not values.active:
        return sink.write_rows
    fix = values.apply

    def write(rows: Rows) -> None:
        sink.write_rows(fix(rows))

    return write


def _values_plan(names: list[str], plan: ExportPlan) -> Plan | None:
    """What the values of ``names`` need on the way (None: nothing)."""
    text_columns = plan.options.text_columns
    unknown = sorted(text_columns.difference(names))
    if unknown:
        raise ConfigurationError(
            f"unknown column {unknown[0]!r} in text_columns (--text-columns): the export has "
            + ", ".join(names)
        )
    kinds = plan.kinds
    if kinds is None and plan.dialect == "sqlite":
        # A query's columns have no declared type: in Parquet each keeps the storage class
        # of its first values.
        kinds = [PlanColumn(n, "blob") for n in names]
    if kinds is None:
        return None
    return Plan(kinds, plan.format, plan.dialect, plan.options.zero_dates, text_columns)


def _parquet_columns(
    plan: ExportPlan, arrow: list[ArrowColumn], names: list[str], values: Plan | None
) -> list[ArrowColumn]:
    """Parquet for MariaDB and SQLite: the columns' types (untyped ones inferred from the first
    rows), each with the check that keeps its values exact (run on the column the Arrow
    conversion extracts anyway, so columns without one cost nothing more)."""
    import pyarrow as pa

    from .._arrow import ArrowColumn

    if len(arrow) != len(names):
        text = pa.string()
        text_columns = plan.options.text_columns
        arrow = [ArrowColumn(n, text if n in text_columns else None) for n in names]
    if values is not None:
        checks = values.checks()
        arrow = [dataclasses.replace(c, check=checks.get(i)) for i, c in enumerate(arrow)]
    return arrow


async def _mysql_estimate(resolved: ResolvedSource, statement: Statement) -> int | None:
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
