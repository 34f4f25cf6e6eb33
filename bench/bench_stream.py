"""rowstream.stream against its peers on the 5M-row PostgreSQL orders table, in one run.

Variants, each in a fresh child process (clean peak RSS, no warm Python caches carried over):

    asyncpg-cursor     raw asyncpg: a cursor in a transaction, ``fetch(10000)`` until empty
    rowstream-rows     ``async for row in rows`` (Core select)
    rowstream-batches  ``async for batch in rows.batches()`` (Core select)
    seeds-orm          the seeds' loop: ``async for order in await session.stream_scalars(
                       select(Order).execution_options(yield_per=1000))``
    rowstream-orm      ``async for order in rows`` (select(Order))
    rss-1M, rss-4M     rowstream-rows over the first 1M and 4M rows, for peak RSS

Every variant touches every row (reads one column), so none is faster by skipping work.
Prints rows/s, peak RSS and ratios against the raw cursor and the seeds' ORM loop, then the
issue-2 targets with PASS/MISS.

    python bench/bench_stream.py                 # the full run (5M rows; several minutes)
    python bench/bench_stream.py --rows 200000   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

QUERY = "SELECT id, user_id, total_cents, status, created_at, note FROM {table}"


def _query(rows: int) -> str:
    return QUERY.format(table=_common.ORDERS_TABLE) + f" LIMIT {int(rows)}"


# Children ------------------------------------------------------------------------------------
async def child_asyncpg_cursor(dsn: str, rows: int) -> tuple[int, float]:
    import asyncpg

    conn = await asyncpg.connect(_common.asyncpg_dsn(dsn))
    try:
        started = time.perf_counter()
        total = count = 0
        async with conn.transaction():
            cursor = await conn.cursor(_query(rows))
            while batch := await cursor.fetch(10_000):
                for row in batch:
                    total += row[2]
                    count += 1
        return count, time.perf_counter() - started
    finally:
        await conn.close()


def _core_statement(rows: int) -> sa.Select[Any]:
    orders = sa.table(_common.ORDERS_TABLE, *(sa.column(name) for name in _common.ORDERS_COLUMNS))
    return sa.select(*orders.c).limit(rows)


async def child_rowstream_rows(dsn: str, rows: int) -> tuple[int, float]:
    import rowstream

    started = time.perf_counter()
    total = count = 0
    async with rowstream.stream(dsn, _core_statement(rows)) as stream:
        async for row in stream:
            total += row[2]
            count += 1
    return count, time.perf_counter() - started


async def child_rowstream_batches(dsn: str, rows: int) -> tuple[int, float]:
    import rowstream

    started = time.perf_counter()
    total = count = 0
    async with rowstream.stream(dsn, _core_statement(rows)) as stream:
        async for batch in stream.batches():
            for row in batch:
                total += row[2]
                count += 1
    return count, time.perf_counter() - started


class _Base(DeclarativeBase):
    pass


class Order(_Base):
    """The seeds' Order, on the benchmark's table."""

    __tablename__ = _common.ORDERS_TABLE
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    user_id: Mapped[int]
    total_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    note: Mapped[str | None]


async def child_seeds_orm(dsn: str, rows: int) -> tuple[int, float]:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    # The seeds' recipe as written, with ERRATA 1 applied (the result closed by hand).
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    started = time.perf_counter()
    total = count = 0
    try:
        async with session_factory() as session:
            stmt = sa.select(Order).limit(rows).execution_options(yield_per=1000)
            result = await session.stream_scalars(stmt)
            try:
                async for item in result:
                    total += item.total_cents
                    count += 1
            finally:
                await result.close()
        return count, time.perf_counter() - started
    finally:
        await engine.dispose()


async def child_rowstream_orm(dsn: str, rows: int) -> tuple[int, float]:
    import rowstream

    started = time.perf_counter()
    total = count = 0
    async with rowstream.stream(dsn, sa.select(Order).limit(rows)) as stream:
        async for item in stream:
            total += item.total_cents
            count += 1
    return count, time.perf_counter() - started


CHILDREN = {
    "asyncpg-cursor": child_asyncpg_cursor,
    "rowstream-rows": child_rowstream_rows,
    "rowstream-batches": child_rowstream_batches,
    "seeds-orm": child_seeds_orm,
    "rowstream-orm": child_rowstream_orm,
}


def run_child_main(name: str, dsn: str, rows: int) -> None:
    count, seconds = asyncio.run(CHILDREN[name](dsn, rows))
    _common.child_report(count, seconds)


# Parent --------------------------------------------------------------------------------------
def measure(name: str, variant: str, dsn: str, rows: int, repeat: int) -> _common.Result:
    """The best of ``repeat`` runs (each in a new child); peak RSS is the largest seen."""
    best: _common.Result | None = None
    peak = 0.0
    for _ in range(repeat):
        report, rss = _common.run_child(
            [_common.python(), __file__, "--child", variant, "--dsn", dsn, "--rows", str(rows)]
        )
        peak = max(peak, rss)
        result = _common.Result(name, int(report["rows"]), float(report["seconds"]), rss)
        if best is None or result.seconds < best.seconds:
            best = result
    assert best is not None
    best.peak_rss_mb = peak
    if best.rows != rows:
        raise RuntimeError(f"{name} streamed {best.rows:,} rows, expected {rows:,}")
    print(f"  {name:<18} {best.rows_per_second:>12,.0f} rows/s  {peak:>6.0f} MB", flush=True)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=_common.DEFAULT_PG_DSN)
    parser.add_argument(
        "--rows", type=int, default=_common.ORDERS_ROWS, help="rows per speed variant"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per Core variant (the best is kept)"
    )
    parser.add_argument(
        "--orm-repeat", type=int, default=1, help="runs per ORM variant (they are slow)"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child_main(args.child, args.dsn, args.rows)
        return 0

    rows = min(args.rows, _common.ORDERS_ROWS)
    built = asyncio.run(_common.ensure_orders(args.dsn))
    if built:
        print(f"built {_common.ORDERS_TABLE} ({_common.ORDERS_ROWS:,} rows) in {built:.0f} s")
    print(f"streaming {rows:,} rows of {_common.ORDERS_TABLE}, each variant in a fresh process")
    # Warm the table into the OS cache so the first variant does not pay for the disk.
    warm = ["--child", "asyncpg-cursor", "--dsn", args.dsn, "--rows", str(rows)]
    _common.run_child([_common.python(), __file__, *warm])
    results = [
        measure(name, name, args.dsn, rows, args.repeat)
        for name in ("asyncpg-cursor", "rowstream-rows", "rowstream-batches")
    ]
    results += [
        measure(name, name, args.dsn, rows, args.orm_repeat)
        for name in ("seeds-orm", "rowstream-orm")
    ]
    rss_small_rows = max(1, rows // 5)
    rss_big_rows = max(1, rows * 4 // 5)
    rss_small = measure(
        f"rss-{_label(rss_small_rows)}", "rowstream-rows", args.dsn, rss_small_rows, 1
    )
    rss_big = measure(f"rss-{_label(rss_big_rows)}", "rowstream-rows", args.dsn, rss_big_rows, 1)
    results += [rss_small, rss_big]

    print()
    print(
        _common.ratio_table(
            results, [("vs asyncpg cursor", "asyncpg-cursor"), ("vs seeds' ORM", "seeds-orm")]
        )
    )
    by_name = {r.name: r for r in results}

    def ratio(a: str, b: str) -> float:
        return by_name[a].rows_per_second / by_name[b].rows_per_second

    targets = [
        ("per row >= 0.75x asyncpg cursor", ratio("rowstream-rows", "asyncpg-cursor"), 0.75),
        ("batches >= 0.9x asyncpg cursor", ratio("rowstream-batches", "asyncpg-cursor"), 0.9),
        ("ORM >= 2x the seeds' ORM loop", ratio("rowstream-orm", "seeds-orm"), 2.0),
    ]
    print()
    for label, value, goal in targets:
        print(f"{'PASS' if value >= goal else 'MISS'}  {label}: {value:.2f}x")
    growth = rss_big.peak_rss_mb / rss_small.peak_rss_mb
    print(
        f"{'PASS' if growth <= 1.15 else 'MISS'}  peak RSS {rss_big.name} <= 1.15x "
        f"{rss_small.name}: {growth:.2f}x ({rss_big.peak_rss_mb:.0f} MB vs "
        f"{rss_small.peak_rss_mb:.0f} MB)"
    )
    print(
        f"{'PASS' if rss_big.peak_rss_mb < 120 else 'MISS'}  peak RSS {rss_big.name} < 120 MB: "
        f"{rss_big.peak_rss_mb:.0f} MB"
    )
    return 0


def _label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


if __name__ == "__main__":
    sys.exit(main())
