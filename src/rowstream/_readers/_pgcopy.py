"""PostgreSQL COPY text: the server encodes CSV or JSON lines, the bytes go to the sink as is.

plan (method copy, CSV/JSONL) -> probe + ``COPY ... TO STDOUT`` on asyncpg
(:mod:`rowstream._pgcopy`) -> ``sinks.encoded()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from .._pgcopy import Write, copy_csv, copy_jsonl, probe
from ._pgsession import copy_engine, pg_session

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

    async def read(self, sinks: Sinks, progress: Progress) -> int:
        sql = self._sql
        async with pg_session(self._engine, self._plan.options.read_timeout) as (apg, arrived):
            counting = progress.enabled  # counting lines costs a pass over the data
            # CSV's header comes from COPY: its columns need no description.
            columns, estimate = await probe(
                apg, sql, describe=self._plan.format != "csv", estimate=counting
            )
            progress.set_estimate(estimate)
            sink = sinks.encoded([c.name for c in columns])

            async def write(chunk: bytes) -> None:
                arrived()
                sink.write_bytes(chunk)
                if counting:
                    progress.advance(chunk.count(b"\n"))

            out: Write = write
            if self._plan.format == "csv":
                return await copy_csv(apg, sql, out)
            return await copy_jsonl(apg, sql, columns, out)

    async def aclose(self) -> None:
        if self._owns_engine and not isinstance(self._engine, sa.Engine):
            from .._watchdog import dispose

            await dispose(self._engine)
