"""The single export: a table or query into CSV, JSON Lines or Parquet, on a file or a stream.

:func:`rowstream.export` (``rowstream._export_jobs``) is this export without ``jobs``; with
``jobs=N`` each partition is one of these.

Data path, one module each::

    source (_source) -> statement (_statement) -> plan (_export_plan: format, method)
      -> reader (_readers: COPY text, ADBC binary COPY -> Arrow, rowstream.stream)
      -> pipeline (run(): reader -> sink, progress, abort on failure)
      -> sink (_sinks: CSV, JSONL, Parquet encoders) -> destination (_sinks._output: atomic
         file, standard output, any writable binary stream) -> report (ExportReport)

``export()`` plans, picks a reader (:func:`rowstream._readers.pick_reader`) and a sink
(:class:`rowstream._sinks.Sinks`), each in one place, and runs the pipeline. A partition, an
HTTP response body or another database is one more plan, destination or reader.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._export_plan import (
    METHODS,
    ExportMethod,
    ExportOptions,
    InfinityChoice,
    NanChoice,
    check_method,
    plan_export,
)
from ._progress import ExportProgress, format_bytes, peak_memory_mb
from ._readers import pick_reader
from ._sinks import Sinks
from ._sinks._format import format_for_path
from ._sinks._options import FORMATS, Format
from ._sinks._output import Target, check_target, is_stream, open_output, target_name
from ._sizing import DEFAULT_BATCH_BYTES
from ._source import resolve_source
from ._statement import check_sqlite_file
from ._strategy import shielded
from ._values import DEFAULT_ZERO_DATES, ZeroDates
from ._watchdog import DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:
    from ._jobs import JobReport
    from ._readers import Reader
    from ._sinks._output import Destination
    from ._source import Source
    from ._statement import TableOrStatement

__all__ = ["FORMATS", "METHODS", "ExportReport", "export", "format_for_path"]


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    ``bytes`` is the size of the output; ``method`` what read the rows: ``"copy"``
    (PostgreSQL's COPY), ``"cursor"`` (asyncpg's cursor, for Parquet when ADBC cannot
    connect), ``"stream"`` (:func:`rowstream.stream`) or ``"jobs"`` (N readers on one
    snapshot, ``export(..., jobs=N)``, whose report per partition is ``job``);
    ``peak_memory_mb`` the process's peak resident memory at the end (it includes whatever
    the process held before the export).
    """

    path: str
    format: str
    rows: int
    bytes: int
    seconds: float
    method: str
    peak_memory_mb: float
    job: JobReport | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: rows, seconds, rows/s, output size, peak memory."""
        jobs = f" with {self.job.jobs} jobs" if self.job is not None else ""
        return (
            f"exported {self.rows:,} rows to {self.path}{jobs} in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s), {format_bytes(self.bytes)}, "
            f"peak memory {self.peak_memory_mb:.0f} MB"
        )


async def export(
    source: Source,
    table_or_statement: TableOrStatement,
    path: Target,
    *,
    format: Format | None = None,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    compression: str | None = None,
    method: ExportMethod = "auto",
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
    ``.jsonl``, ``.ndjson``, ``.parquet``) unless given. A file appears only when complete: on
    an error or cancellation the target is untouched and the query is cancelled on the server.
    ``path`` may also be ``"-"`` (standard output) or any writable binary stream (an object
    with ``write(bytes)``, such as ``io.BytesIO``); both are written as the rows come, in any
    format (CSV unless ``format`` says otherwise), flushed and never closed.

    Values are written as PostgreSQL writes them: CSV as ``COPY ... WITH CSV HEADER``, JSONL
    values as ``to_jsonb()``, timestamps in UTC; in Parquet, ``numeric(p, s)`` is a decimal,
    and ``interval``, ``uuid``, ``json`` and unconstrained ``numeric`` are their PostgreSQL
    text (Parquet cannot store Arrow's month_day_nano interval). ``method="auto"`` uses COPY
    on PostgreSQL when rowstream opens the connection, and :func:`rowstream.stream` otherwise
    (``"stream"`` forces it, ``"copy"`` insists on COPY; ``batch_rows``/``batch_bytes`` apply
    to the stream). ``read_timeout`` bounds each wait for the database on every path, as in
    :func:`rowstream.stream`: on the COPY and ADBC paths each chunk of data pushes the
    deadline back, so only silence counts, and an export cut short says to run it again.

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

        buffer = io.BytesIO()
        await rowstream.export("sqlite:///shop.db", "orders", buffer, format="parquet")
    """
    started = time.perf_counter()
    fmt, compression = format_for_path(None if is_stream(path) else str(path), format, compression)
    options = ExportOptions(
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        read_timeout=read_timeout,
        infinity=infinity,
        nan=nan,
        zero_dates=zero_dates,
        text_columns=frozenset(text_columns or ()),
    )
    check_method(method)
    check_target(path)
    check_sqlite_file(source)
    resolved = resolve_source(source)
    try:
        plan = await plan_export(
            resolved,
            table_or_statement,
            format=fmt,
            method=method,
            where=where,
            columns=columns,
            options=options,
        )
        reader = pick_reader(plan, resolved)
        # gzip around text; Parquet compresses inside the file (its "gzip" is a page codec).
        whole_file = compression if fmt != "parquet" else None
        try:
            with ExportProgress(enabled=progress) as bar, open_output(path, whole_file) as out:
                rows = await run(reader, Sinks(fmt, out.out, compression), _Meter(bar, out))
        finally:
            await shielded(reader.aclose())
    finally:
        await shielded(resolved.aclose())
    return ExportReport(
        path=target_name(path),
        format=fmt,
        rows=rows,
        bytes=out.size,
        seconds=time.perf_counter() - started,
        method=reader.method,
        peak_memory_mb=peak_memory_mb(),
    )


async def run(reader: Reader, sinks: Sinks, progress: _Meter) -> int:
    """The pipeline: the reader's data into the sink; on any failure (or cancellation) the
    sink is aborted (no half-written Parquet footer) before the destination is discarded."""
    try:
        rows = await reader.read(sinks, progress)
        sinks.finish()
    except BaseException:
        sinks.abort()
        raise
    return rows


class _Meter:
    """Progress for readers: rows as they say, bytes as the destination counts them."""

    def __init__(self, bar: ExportProgress, out: Destination) -> None:
        self._bar = bar
        self._out = out
        self.enabled = bar.enabled

    def set_estimate(self, estimate: int | None) -> None:
        self._bar.set_estimate(estimate)

    def advance(self, rows: int) -> None:
        bar = self._bar
        bar.advance(rows=rows, nbytes=self._out.bytes - bar.bytes)
