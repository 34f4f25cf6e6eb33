"""``rowstream.export``: one reader into one file, or ``jobs=N`` readers on one snapshot.

Without ``jobs`` the export is :func:`rowstream._export.export` (one reader, one sink). With
``jobs=N`` it is a partitioned export (:func:`rowstream._jobs.export_dataset`):

- to a directory (an existing one, or a path ending with ``/``): the dataset itself, one part
  file per partition and a manifest (returns :class:`rowstream._jobs.JobReport`);
- to a file: the dataset is written into a hidden folder beside it
  (``.NAME.rowstream-parts/``), merged into the file atomically
  (:func:`rowstream._dataset.merge_parts`) and removed; ``resume=True`` carries on from that
  folder (returns :class:`rowstream.ExportReport` with ``method="jobs"`` and the job's report
  in ``job``).

The public function lives here, not in ``_export``, because each part of a partitioned
export is a single export (``_jobs`` imports ``_export``): the import graph keeps one
direction, export entry -> jobs -> single export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ._exceptions import ConfigurationError, RowstreamError, SinkError
from ._export import ExportReport
from ._export import export as export_one
from ._export_plan import ExportMethod, InfinityChoice, NanChoice
from ._sinks._options import Format
from ._sizing import DEFAULT_BATCH_BYTES
from ._values import DEFAULT_ZERO_DATES, ZeroDates
from ._watchdog import DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:
    from ._jobs import JobProgress, JobReport
    from ._sinks._output import Target
    from ._source import Source
    from ._statement import TableOrStatement

__all__ = ["export", "is_dataset_path", "parts_folder"]

#: The hidden folder beside ``FILE`` that holds its parts while ``jobs=N`` writes it.
PARTS_SUFFIX = ".rowstream-parts"


def is_dataset_path(path: str | os.PathLike[str]) -> bool:
    """A dataset's directory: an existing directory, or a path written with a trailing slash.

    >>> is_dataset_path("orders/")
    True
    >>> is_dataset_path("orders.parquet")
    False
    """
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def parts_folder(path: str | os.PathLike[str]) -> Path:
    """Where ``jobs=N`` keeps the parts of ``path`` until they are merged into it.

    >>> str(parts_folder("out/orders.csv"))
    'out/.orders.csv.rowstream-parts'
    """
    target = Path(path)
    return target.parent / f".{target.name}{PARTS_SUFFIX}"


@overload
async def export(
    source: Source,
    table_or_statement: TableOrStatement,
    path: Target,
    *,
    format: Format | None = ...,
    where: str | None = ...,
    columns: Sequence[str] | None = ...,
    batch_rows: int | None = ...,
    batch_bytes: int | None = ...,
    compression: str | None = ...,
    method: ExportMethod = ...,
    progress: bool = ...,
    zero_dates: ZeroDates = ...,
    text_columns: Sequence[str] | None = ...,
    read_timeout: float | None = ...,
    infinity: InfinityChoice = ...,
    nan: NanChoice = ...,
    jobs: None = ...,
    resume: bool = ...,
    partition_by: str | None = ...,
    min_partition_bytes: int | None = ...,
    on_progress: Callable[[JobProgress], None] | None = ...,
) -> ExportReport: ...


@overload
async def export(
    source: Source,
    table_or_statement: TableOrStatement,
    path: Target,
    *,
    format: Format | None = ...,
    where: str | None = ...,
    columns: Sequence[str] | None = ...,
    batch_rows: int | None = ...,
    batch_bytes: int | None = ...,
    compression: str | None = ...,
    method: ExportMethod = ...,
    progress: bool = ...,
    zero_dates: ZeroDates = ...,
    text_columns: Sequence[str] | None = ...,
    read_timeout: float | None = ...,
    infinity: InfinityChoice = ...,
    nan: NanChoice = ...,
    jobs: int,
    resume: bool = ...,
    partition_by: str | None = ...,
    min_partition_bytes: int | None = ...,
    on_progress: Callable[[JobProgress], None] | None = ...,
) -> ExportReport | JobReport: ...


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
    jobs: int | None = None,
    resume: bool = False,
    partition_by: str | None = None,
    min_partition_bytes: int | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
) -> ExportReport | JobReport:
    """Export a table or a query to ``path`` (CSV, JSON Lines or Parquet), atomically.

    Without ``jobs``, one reader writes the file or stream: see
    :func:`rowstream._export.export` for every option (formats, ``method``, ``zero_dates``,
    ``infinity``, ``nan``, ``text_columns``, ``read_timeout``); it returns an
    :class:`ExportReport`.

    ``jobs=N`` reads the table with N connections on one snapshot (PostgreSQL's exported
    snapshot, MariaDB's consistent snapshot; SQLite is read by one reader, and the report's
    plan note says so), split into partitions (block ranges, or key ranges of the primary key
    or of ``partition_by``; a nullable column adds a partition for its NULLs; none smaller
    than ``min_partition_bytes``, 16 MiB by default, so a small table gets fewer):

    - ``path`` a directory (existing, or ending with ``/``): a dataset, one part file per
      partition plus ``_rowstream_manifest.json``; returns a ``JobReport`` (``parts`` has a
      report per partition, ``warning`` says when the dataset is not one point in time);
    - ``path`` a file: the parts go to a hidden folder beside it
      (:func:`parts_folder`), are merged into the file atomically, and the folder is removed;
      returns an ``ExportReport`` with ``method="jobs"`` and the ``JobReport`` in ``job``.

    ``resume=True`` finishes what an interrupted ``jobs`` export left (a dataset, or a file's
    hidden folder): finished parts are kept, not rewritten. While the earlier snapshot is still
    held the result is exact; otherwise the report's ``warning`` says which parts come from
    which point in time. ``on_progress`` is called with the whole job's
    :class:`rowstream._jobs.JobProgress` after every part; ``progress=True`` draws it on a
    terminal. Standard output and streams take one reader only, and ``method`` picks a single
    export's reader (each part picks its own): both are refused with ``jobs``.

    Example::

        report = await rowstream.export(
            "postgresql://app@db/shop", "orders", "orders.parquet", where="status = 'paid'"
        )
        print(report.summary())

        dataset = await rowstream.export(
            "postgresql://app@db/shop", "orders", "exports/orders/", jobs=4
        )
        print(dataset.summary())  # exported 5,000,000 rows to exports/orders/ in 24 parts ...
    """
    if jobs is None:
        if resume or partition_by or on_progress or min_partition_bytes is not None:
            raise ConfigurationError(
                "resume, partition_by, min_partition_bytes and on_progress belong to a "
                "partitioned export: pass jobs=N"
            )
        return await export_one(
            source,
            table_or_statement,
            path,
            format=format,
            where=where,
            columns=columns,
            batch_rows=batch_rows,
            batch_bytes=batch_bytes,
            compression=compression,
            method=method,
            progress=progress,
            zero_dates=zero_dates,
            text_columns=text_columns,
            read_timeout=read_timeout,
            infinity=infinity,
            nan=nan,
        )
    options: dict[str, Any] = {}
    # Only what differs from the defaults goes to each part: a part with options is read by
    # the stream path, and the defaults keep PostgreSQL's COPY and ADBC readers.
    if zero_dates != DEFAULT_ZERO_DATES:
        options["zero_dates"] = zero_dates
    if infinity != "error":
        options["infinity"] = infinity
    if nan != "error":
        options["nan"] = nan
    if text_columns:
        options["text_columns"] = list(text_columns)
    if batch_rows is not None:
        options["batch_rows"] = batch_rows
    if batch_bytes not in (None, DEFAULT_BATCH_BYTES):  # None is the default too
        options["batch_bytes"] = batch_bytes
    return await export_jobs(
        source,
        table_or_statement,
        path,
        jobs=jobs,
        format=format,
        where=where,
        columns=columns,
        compression=compression,
        method=method,
        progress=progress,
        read_timeout=read_timeout,
        resume=resume,
        partition_by=partition_by,
        min_partition_bytes=min_partition_bytes,
        on_progress=on_progress,
        options=options,
    )


async def export_jobs(
    source: Source,
    table_or_statement: TableOrStatement,
    path: Target,
    *,
    jobs: int,
    format: Format | None,
    where: str | None,
    columns: Sequence[str] | None,
    compression: str | None,
    method: ExportMethod,
    progress: bool,
    read_timeout: float | None,
    resume: bool,
    partition_by: str | None,
    min_partition_bytes: int | None,
    on_progress: Callable[[JobProgress], None] | None,
    options: dict[str, Any],
) -> ExportReport | JobReport:
    """The partitioned export behind ``export(jobs=N)``: every argument checked before a
    directory is made or a connection opened."""
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.sql.selectable import TextualSelect

    from ._atomic import check_writable
    from ._sinks._format import format_for_path
    from ._statement import check_sqlite_file

    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigurationError(
            f"jobs must be a whole number of readers, at least 1, not {jobs!r}"
        )
    if min_partition_bytes is not None and min_partition_bytes < 1:
        raise ConfigurationError(
            f"min_partition_bytes must be positive, not {min_partition_bytes!r}"
        )
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path) == "-":
        raise ConfigurationError(
            "jobs= writes part files first: give a file or a directory, not standard output "
            "or a stream (without jobs=, one reader streams there)"
        )
    if not isinstance(source, (str, URL, AsyncEngine)):
        raise ConfigurationError(
            f"jobs= opens its own connections on one snapshot: pass a URL or an AsyncEngine, "
            f"not a {type(source).__name__}"
        )
    if method != "auto":
        raise ConfigurationError(
            f"method={method!r} picks a single export's reader; with jobs= each part picks its "
            "own (COPY on PostgreSQL): leave method out"
        )
    if isinstance(table_or_statement, TextualSelect):
        raise ConfigurationError("jobs= takes a table name, a Table, a select() or a text()")
    from ._jobs import _dialect_name, check_part_options

    dialect = _dialect_name(source)
    # Every part's options, checked once here rather than by the first part to run (and
    # batch sizes before PostgreSQL drops them below, as a single export refuses them too).
    check_part_options(dialect, read_timeout, options)
    check_sqlite_file(source)
    if dialect == "postgresql":
        # Parts on PostgreSQL are read by COPY, which batch sizes do not apply to (as in a
        # single export); passed on, they would force the slower stream path.
        options = {k: v for k, v in options.items() if k not in ("batch_rows", "batch_bytes")}
    dataset = is_dataset_path(path)
    target = Path(path)
    if dataset:
        fmt, compression = format_for_path(None, format or "parquet", compression)
        folder = target
    else:
        fmt, compression = format_for_path(str(target), format, compression)
        check_writable(target)
        folder = parts_folder(target)
        if folder.exists() and not resume:
            raise SinkError(
                f"an earlier jobs export of {str(target)!r} was interrupted (its parts are in "
                f"{str(folder)!r}): pass --resume (resume=True) to finish it, or remove that "
                "folder to start again"
            )
        if resume and not folder.exists():
            raise ConfigurationError(
                f"nothing to resume: no interrupted jobs export of {str(target)!r} (its parts "
                f"would be in {str(folder)!r}); leave out --resume"
            )
    report = await _run_dataset(
        source,
        table_or_statement,
        folder,
        jobs=jobs,
        fmt=fmt,
        compression=compression,
        where=where,
        columns=columns,
        partition_by=partition_by,
        min_partition_bytes=min_partition_bytes,
        resume=resume,
        read_timeout=read_timeout,
        progress=progress,
        on_progress=on_progress,
        options=options,
    )
    if dataset:
        return report
    import asyncio

    from ._dataset import merge_parts
    from ._progress import peak_memory_mb

    started = time.perf_counter() - report.seconds
    rows, size = await asyncio.to_thread(merge_parts, folder, target)
    shutil.rmtree(folder, ignore_errors=True)
    return ExportReport(
        path=str(target),
        format=fmt,
        rows=rows,
        bytes=size,
        seconds=time.perf_counter() - started,
        method="jobs",
        peak_memory_mb=peak_memory_mb(),
        job=report,
    )


async def _run_dataset(
    source: Any,
    table: Any,
    folder: Path,
    *,
    jobs: int,
    fmt: str,
    compression: str | None,
    where: str | None,
    columns: Sequence[str] | None,
    partition_by: str | None,
    min_partition_bytes: int | None,
    resume: bool,
    read_timeout: float | None,
    progress: bool,
    on_progress: Callable[[JobProgress], None] | None,
    options: dict[str, Any],
) -> JobReport:
    """``export_dataset`` with the job's progress bar; a folder this call made is removed
    again when the export fails before its first manifest (nothing is left for a refusal)."""
    from ._jobs import export_dataset
    from ._partition import DEFAULT_MIN_PARTITION_BYTES
    from ._progress import JobProgressBar

    made = not _exists(folder)
    with JobProgressBar(enabled=progress) as bar:

        def report_progress(state: JobProgress) -> None:
            bar.update(state)
            if on_progress is not None:
                on_progress(state)

        try:
            return await export_dataset(
                source,
                table,
                folder,
                jobs=jobs,
                format=fmt,
                compression=compression,
                where=where,
                columns=columns,
                partition_by=partition_by,
                min_partition_bytes=min_partition_bytes or DEFAULT_MIN_PARTITION_BYTES,
                resume=resume,
                read_timeout=read_timeout,
                progress=report_progress,
                # On a terminal the bar moves as the parts read rows; elsewhere they do not
                # count them.
                live=bar.update if bar.live else None,
                **options,
            )
        except BaseException:
            if made:
                _remove_if_unstarted(folder)
            raise


def _exists(path: Path) -> bool:
    return path.exists()


def _remove_if_unstarted(folder: Path) -> None:
    """Remove a dataset folder this call made when it holds no finished part (the export was
    refused, or failed before a part was done): nothing is left to resume, and a folder left
    behind would make the next run ask for --resume."""
    from ._dataset import read_manifest

    try:
        manifest = read_manifest(folder)
    except RowstreamError:
        return
    if folder.is_dir() and (manifest is None or not manifest.done):
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def kept_parts_hint(folder: Path) -> str | None:
    """For the CLI: how many parts an interrupted job keeps for ``--resume``, if any."""
    from ._dataset import read_manifest

    try:
        manifest = read_manifest(folder) if folder.is_dir() else None
    except RowstreamError:
        return None
    if manifest is None or not manifest.done:
        return None
    return f"{len(manifest.done)} of {len(manifest.parts)} parts are kept in {str(folder)!r}"
