"""PostgreSQL to Arrow batches, for Parquet: ADBC's binary COPY, or asyncpg's cursor.

plan (method copy, Parquet) -> probe on asyncpg (catalog types) -> :class:`PgRead` (how each
column is read and checked, :mod:`rowstream._pgtypes`) -> ``sinks.batches()`` ->
ADBC's binary COPY decoded in C (:mod:`rowstream._pgarrow`); when ADBC cannot connect
(connect arguments a URL cannot carry: an SSL context, a custom creator), an asyncpg cursor
whose rows :class:`PgRead` turns into the same batches.

A partition's plan (:attr:`rowstream._export_plan.ExportPlan.snapshot`): ADBC's connection
joins the shared snapshot and is verified against the coordinator's point before it reads;
the cursor, when ADBC cannot connect, reads on the borrowed connection, already at the
snapshot. The column types are probed on a connection of their own either way: the probe's
temporary view cannot be made in the snapshot's read-only transaction, and types do not depend
on the snapshot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._pgcopy import probe
from .._pgtypes import PgRead
from .._source import mask_url
from .._watchdog import Watchdog
from ._pgsession import asyncpg_engine, pg_session, reader_session

if TYPE_CHECKING:
    from .._export_plan import ExportPlan
    from .._sinks import BatchSink, Sinks
    from .._source import ResolvedSource
    from . import Progress

__all__ = ["PgArrowReader"]

logger = logging.getLogger("rowstream")

#: Rows per fetch of the cursor that reads when ADBC cannot connect (unless batch_rows).
CURSOR_ROWS = 10_000


class PgArrowReader:
    method = "copy"

    def __init__(self, plan: ExportPlan, resolved: ResolvedSource) -> None:
        self._plan = plan
        self._engine = asyncpg_engine(resolved)
        self._owns_engine = self._engine is not resolved.engine
        self._sql = plan.sql
        self._borrowed = resolved.borrowed if plan.snapshot is not None else None

    async def read(self, sinks: Sinks, progress: Progress) -> int:
        from .._pgarrow import CannotConnect, copy_to_arrow

        engine, options = self._engine, self._plan.options
        async with pg_session(engine, options.read_timeout) as (apg, _arrived):
            columns, estimate = await probe(apg, self._sql, estimate=progress.enabled)
        # The rows come over a connection of ADBC's: the probe's connection is back in the
        # pool by then, so a pool of one cannot deadlock.
        progress.set_estimate(estimate)
        read = PgRead(columns, infinity=options.infinity, nan=options.nan)
        sink = sinks.batches(read.columns)
        watchdog = Watchdog(
            engine, options.read_timeout, where=mask_url(engine.url), resumable=False
        )
        try:
            return await copy_to_arrow(
                engine.url,
                self._sql,
                read,
                sink.write_batch,
                progress.advance,
                watchdog,
                snapshot=self._plan.snapshot,
                share=self._plan.share,
            )
        except CannotConnect as exc:
            logger.info("ADBC cannot connect (%s); reading Parquet through a cursor", exc)
        self.method = "cursor"
        return await self._cursor(read, sink, progress)

    async def _cursor(self, read: PgRead, sink: BatchSink, progress: Progress) -> int:
        """The same batches through an asyncpg cursor: slower, the same file."""
        query = read.query(self._sql, adbc=False)
        size = self._plan.options.batch_rows or CURSOR_ROWS
        total = 0
        timeout = self._plan.options.read_timeout
        async with reader_session(self._engine, self._borrowed, timeout) as (apg, arrived):
            # No probe ran on this connection: make the transaction read-only here.
            await apg.execute("SET TRANSACTION READ ONLY")
            cursor = await apg.cursor(query)
            while rows := await cursor.fetch(size):
                arrived()
                sink.write_batch(read.rows_batch(rows))
                total += len(rows)
                progress.advance(len(rows))
        return total

    async def aclose(self) -> None:
        if self._owns_engine:
            from .._watchdog import dispose

            await dispose(self._engine)
