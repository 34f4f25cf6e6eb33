"""Readers: each one way to get a plan's rows out of a database; none knows about files.

source -> plan -> **reader** -> pipeline -> sink -> report

Every reader has one method, ``read(sinks, progress)``: it connects, learns the columns, asks
:class:`rowstream._sinks.Sinks` for the encoder that takes what it delivers, hands it the
data, and returns the number of rows; ``aclose()`` releases what it holds.

==================  ====================================  ======================================
reader              when                                  delivers
==================  ====================================  ======================================
PgCopyReader        PostgreSQL, method copy, CSV/JSONL    bytes the server encoded (COPY text)
PgArrowReader       PostgreSQL, method copy, Parquet      Arrow batches (ADBC, binary COPY);
                                                          an asyncpg cursor if ADBC cannot connect
PgStreamReader      PostgreSQL, method stream             the server's text of each value, or
                                                          checked Arrow batches (Parquet)
RowsReader          MariaDB, SQLite                       rows of :func:`rowstream.stream`
==================  ====================================  ======================================

:func:`pick_reader` is the one place a reader is chosen, from the plan alone. Driver I/O stays
in small modules (:mod:`rowstream._pgcopy`, :mod:`rowstream._pgarrow`); each reader module
imports only what its own path needs (ADBC and pyarrow load for Parquet only).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._export_plan import ExportPlan
    from .._sinks import Sinks
    from .._source import ResolvedSource

__all__ = ["Progress", "Reader", "pick_reader", "preload"]


class Progress(Protocol):
    """Where a reader reports what it read (the pipeline adds the bytes written)."""

    @property
    def enabled(self) -> bool: ...

    def set_estimate(self, estimate: int | None) -> None: ...

    def advance(self, rows: int) -> None: ...


class Reader(Protocol):
    #: What ran, for the report: "copy", "cursor" (asyncpg's, when ADBC cannot connect) or
    #: "stream"; set by :meth:`read`.
    method: str

    async def read(self, sinks: Sinks, progress: Progress) -> int: ...

    async def aclose(self) -> None: ...


def pick_reader(plan: ExportPlan, resolved: ResolvedSource) -> Reader:
    """The reader for ``plan`` (the one place the choice is made)."""
    if plan.dialect != "postgresql":
        from ._rows import RowsReader

        return RowsReader(plan, resolved)
    if plan.method == "stream":
        from ._rows import PgStreamReader

        return PgStreamReader(plan, resolved)
    if plan.format == "parquet":
        from ._pgarrow import PgArrowReader

        return PgArrowReader(plan, resolved)
    from ._pgcopy import PgCopyReader

    return PgCopyReader(plan, resolved)


def preload(backend: str, format: str) -> None:
    """Import now the modules an export from ``backend`` (a URL's, ``"postgresql"``...) to
    ``format`` will read with, as :func:`pick_reader` would on the default method.

    For the CLI, which imports while the cyclic collector is paused (``rowstream._cli.loading``);
    the library itself imports them on first use.
    """
    if backend != "postgresql":
        modules = ["rowstream._stream", "rowstream._readers._rows"]
    elif format == "parquet":
        modules = ["rowstream._pgarrow", "rowstream._readers._pgarrow"]
    else:
        modules = ["rowstream._readers._pgcopy"]
    for name in modules:
        importlib.import_module(name)
