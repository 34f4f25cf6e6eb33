"""rowstream export: a table or query into CSV, JSON Lines or Parquet, atomically.

rowstream export postgresql://app@db/shop --table sales.orders -o orders.parquet
rowstream export mysql://root@db/shop --query "SELECT id, total FROM orders" -o - --format jsonl
rowstream export postgresql://app@db/shop --table orders -o - --format parquet > orders.parquet
"""

# This docstring is the command's --help description: plain text, no markup. The parser needs
# only light modules; run() imports SQLAlchemy and the export machinery, and pyarrow loads only
# for Parquet (see rowstream._cli).

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli import loading
from ._exceptions import ConfigurationError
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


def _names(option: str, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",")]
    if not all(names):
        raise ConfigurationError(f"bad {option} {value!r}: write a,b,c")
    return names
