"""Keyset pages against the server-side cursor on the 5M-row PostgreSQL orders table, in one run.

Variants, each in a fresh child process, alternating so that machine noise hits both alike:

    cursor   rowstream.stream(..., strategy="cursor"): one cursor, one transaction, key order
    keyset   rowstream.stream(..., strategy="keyset"): pages by primary key, each page in its
             own short transaction
    keyset-pgbouncer  the same through a PgBouncer in transaction mode (--pgbouncer URL)

Both read ``select(orders)`` over the whole table (the cursor orders by the key so it can
resume), touch every row, and batches are sized by bytes. Issue 4's target: keyset >= 0.8x the
cursor's rows/s.

    python bench/bench_keyset.py                # 5M rows, best of 3 each
    python bench/bench_keyset.py --rows 500000  # a quick check (a prefix of the table)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common


def _statement(rows: int) -> sa.Select[Any]:
    orders = sa.table(_common.ORDERS_TABLE, *(sa.column(name) for name in _common.ORDERS_COLUMNS))
    statement = sa.select(*orders.c)
    if rows < _common.ORDERS_ROWS:
        statement = statement.where(orders.c.id <= rows)
    return statement


async def child(dsn: str, rows: int, strategy: str) -> tuple[int, float, str]:
    import rowstream

    started = time.perf_counter()
    total = count = 0
    async with rowstream.stream(dsn, _statement(rows), strategy=strategy) as stream:  # type: ignore[arg-type]
        async for batch in stream.batches():
            for row in batch:
                total += row[2]
                count += 1
    return count, time.perf_counter() - started, stream.stats.strategy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=_common.DEFAULT_PG_DSN)
    parser.add_argument("--pgbouncer", help="also measure keyset through this PgBouncer URL")
    parser.add_argument("--rows", type=int, default=_common.ORDERS_ROWS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["cursor", "keyset"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        count, seconds, used = asyncio.run(child(args.dsn, args.rows, args.child))
        if used != args.child:
            raise SystemExit(f"asked for {args.child}, streamed with {used}")
        _common.child_report(count, seconds)
        return 0

    rows = min(args.rows, _common.ORDERS_ROWS)
    asyncio.run(_common.ensure_orders(args.dsn))
    variants = [("cursor", "cursor", args.dsn), ("keyset", "keyset", args.dsn)]
    if args.pgbouncer:
        variants.append(("keyset-pgbouncer", "keyset", args.pgbouncer))
    best: dict[str, _common.Result] = {}
    for _ in range(args.repeat):
        for name, strategy, dsn in variants:
            report, rss = _common.run_child(
                [_common.python(), __file__, "--child", strategy, "--dsn", dsn, "--rows", str(rows)]
            )
            result = _common.Result(name, int(report["rows"]), float(report["seconds"]), rss)
            if result.rows != rows:
                raise SystemExit(f"{name} streamed {result.rows:,} rows, expected {rows:,}")
            print(
                f"  {name:<17} {result.rows_per_second:>12,.0f} rows/s  {rss:>5.0f} MB", flush=True
            )
            if name not in best or result.seconds < best[name].seconds:
                best[name] = result
    results = [best[name] for name, _, _ in variants]
    print()
    print(_common.ratio_table(results, [("vs cursor", "cursor")]))
    ratio = best["keyset"].rows_per_second / best["cursor"].rows_per_second
    print(
        f"\nkeyset / cursor = {ratio:.2f}x (target >= 0.80x): {'PASS' if ratio >= 0.8 else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
