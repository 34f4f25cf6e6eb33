"""rowstream export: a table or query into CSV, JSON Lines or Parquet, atomically.

rowstream export postgresql://app@db/shop --table sales.orders -o orders.parquet
rowstream export mysql://root@db/shop --query "SELECT id, total FROM orders" -o - --format jsonl
rowstream export postgresql://app@db/shop --table orders -o - --format parquet > orders.parquet

N readers on one snapshot (PostgreSQL, MariaDB; SQLite is read by one):
rowstream export postgresql://app@db/shop --table orders --jobs 4 -o orders.parquet
rowstream export postgresql://app@db/shop --table orders --jobs 4 -o exports/orders/
rowstream export postgresql://app@db/shop --table orders --jobs 4 -o exports/orders/ --resume
rowstream export postgresql://app@db/shop --table orders --jobs 8 -o /shared/orders/ --celery

-o DIR/ (a trailing slash, or an existing directory) writes a dataset: one part file per
partition and _rowstream_manifest.json. -o FILE with --jobs writes the parts into a hidden
folder beside FILE (.FILE.rowstream-parts/), merges them into FILE and removes the folder;
--resume carries on from a dataset or that folder, keeping the parts already written.
"""

# This docstring is the command's --help description: plain text, no markup. The parser needs
# only light modules; run() imports SQLAlchemy and the export machinery, and pyarrow loads only
# for Parquet (see rowstream._cli).

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli import loading
from ._exceptions import ConfigurationError, RowstreamError
from ._sinks._options import COMPRESSIONS, FORMATS, INFINITY_CHOICES, NAN_CHOICES
from ._values import DEFAULT_ZERO_DATES, ZERO_DATES


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a table or query to CSV, JSON Lines or Parquet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="database URL, e.g. postgresql://user@host/db")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", metavar="NAME", help="table to export: table or schema.table")
    what.add_argument("--query", metavar="SQL", help="a SELECT to export")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="output file, or - for stdout (any format, Parquet too)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: from the suffix .csv, .csv.gz, .jsonl, .ndjson, .parquet)",
    )
    parser.add_argument("--where", metavar="EXPR", help="SQL condition on the table's rows")
    parser.add_argument("--columns", metavar="A,B,C", help="columns of the table to export")
    size = parser.add_mutually_exclusive_group()
    # COPY sends rows as they come; batches size the generic path (MariaDB, SQLite).
    size.add_argument(
        "--batch-rows", type=int, metavar="N", help="rows per batch (when not using COPY)"
    )
    size.add_argument(
        "--batch-bytes",
        metavar="SIZE",
        help="bytes per batch, e.g. 4MB, the default (when not using COPY)",
    )
    parser.add_argument(
        "--compression",
        choices=sorted({*COMPRESSIONS, "gzip", "none"}),
        help="zstd (Parquet's default), snappy, gzip, brotli, lz4 or none; gzip for CSV/JSONL",
    )
    parser.add_argument(
        "--zero-dates",
        choices=ZERO_DATES,
        default=DEFAULT_ZERO_DATES,
        help="MariaDB's zero dates (0000-00-00): refuse them (the default), write NULL, or "
        "write the server's text (the column is then text in Parquet)",
    )
    parser.add_argument(
        "--text-columns",
        metavar="A,B",
        help="columns written to Parquet as text (SQLite columns that mix storage classes)",
    )
    parser.add_argument(
        "--infinity",
        choices=INFINITY_CHOICES,
        default="error",
        help="PostgreSQL to Parquet: infinity and instants past 294247 in dates and timestamps "
        "stop the export (error, the default), or are written as null, clamped to the type's "
        "extremes (DuckDB reads them as infinity), or the column as text",
    )
    parser.add_argument(
        "--nan",
        choices=NAN_CHOICES,
        default="error",
        help="PostgreSQL to Parquet: NaN in numeric(p, s) stops the export (error, the "
        "default), or is written as null, or the column as text",
    )
    jobs = parser.add_argument_group("partitioned export (N readers on one snapshot)")
    jobs.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="read with N connections on one snapshot, partition by partition",
    )
    jobs.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted --jobs export (keeps the parts already written)",
    )
    jobs.add_argument(
        "--partition-by",
        metavar="COLUMN",
        help="cut partitions on this column (default: PostgreSQL's blocks, or the primary key)",
    )
    jobs.add_argument(
        "--min-partition-size",
        metavar="SIZE",
        help="smallest partition worth a reader, e.g. 64MB (default 16MB: a small table gets "
        "fewer partitions)",
    )
    jobs.add_argument(
        "--celery",
        action="store_true",
        help="write the parts with Celery workers (PostgreSQL, -o DIR/; pip install "
        "'rowstream[celery]'; workers: celery -A rowstream.celery worker)",
    )
    jobs.add_argument(
        "--broker",
        metavar="URL",
        help="Celery broker for --celery (default: $ROWSTREAM_BROKER_URL, else local RabbitMQ)",
    )
    jobs.add_argument("--queue", metavar="NAME", help="Celery queue for --celery's tasks")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="with --jobs: a progress line per finished part even when stderr is not a "
        "terminal, and the summary",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="with --jobs: a line per partition after the summary",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    if args.query is not None and (args.where is not None or args.columns is not None):
        raise ConfigurationError(
            "--where and --columns narrow a --table: with --query, put them in the SQL"
        )
    columns = _names("--columns", args.columns)
    text_columns = _names("--text-columns", args.text_columns)
    with loading():
        partitioned = _partitioned(args)
    if partitioned:
        return await _run_jobs(args, columns, text_columns)
    with loading():
        import sqlalchemy as sa

        from ._export import export
        from ._readers import preload
        from ._sinks._format import format_for_path
        from ._sizing import parse_size
        from ._source import resolve_url

        # What this export's reader needs, imported while the collector is paused: pyarrow
        # and ADBC for Parquet only, rowstream.stream only off PostgreSQL's COPY.
        fmt, _compression = format_for_path(args.output, args.format, args.compression)
        url = resolve_url(args.url)
        preload(url.get_backend_name(), fmt)
        # The dialect and its driver (asyncpg, aiomysql...), which creating the engine imports.
        url.get_dialect().import_dbapi()
        if fmt == "parquet":
            from ._arrow import use_lean_memory_pool

    if fmt == "parquet":
        # Parquet writers allocate from pyarrow's default pool; in our own process it can be
        # the leaner one (see rowstream._arrow.lean_memory_pool).
        use_lean_memory_pool()
    target: Any = args.table if args.table is not None else sa.text(args.query)
    if args.query is not None and not args.query.strip():
        raise ConfigurationError("--query is empty: give a SELECT")
    report = await export(
        args.url,
        target,
        args.output,
        format=args.format,
        where=args.where,
        columns=columns,
        batch_rows=args.batch_rows,
        batch_bytes=parse_size(args.batch_bytes) if args.batch_bytes else None,
        compression=args.compression,
        progress=not args.quiet,
        zero_dates=args.zero_dates,
        text_columns=text_columns,
        infinity=args.infinity,
        nan=args.nan,
    )
    if not args.quiet and sys.stderr.isatty():
        print(report.summary(), file=sys.stderr)
    return 0


def _partitioned(args: argparse.Namespace) -> bool:
    """Whether this is a --jobs export; every option that needs one is refused without it."""
    from ._export_jobs import is_dataset_path

    if args.jobs is None:
        needs = [
            name
            for name, given in (
                ("--resume", args.resume),
                ("--partition-by", args.partition_by is not None),
                ("--min-partition-size", args.min_partition_size is not None),
                ("--celery", args.celery),
                ("--broker", args.broker is not None),
                ("--queue", args.queue is not None),
            )
            if given
        ]
        if needs:
            raise ConfigurationError(f"{' and '.join(needs)} need --jobs N (N readers)")
        if args.output != "-" and is_dataset_path(args.output):
            raise ConfigurationError(
                f"{args.output!r} is a directory: a dataset is read by N connections, add "
                "--jobs N; or give a file name"
            )
        return False
    if args.jobs < 1:
        raise ConfigurationError(f"--jobs must be at least 1, not {args.jobs}")
    if args.output == "-":
        # The parts are files before they are one output: standard output could only get
        # them after the whole job, through a temporary copy that --resume cannot find again.
        # One reader streams to a pipe at the pipe's pace, which N readers would not beat.
        raise ConfigurationError(
            "--jobs writes part files, not a stream: give -o FILE or -o DIR/, or leave out "
            "--jobs to stream to standard output"
        )
    if args.celery:
        if not is_dataset_path(args.output):
            raise ConfigurationError(
                "--celery writes a dataset that workers and this command share: give -o DIR/ "
                "(a directory every worker reaches at the same path)"
            )
        if args.query is not None:
            raise ConfigurationError("--celery exports a --table (workers plan by its key)")
        extras = [
            name
            for name, given in (
                ("--batch-rows", args.batch_rows is not None),
                ("--batch-bytes", args.batch_bytes is not None),
                ("--text-columns", args.text_columns is not None),
                ("--infinity", args.infinity != "error"),
                ("--nan", args.nan != "error"),
                ("--zero-dates", args.zero_dates != DEFAULT_ZERO_DATES),
            )
            if given
        ]
        if extras:
            raise ConfigurationError(
                f"{', '.join(extras)} cannot go to --celery's workers (they read PostgreSQL "
                "with COPY and ADBC only): leave them out, or drop --celery"
            )
    elif args.broker is not None or args.queue is not None:
        raise ConfigurationError("--broker and --queue are for --celery")
    return True


async def _run_jobs(
    args: argparse.Namespace, columns: list[str] | None, text_columns: list[str] | None
) -> int:
    """--jobs N: N readers on one snapshot into a dataset, or merged into one file."""
    from pathlib import Path

    from ._allocators import lean_for_jobs
    from ._cli import USER_ARROW_POOL

    # Before pyarrow loads and the parts' threads start (see rowstream._allocators).
    lean_for_jobs(user_pool=USER_ARROW_POOL)
    with loading():
        import sqlalchemy as sa

        from ._export_jobs import export, is_dataset_path, kept_parts_hint, parts_folder
        from ._sinks._format import format_for_path
        from ._sizing import parse_size
        from ._source import resolve_url

        dataset = is_dataset_path(args.output)
        fmt = args.format or ("parquet" if dataset else None)
        fmt, _compression = format_for_path(None if dataset else args.output, fmt, args.compression)
        url = resolve_url(args.url)
        url.get_dialect().import_dbapi()

    show = not args.quiet and (sys.stderr.isatty() or args.progress or args.verbose)
    lines = not args.quiet and args.progress and not sys.stderr.isatty()

    def on_progress(state: Any) -> None:
        if lines:
            print(f"rowstream: {state.line()}", file=sys.stderr, flush=True)

    if args.celery:
        report: Any = await _run_celery(args, fmt, columns, on_progress)
        job = report
    else:
        if args.query is not None and not args.query.strip():
            raise ConfigurationError("--query is empty: give a SELECT")
        target: Any = args.table if args.table is not None else sa.text(args.query)
        folder = Path(args.output) if dataset else parts_folder(args.output)
        try:
            report = await export(
                args.url,
                target,
                args.output,
                jobs=args.jobs,
                format=fmt,
                where=args.where,
                columns=columns,
                batch_rows=args.batch_rows,
                batch_bytes=parse_size(args.batch_bytes) if args.batch_bytes else None,
                compression=args.compression,
                progress=not args.quiet,
                zero_dates=args.zero_dates,
                text_columns=text_columns,
                infinity=args.infinity,
                nan=args.nan,
                resume=args.resume,
                partition_by=args.partition_by,
                min_partition_bytes=_size(args.min_partition_size),
                on_progress=on_progress,
            )
        except RowstreamError as exc:
            hint = kept_parts_hint(folder)
            if hint is None or isinstance(exc, ConfigurationError):
                raise
            # Same class, one line: what failed, and that --resume carries on from here.
            raise type(exc)(
                f"{exc.message}; {hint}: run the same command with --resume", **exc.context
            ) from None
        job = report.job if not dataset else report
    if job is not None:
        note = _plan_note(job)
        if note and not args.quiet:
            print(f"rowstream: note: {note}", file=sys.stderr)
        if job.warning:
            print(f"rowstream: warning: {job.warning}", file=sys.stderr)
    if show:
        print(report.summary(), file=sys.stderr)
        if args.verbose and job is not None:
            for part in job.parts:
                print(_part_line(part), file=sys.stderr)
    return 0


async def _run_celery(
    args: argparse.Namespace, fmt: str, columns: list[str] | None, on_progress: Any
) -> Any:
    import os

    with loading():
        try:
            from . import celery
        except ImportError:
            raise ConfigurationError(
                "--celery needs Celery: pip install 'rowstream[celery]'"
            ) from None
        from ._progress import JobProgressBar

    broker = args.broker or os.environ.get("ROWSTREAM_BROKER_URL")
    with JobProgressBar(enabled=not args.quiet) as bar:

        def progress(state: Any) -> None:
            bar.update(state)
            on_progress(state)

        return await celery.export_async(
            args.url,
            args.table,
            args.output,
            format=fmt,
            compression=args.compression,
            where=args.where,
            columns=columns,
            partition_by=args.partition_by,
            min_partition_bytes=_size(args.min_partition_size),
            jobs=args.jobs,
            resume=args.resume,
            broker=broker,
            queue=args.queue,
            progress=progress,
        )


def _size(value: str | None) -> int | None:
    from ._sizing import parse_size

    return parse_size(value) if value is not None else None


def _plan_note(job: Any) -> str | None:
    """Why the job was not split (SQLite, a statement without --partition-by), from its
    manifest, or None."""
    from pathlib import Path

    from ._dataset import read_manifest

    if job.plan != "single":
        return None
    folder = Path(job.directory)
    manifest = read_manifest(folder) if folder.is_dir() else None
    note = manifest.plan.get("note") if manifest is not None else None
    return f"one reader: {note}" if note else "one reader"


def _part_line(part: Any) -> str:
    from ._progress import format_bytes

    how = (
        "kept from the earlier run"
        if part.skipped
        else f"{part.seconds:.1f} s" + (f", read again {part.retries}x" if part.retries else "")
    )
    return f"  {part.file}: {part.rows:,} rows, {format_bytes(part.bytes)}, {how}"


def _names(option: str, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",")]
    if not all(names):
        raise ConfigurationError(f"bad {option} {value!r}: write a,b,c")
    return names
