"""rowstream demo: build a 1M-row SQLite orders table and stream it to a CSV file.

It shows the main job end to end on an embedded database: rows streamed in byte-sized
batches, one at a time, into a file, with peak memory that does not grow with the table.
"""

# This docstring is the command's --help description: plain text, no markup. SQLAlchemy and
# the stream are imported by run() only, so that registering the parser stays cheap (see
# rowstream._cli).

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path
from typing import Any

from ._cli import loading

DEFAULT_ROWS = 1_000_000

ORDERS_DDL = """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    total_cents INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT
)
"""
# A recursive CTE fills the table inside SQLite, so building 1M rows takes seconds.
ORDERS_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
INSERT INTO orders (id, user_id, total_cents, status, created_at, note)
SELECT i,
       1 + (i * 7919) % 50000,
       100 + (i * 104729) % 100000,
       CASE i % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'completed'
                  WHEN 2 THEN 'shipped' ELSE 'cancelled' END,
       strftime('%Y-%m-%dT%H:%M:%SZ', 1700000000 + i * 37, 'unixepoch'),
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'order note ' || i END
FROM n
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build a 1M-row SQLite orders table and stream it to a CSV file",
        description=__doc__,
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows to build")
    parser.add_argument(
        "--dir", type=Path, default=Path("rowstream-demo"), help="where to put the files"
    )
    parser.set_defaults(run=run)


def build_database(path: Path, rows: int) -> None:
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(ORDERS_DDL)
        db.execute(ORDERS_FILL.replace(":rows", str(int(rows))))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(args: argparse.Namespace) -> int:
    import csv

    with loading():
        import sqlalchemy as sa

        from ._stream import stream

    directory: Path = args.dir
    database = directory / "orders.db"
    output = directory / "orders.csv"
    print(f"building {args.rows:,} orders in {database} ...", file=sys.stderr)
    build_database(database, args.rows)
    before = peak_rss_mb()

    query = sa.text("SELECT id, user_id, total_cents, status, created_at, note FROM orders")
    with output.open("w", newline="") as out:
        writer = csv.writer(out)
        async with stream(f"sqlite:///{database}", query) as rows:
            writer.writerow(rows.keys())
            async for batch in rows.batches():
                writer.writerows(batch)
    stats = rows.stats
    print(
        f"streamed {stats.rows:,} rows to {output} in {stats.elapsed:.1f} s "
        f"({stats.rows_per_second:,.0f} rows/s, {stats.batches} batches); "
        f"peak memory {peak_rss_mb():.0f} MB (before streaming {before:.0f} MB)"
    )
    return 0
