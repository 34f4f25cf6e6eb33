"""PostgreSQL COPY text: the server encodes CSV or JSON lines, the bytes go to the sink as is.

plan (method copy, CSV/JSONL) -> probe + ``COPY ... TO STDOUT`` on asyncpg
(:mod:`rowstream._pgcopy`) -> ``sinks.encoded()``.

A partition's plan (:attr:`rowstream._export_plan.ExportPlan.snapshot`) runs the same COPY on
the borrowed connection, at the shared snapshot: the same bytes, rendered by as many backends
as there are readers. Its JSONL column types are probed on a connection of their own: the probe's
temporary view cannot be made in the snapshot's read-only transaction, and types do not depend
on the snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from .._pgcopy import Write, copy_csv, copy_jsonl, probe
from ._pgsession import copy_engine, pg_columns, reader_session

if TYPE_CHECKING:
    from .._export_plan import ExportPlan
    from .._sinks import Sinks
    from .._source import ResolvedSource
    from . import Progress

__all__ = ["PgCopyReader"]


class PgCopyReader:
    method = "copy"

    def __init__(self, plan: ExportPlan, resolved: ResolvedSource) -> None:
        self._plan = plan
        self._engine, self._owns_engine = copy_engine(resolved)
        self._sql = plan.sql
        self._borrowed = resolved.borrowed if plan.snapshot is not None else None

    async def read(self, sinks: Sinks, progress: Progress) -> int:
        sql, timeout = self._sql, self._plan.options.read_timeout
        counting = progress.enabled  # counting lines costs a pass over the data
        # CSV's header comes from COPY: its columns need no description.
        describe = self._plan.format != "csv"
        side = None
        if describe and self._borrowed is not None:
            # On a side connection of the borrowed one's engine: the probe's temporary view
            # cannot be made in the snapshot's read-only transaction.
            side = await pg_columns(self._borrowed.engine, sql, timeout, estimate=counting)
        async with reader_session(self._engine, self._borrowed, timeout) as (apg, arrived):
            columns, estimate = await probe(
                apg, sql, describe=describe and side is None, estimate=counting and side is None
            )
            if side is not None:
                columns, estimate = side
            progress.set_estimate(estimate)
            sink = sinks.encoded([c.name for c in columns])
            # CSV's first line is COPY's header, not a row.
            header = self._plan.format == "csv"

            async def write(chunk: bytes) -> None:
                nonlocal header
                arrived()
                sink.write_bytes(chunk)
                if counting:
                    lines = chunk.count(b"\n")
                    if header and lines:
                        lines, header = lines - 1, False
                    progress.advance(lines)

            out: Write = write
            if self._plan.format == "csv":
                return await copy_csv(apg, sql, out)
            return await copy_jsonl(apg, sql, columns, out)

    async def aclose(self) -> None:
        if self._owns_engine and not isinstance(self._engine, sa.Engine):
            from .._watchdog import dispose

            await dispose(self._engine)
