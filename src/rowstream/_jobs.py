"""Partitioned exports: N readers on one snapshot, pulling partitions from a queue.

Data path: plan (:mod:`rowstream._partition`) -> snapshot (:mod:`rowstream._snapshot`) ->
N workers, each one connection at the snapshot, taking the next partition from a queue (many
more partitions than workers, so a slow one does not hold the rest up) -> one part file per
partition (:func:`write_part`) -> manifest after each part (:mod:`rowstream._dataset`) ->
report.

:func:`write_part` is the one place that turns a partition into a file. A partition is one
more export plan (:func:`rowstream._export_plan.plan_export` with the worker's connection and
the snapshot), read by the reader a single export of the same rows uses
(:func:`rowstream._readers.pick_reader`) into the same sinks, so each part holds exactly what
a single export writes (exact types, PostgreSQL's own text, MariaDB's checks). On PostgreSQL
CSV and JSONL are COPY on the worker's connection, at the snapshot; Parquet is ADBC's binary
COPY on a connection that joins the snapshot and is verified against the coordinator's point
(asyncpg's cursor on the worker's connection when ADBC cannot connect). MariaDB and SQLite
stream on the worker's connection. N workers share one memory budget (``writers``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._dataset import (
    Manifest,
    PartRecord,
    check_same_export,
    finished_parts,
    now,
    part_name,
    point_in_time_warning,
    prepare_directory,
    sha256_of,
    write_manifest,
)
from ._exceptions import (
    ConfigurationError,
    ConnectionLostError,
    ResumeError,
    RowstreamError,
)
from ._export_plan import ExportOptions, check_method, check_text_columns
from ._guard import check_where
from ._partition import (
    DEFAULT_MIN_PARTITION_BYTES,
    DEFAULT_PARTITIONS_PER_JOB,
    Partition,
    PartitionPlan,
    pg_filenode,
    plan_partitions,
    plan_statement,
    split_name,
)
from ._progress import format_bytes, peak_memory_mb
from ._snapshot import Snapshot, SnapshotInfo
from ._source import create_engine, mask_url, split_url
from ._strategy import shielded
from ._translate import raise_translated
from ._watchdog import DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:
    from ._readers import Progress

__all__ = [
    "JobProgress",
    "JobReport",
    "PartMeter",
    "PartReport",
    "check_part_options",
    "export_dataset",
    "write_part",
]

DatasetFormat = str
TableOrSelect = str | sa.Table | sa.Select[Any] | sa.TextClause
#: Times one part is read again after its connection dropped (PostgreSQL, snapshot held).
PART_RETRIES = 2
#: N Parquet writers share one row-group budget, but none gets row groups smaller than this.
MIN_ROW_GROUP_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PartReport:
    """What one partition wrote (``skipped``: done by an earlier run, not rewritten)."""

    id: int
    file: str
    rows: int
    bytes: int
    seconds: float
    sha256: str
    skipped: bool = False
    #: Times the part was read again on a new connection after its connection dropped.
    retries: int = 0


@dataclass
class JobProgress:
    """Progress of the whole job, handed to ``progress=`` after every part (and to ``live=``
    as running parts read rows).

    ``rows`` and ``bytes`` count finished parts; ``reading`` the rows that running parts have
    read so far, counted only for ``live=`` (0 otherwise); ``rows_seen`` is both.
    """

    parts_total: int
    parts_done: int = 0
    rows: int = 0
    bytes: int = 0
    estimated_rows: int | None = None
    started: float = field(default_factory=time.perf_counter)
    reading: int = 0

    @property
    def rows_seen(self) -> int:
        return self.rows + self.reading

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rows_per_second(self) -> float:
        return self.rows_seen / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left: from the row estimate when there is one, else from the parts."""
        if self.parts_done >= self.parts_total:
            return 0.0
        rate, seen = self.rows_per_second, self.rows_seen
        if self.estimated_rows and rate > 0 and seen < self.estimated_rows:
            return (self.estimated_rows - seen) / rate
        if self.parts_done == 0:
            return None
        return self.elapsed * (self.parts_total - self.parts_done) / self.parts_done

    def line(self) -> str:
        eta = self.eta
        left = f", ETA {eta:.0f} s" if eta is not None else ""
        return (
            f"{self.parts_done}/{self.parts_total} parts, {self.rows_seen:,} rows "
            f"({self.rows_per_second:,.0f} rows/s), {format_bytes(self.bytes)}{left}"
        )


@dataclass(frozen=True)
class JobReport:
    """What a partitioned export wrote. ``exact``: every part comes from one consistent
    snapshot; otherwise ``warning`` says how it is not."""

    directory: str
    format: str
    rows: int
    bytes: int
    seconds: float
    jobs: int
    plan: str
    parts: tuple[PartReport, ...]
    snapshot: SnapshotInfo
    exact: bool
    warning: str | None
    peak_memory_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        skipped = sum(p.skipped for p in self.parts)
        kept = f" ({skipped} kept from the earlier run)" if skipped else ""
        return (
            f"exported {self.rows:,} rows to {self.directory} in {len(self.parts)} parts{kept} "
            f"with {self.jobs} jobs in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s), "
            f"{format_bytes(self.bytes)}, peak memory {self.peak_memory_mb:.0f} MB"
        )


async def write_part(
    conn: AsyncConnection,
    table: TableOrSelect,
    partition: Partition,
    path: Path,
    *,
    format: str,
    compression: str | None,
    where: str | None,
    columns: Sequence[str] | None,
    read_timeout: float | None,
    options: dict[str, Any],
    snapshot: SnapshotInfo | None = None,
    writers: int = 1,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Write ``partition`` of ``table`` to ``path`` (atomically), reading on ``conn`` inside
    its transaction (at the snapshot); return (rows, bytes). ``writers`` parts are written at
    once: each gets that share of the memory budget (Parquet row groups, ADBC's queue).
    ``progress`` hears of the rows as the reader reads them (by default nothing counts them).

    The one adapter between the runner and the export code (see the module docstring): the
    partition is one more export plan (its key range in the statement, the snapshot in
    ``ExportPlan.snapshot``), read by the reader a single export of the same rows would use.
    """
    from ._export_plan import plan_export
    from ._readers import pick_reader
    from ._sinks import Sinks
    from ._sinks._format import format_for_path
    from ._sinks._output import open_output
    from ._source import ResolvedSource

    fmt, compression = format_for_path(None, format, compression)
    settings = dict(options)
    method = settings.pop("method", "auto")
    what: Any = table
    condition: str | None = where
    if isinstance(table, sa.Select):
        if partition.kind != "all":
            # Filtered outside the statement: its own WHERE, GROUP BY, LIMIT stay as written.
            sub = table.subquery("rowstream_part")
            assert partition.column is not None
            what = sa.select(*sub.c).where(partition.clause(sub.c[partition.column]))
    else:
        condition = partition.narrowed(where, conn.dialect)
    resolved = ResolvedSource(conn.engine, borrowed=conn)
    plan = await plan_export(
        resolved,
        what,
        format=fmt,
        method=method,
        where=condition,
        columns=columns,
        options=_export_options(read_timeout, settings),
        snapshot=snapshot,
        share=writers,
    )
    reader = pick_reader(plan, resolved)
    # gzip around text; Parquet compresses inside the file (its "gzip" is a page codec).
    whole_file = compression if fmt != "parquet" else None
    row_group = None
    if fmt == "parquet":  # pyarrow loads for Parquet only (about 40 MB)
        from ._sinks._parquet import ROW_GROUP_BYTES

        row_group = max(MIN_ROW_GROUP_BYTES, ROW_GROUP_BYTES // max(1, writers))
    try:
        with open_output(path, whole_file) as out:
            sinks = Sinks(fmt, out.out, compression, row_group_bytes=row_group)
            # The pipeline of rowstream.export (_export.run); the job draws the progress.
            try:
                rows = await reader.read(sinks, progress or _QUIET)
                sinks.finish()
            except BaseException:
                sinks.abort()
                raise
    finally:
        await shielded(reader.aclose())
    return rows, out.size


def check_part_options(
    dialect: str, read_timeout: float | None, options: Mapping[str, Any]
) -> ExportOptions:
    """Refuse an unknown or invalid part option in one line, before a directory is made or a
    connection opened (each part would only find it once the job runs); returns the options
    as each part's plan holds them.

    >>> check_part_options("sqlite", 30, {"zero_dates": "null"}).zero_dates
    'null'
    """
    settings = dict(options)
    check_method(settings.pop("method", "auto"))
    checked = _export_options(read_timeout, settings)
    check_text_columns(checked, dialect)
    return checked


def _export_options(read_timeout: float | None, options: dict[str, Any]) -> ExportOptions:
    """``export_dataset``'s ``**options`` as the plan holds them (rowstream.export's names)."""
    unknown = sorted(set(options) - _EXPORT_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown export option {unknown[0]!r}: choose from "
            + ", ".join(sorted(_EXPORT_OPTIONS))
        )
    if "text_columns" in options:
        names = options["text_columns"] or ()
        if isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(f"text_columns must be a list of column names, not {names!r}")
        options = {**options, "text_columns": frozenset(names)}
    return ExportOptions(read_timeout=read_timeout, **options)


_EXPORT_OPTIONS = frozenset(
    ["batch_rows", "batch_bytes", "infinity", "nan", "zero_dates", "text_columns"]
)


class _Quiet:
    """Progress for a part's reader when nothing shows rows as they come: the reader does
    not count them (counting costs a pass over COPY's bytes)."""

    enabled = False

    def set_estimate(self, estimate: int | None) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


_QUIET = _Quiet()


class PartMeter:
    """Progress for a running part's reader: its rows go into the whole job's ``reading``
    as they are read, and ``live`` is told (readers call it on the event loop's thread,
    ADBC's batches too). The job's estimate is the plan's: a part's own is ignored.

    Example::

        meter = PartMeter(state, bar.update)
        rows, size = await write_part(..., progress=meter)
        meter.finish()  # its rows are the part's now: state.rows += rows
    """

    enabled = True

    def __init__(self, state: JobProgress, live: Callable[[JobProgress], None]) -> None:
        self._state = state
        self._live = live
        self.rows = 0

    def set_estimate(self, estimate: int | None) -> None:
        pass

    def advance(self, rows: int) -> None:
        self.rows += rows
        self._state.reading += rows
        self._live(self._state)

    def finish(self) -> None:
        """Take this part's rows out of ``reading`` (it finished, or is read again)."""
        self._state.reading -= self.rows
        self.rows = 0


def _dropped(exc: BaseException) -> bool:
    """The part failed because its connection dropped (a stream on a borrowed connection
    reports it as a ResumeError caused by the drop)."""
    return isinstance(exc, ConnectionLostError) or isinstance(exc.__cause__, ConnectionLostError)


def _statement_text(
    engine: AsyncEngine, table: TableOrSelect, where: str | None, columns: Sequence[str] | None
) -> str:
    """The statement the dataset holds the rows of, as the manifest records it."""
    if isinstance(table, (sa.Select, sa.TextClause)):
        if where is not None or columns is not None:
            raise ConfigurationError(
                "where= and columns= narrow a table: with a statement, put them in it"
            )
        try:
            compiled = table.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        except Exception as exc:
            raise ConfigurationError(
                f"cannot render this statement: {str(exc).splitlines()[0]}; use literal values "
                "instead of bound parameters"
            ) from None
        return str(compiled)
    if isinstance(table, sa.Table):
        schema, name = table.schema, table.name
    else:
        schema, name = split_name(table)
    source = sa.table(name, *(sa.column(c) for c in columns or ()), schema=schema)
    selected: list[Any] = list(source.c) if columns else [sa.literal_column("*")]
    query = sa.select(*selected).select_from(source)
    if where is not None:
        query = query.where(sa.text(f"({where})"))
    return str(query.compile(dialect=engine.dialect))


async def export_dataset(
    source: str | URL | AsyncEngine,
    table: TableOrSelect,
    directory: str | Path,
    *,
    jobs: int = 2,
    format: DatasetFormat = "parquet",
    compression: str | None = None,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    partition_by: str | None = None,
    resume: bool = False,
    per_job: int = DEFAULT_PARTITIONS_PER_JOB,
    min_partition_bytes: int = DEFAULT_MIN_PARTITION_BYTES,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    progress: Callable[[JobProgress], None] | None = None,
    on_snapshot: Callable[[Snapshot], Awaitable[None]] | None = None,
    live: Callable[[JobProgress], None] | None = None,
    **options: Any,
) -> JobReport:
    """Export ``table`` into ``directory`` as a dataset: a part file per partition, read by
    ``jobs`` connections on one snapshot, and a manifest.

    ``table`` is a name (``"orders"``, ``"sales.orders"``), a ``Table`` or a ``select()``; a
    statement is split by ``partition_by`` (one of its columns), or read by one reader.

    ``resume=True`` finishes a dataset an earlier run left: parts already done are kept as
    they are (not rewritten), the others are read again. If the earlier snapshot is still
    held, the result is exact; otherwise the new parts come from a new snapshot, the manifest
    records which parts come from which, and ``JobReport.warning`` says so.

    ``options`` go to :func:`rowstream.export` for each part (``zero_dates``, ``infinity``, ...).
    ``on_snapshot`` is awaited once the snapshot is held, before any part is read.
    ``progress`` is called after every part; ``live`` also as running parts read rows (each
    batch, or each chunk of COPY's bytes: every part then counts its rows, a pass over those
    bytes; a bar throttles its redraws), so that a bar moves between parts.

    Example::

        report = await export_dataset(
            "postgresql://app@db/shop", "orders", "orders/", jobs=4, format="parquet"
        )
        print(report.summary())  # exported 5,000,000 rows to orders/ in 24 parts ...
    """
    started = time.perf_counter()
    if jobs < 1:
        raise ConfigurationError(f"jobs must be at least 1, not {jobs}")
    # Refused before the directory is made or anything is sent.
    part_name(0, format, compression)
    dialect = _dialect_name(source)
    check_part_options(dialect, read_timeout, options)
    if where is not None:
        check_where(where, dialect)
    folder = Path(directory)
    manifest = prepare_directory(folder, resume=resume)
    owns = not isinstance(source, AsyncEngine)
    engine = (
        source
        if isinstance(source, AsyncEngine)
        # Workers, the coordinator, and the column probe each export runs on the side.
        else create_engine(source, pool_size=2 * jobs + 2, max_overflow=jobs)
    )
    try:
        database = mask_url(engine.url)
        statement = _statement_text(engine, table, where, columns)
        if manifest is None:
            plan = await _plan(engine, table, jobs, partition_by, per_job, min_partition_bytes)
            manifest = Manifest(
                database=database,
                table=_label(table),
                statement=statement,
                format=format,
                compression=compression,
                plan={
                    "method": plan.method,
                    "column": plan.column,
                    "note": plan.note,
                    "filenode": plan.filenode,
                },
                parts=[
                    PartRecord(p.id, part_name(p.id, format, compression), p.bounds())
                    for p in plan.partitions
                ],
            )
            estimate = plan.estimated_rows
        else:
            check_same_export(manifest, database=database, statement=statement, fmt=format)
            await _check_not_rewritten(engine, table, manifest)
            compression = manifest.compression
            estimate = None
        return await _run(
            engine,
            table,
            folder,
            manifest,
            jobs,
            where,
            columns,
            compression,
            read_timeout,
            progress,
            on_snapshot,
            options,
            started,
            estimate,
            live,
        )
    finally:
        if owns:
            await shielded(engine.dispose())


def _dialect_name(source: str | URL | AsyncEngine) -> str:
    if isinstance(source, AsyncEngine):
        return source.dialect.name
    return split_url(source)[1]


def _label(table: TableOrSelect) -> str | None:
    """The table's name for the manifest and messages (None for a statement)."""
    if isinstance(table, (sa.Select, sa.TextClause)):
        return None
    if isinstance(table, sa.Table):
        return table.fullname
    return table


async def _check_not_rewritten(
    engine: AsyncEngine, table: TableOrSelect, manifest: Manifest
) -> None:
    """ctid ranges hold only while the table keeps its file: refuse to resume after a rewrite."""
    label = _label(table)
    if manifest.plan.get("method") != "ctid" or label is None:
        return
    async with engine.connect() as conn:
        current = await pg_filenode(conn, label)
    if current != manifest.plan.get("filenode"):
        raise ResumeError(
            f"cannot resume: {label!r} was rewritten since the dataset was started (VACUUM "
            "FULL, CLUSTER or ALTER TABLE moved every row), so the remaining block ranges no "
            "longer match the finished parts; export again into an empty directory",
            table=label,
        )


async def _plan(
    engine: AsyncEngine,
    table: TableOrSelect,
    jobs: int,
    partition_by: str | None,
    per_job: int,
    min_bytes: int,
) -> PartitionPlan:
    try:
        async with engine.connect() as conn:
            if isinstance(table, (sa.Select, sa.TextClause)):
                return await plan_statement(
                    conn, table, jobs=jobs, partition_by=partition_by, per_job=per_job
                )
            return await plan_partitions(
                conn,
                _label(table) or "",
                jobs=jobs,
                partition_by=partition_by,
                per_job=per_job,
                min_bytes=min_bytes,
            )
    except RowstreamError:
        raise
    except Exception as exc:
        raise_translated(exc, url=engine.url)


async def _run(
    engine: AsyncEngine,
    table: TableOrSelect,
    folder: Path,
    manifest: Manifest,
    jobs: int,
    where: str | None,
    columns: Sequence[str] | None,
    compression: str | None,
    read_timeout: float | None,
    progress: Callable[[JobProgress], None] | None,
    on_snapshot: Callable[[Snapshot], Awaitable[None]] | None,
    options: dict[str, Any],
    started: float,
    estimate: int | None,
    live: Callable[[JobProgress], None] | None,
) -> JobReport:
    done = finished_parts(folder, manifest)
    kept = [
        PartReport(p.id, p.file, p.rows or 0, p.bytes or 0, 0.0, p.sha256 or "", skipped=True)
        for p in manifest.parts
        if p.id in done
    ]
    for part in manifest.parts:
        if part.id not in done and part.state == "done":
            part.state = "pending"  # its file is gone or not whole: read it again
    pending = [p for p in manifest.parts if p.id not in done]
    # Reuse the earlier snapshot when something still holds it (resume, exact).
    earlier = manifest.snapshots[-1].get("id") if manifest.snapshots else None
    workers = max(1, min(jobs, len(pending)))
    state = JobProgress(len(manifest.parts), len(done), manifest.rows, estimated_rows=estimate)
    written: list[PartReport] = []
    async with Snapshot(engine, sessions=workers, existing=earlier) as snap:
        if snap.reused:
            index = len(manifest.snapshots) - 1
        else:
            manifest.snapshots.append(snap.info.as_dict())
            index = len(manifest.snapshots) - 1
        write_manifest(folder, manifest)
        if on_snapshot is not None:
            await on_snapshot(snap)
        queue: asyncio.Queue[PartRecord] = asyncio.Queue()
        for part in pending:
            queue.put_nowait(part)

        async def worker() -> None:
            conn = await snap.join()
            try:
                while True:
                    try:
                        part = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    t0 = time.perf_counter()
                    part.started_at = now()
                    path = folder / part.file
                    attempt = 0
                    meter = PartMeter(state, live) if live is not None else None
                    while True:
                        try:
                            rows, size = await write_part(
                                conn,
                                table,
                                part.partition(),
                                path,
                                format=manifest.format,
                                compression=compression,
                                where=where,
                                columns=columns,
                                read_timeout=read_timeout,
                                options=options,
                                snapshot=snap.info,
                                writers=workers,
                                progress=meter,
                            )
                            break
                        except (ConnectionLostError, ResumeError) as exc:
                            if meter is not None:
                                meter.finish()  # read again from its first row, or failed
                            if not _dropped(exc):
                                raise
                            # While the coordinator holds the snapshot, a new connection
                            # joins it and the part is read again: still exact. (MariaDB's
                            # sessions cannot be joined later: the error stands there.)
                            attempt += 1
                            if not snap.rejoinable or attempt > PART_RETRIES:
                                raise
                            await snap.leave(conn)
                            conn = await snap.join()
                    digest = await asyncio.to_thread(sha256_of, path)
                    part.state, part.rows, part.bytes, part.sha256 = "done", rows, size, digest
                    part.snapshot, part.finished_at = index, now()
                    write_manifest(folder, manifest)
                    report = PartReport(
                        part.id,
                        part.file,
                        rows,
                        size,
                        time.perf_counter() - t0,
                        digest,
                        False,
                        attempt,
                    )
                    written.append(report)
                    if meter is not None:
                        meter.finish()
                    state.parts_done += 1
                    state.rows += rows
                    state.bytes += size
                    if progress is not None:
                        progress(state)
                    if live is not None:
                        live(state)
            finally:
                await snap.leave(conn)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            # One line for the caller: the first error, rowstream's own when there is one.
            first = next(
                (e for e in failed.exceptions if isinstance(e, RowstreamError)),
                failed.exceptions[0],
            )
            raise first from None
        info = snap.info
    return finish_job(folder, manifest, [*kept, *written], started, workers, info)


def finish_job(
    folder: Path,
    manifest: Manifest,
    parts: list[PartReport],
    started: float,
    jobs: int,
    snapshot: SnapshotInfo,
) -> JobReport:
    """Mark the dataset complete and report it (the local runner's and Celery's last step)."""
    manifest.state = "complete"
    write_manifest(folder, manifest)
    warning = point_in_time_warning(manifest)
    ordered = tuple(sorted(parts, key=lambda p: p.id))
    return JobReport(
        directory=str(folder),
        format=manifest.format,
        rows=sum(p.rows for p in ordered),
        bytes=sum(p.bytes for p in ordered),
        seconds=time.perf_counter() - started,
        jobs=jobs,
        plan=str(manifest.plan.get("method")),
        parts=ordered,
        snapshot=snapshot,
        exact=warning is None,
        warning=warning,
        peak_memory_mb=peak_memory_mb(),
    )
