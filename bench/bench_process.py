"""Batch processing: ``rowstream.process`` against the seeds' gather-in-waves loop, in one run.

    python bench/bench_process.py                  # 400 batches of 50, 250 and 500 rows
    python bench/bench_process.py --batches 400 --batch-rows 500 --concurrency 4 --repeat 5

The workload is the seeds' invoice run: stream ``select(Invoice)`` as ORM instances and hand
each batch to ``send_invoice_batch``, an async call whose latency is uniform in 0-20 ms. The
latency of batch ``n`` is drawn from one seeded generator, so every variant sees exactly the
same latencies for the same batches. Variants:

- ``gather-in-waves (seeds)``: the seeds' loop (``stream_scalars`` + ``partitions(n)``, four
  tasks, then ``gather()`` before fetching on), with ERRATA 1's fix (the result is closed in
  ``finally`` instead of ``async with await``);
- ``rowstream.process``: the same handler, ``concurrency=4``;
- ``rowstream.process ordered``: ``ordered=True`` (a window of 4 batches);
- ``rowstream.sync.process``: the same latencies with ``time.sleep`` in a pool of 4 threads.

Each variant runs in a fresh child process (its own peak RSS) and checks that every invoice was
handled exactly once; a variant that misses or repeats one fails the run. Each batch size gets
a table: the median of ``--repeat`` runs and the speed ratio against the waves loop. The waves
loop takes about ``fetch + sum of each wave's slowest latency``; a pipeline about
``max(fetch, sum of latencies / concurrency)``, so the ratio is largest where the handlers'
latency, not reading and building ORM objects, dominates (small batches).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rowstream
import rowstream.sync
from _common import DEFAULT_PG_DSN, Result, child_report, ratio_table, run_child

TABLE = "bench_process_invoices"
SEED = 20261123
MAX_LATENCY = 0.020
WAVES = "gather-in-waves (seeds)"
VARIANTS = (WAVES, "rowstream.process", "rowstream.process ordered", "rowstream.sync.process")


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int]
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.Text)


def latencies(batches: int) -> list[float]:
    """The latency of each batch, uniform in 0-20 ms, the same in every variant."""
    rng = random.Random(SEED)
    return [rng.uniform(0.0, MAX_LATENCY) for _ in range(batches)]


def ensure_invoices(url: str, rows: int) -> None:
    """Make sure the invoices table holds ids 1..rows, all ready to send."""
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.begin() as conn:
            exists = sa.inspect(conn).has_table(TABLE)
            if exists and conn.scalar(sa.text(f"SELECT count(*) FROM {TABLE}")) == rows:
                return
            Base.metadata.drop_all(conn)
            Base.metadata.create_all(conn)
            conn.execute(
                sa.text(
                    f"INSERT INTO {TABLE} (id, user_id, amount_cents, status) "
                    "SELECT i, 1 + i % 5000, 100 + (i * 7919) % 100000, 'ready_to_send' "
                    "FROM generate_series(1, :rows) AS i"
                ),
                {"rows": rows},
            )
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f"VACUUM ANALYZE {TABLE}")
            )
    finally:
        engine.dispose()


def statement(rows: int) -> sa.Select[tuple[Invoice]]:
    """The seeds' query, on the first ``rows`` invoices."""
    return (
        sa.select(Invoice)
        .where(Invoice.status == "ready_to_send", Invoice.id <= rows)
        .order_by(Invoice.id)
    )


# -- the variants, each run in a child process -----------------------------------------------


async def run_waves(
    url: str, batch_rows: int, concurrency: int, delays: list[float]
) -> Counter[int]:
    """The seeds' loop, as written there (ERRATA 1: the result is closed by hand)."""
    handled: Counter[int] = Counter()

    async def send_invoice_batch(invoices: list[Invoice]) -> None:
        await asyncio.sleep(delays[(invoices[0].id - 1) // batch_rows])
        handled.update(i.id for i in invoices)

    engine = create_async_engine(rowstream.create_engine(url).url)
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with session_factory() as session:
            stream = await session.stream_scalars(
                statement(len(delays) * batch_rows).execution_options(yield_per=batch_rows)
            )
            in_flight: list[asyncio.Task[None]] = []
            max_concurrent = concurrency
            try:
                async for partition in stream.partitions(batch_rows):
                    task = asyncio.create_task(send_invoice_batch(list(partition)))
                    in_flight.append(task)
                    if len(in_flight) >= max_concurrent:
                        await asyncio.gather(*in_flight)
                        in_flight.clear()
            finally:
                await stream.close()
            if in_flight:
                await asyncio.gather(*in_flight)
    finally:
        await engine.dispose()
    return handled


async def run_process(
    url: str, batch_rows: int, concurrency: int, delays: list[float], *, ordered: bool
) -> Counter[int]:
    handled: Counter[int] = Counter()

    async def send_invoice_batch(invoices: list[Invoice]) -> None:
        await asyncio.sleep(delays[(invoices[0].id - 1) // batch_rows])
        handled.update(i.id for i in invoices)

    engine = rowstream.create_engine(url)
    try:
        await rowstream.process(
            engine,
            statement(len(delays) * batch_rows),
            send_invoice_batch,
            concurrency=concurrency,
            batch_rows=batch_rows,
            ordered=ordered,
        )
    finally:
        await engine.dispose()
    return handled


def run_sync_process(
    url: str, batch_rows: int, concurrency: int, delays: list[float]
) -> Counter[int]:
    import threading

    handled: Counter[int] = Counter()
    lock = threading.Lock()

    def send_invoice_batch(invoices: list[Invoice]) -> None:
        time.sleep(delays[(invoices[0].id - 1) // batch_rows])
        with lock:
            handled.update(i.id for i in invoices)

    engine = rowstream.sync.create_engine(url)
    try:
        rowstream.sync.process(
            engine,
            statement(len(delays) * batch_rows),
            send_invoice_batch,
            concurrency=concurrency,
            batch_rows=batch_rows,
        )
    finally:
        engine.dispose()
    return handled


def child(variant: str, url: str, batches: int, batch_rows: int, concurrency: int) -> None:
    delays = latencies(batches)
    started = time.perf_counter()
    if variant == WAVES:
        handled = asyncio.run(run_waves(url, batch_rows, concurrency, delays))
    elif variant == "rowstream.process":
        handled = asyncio.run(run_process(url, batch_rows, concurrency, delays, ordered=False))
    elif variant == "rowstream.process ordered":
        handled = asyncio.run(run_process(url, batch_rows, concurrency, delays, ordered=True))
    elif variant == "rowstream.sync.process":
        handled = run_sync_process(url, batch_rows, concurrency, delays)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    seconds = time.perf_counter() - started
    rows = batches * batch_rows
    exactly_once = handled == Counter(range(1, rows + 1))
    child_report(sum(handled.values()), seconds, exactly_once=exactly_once)


# -- the parent ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_PG_DSN)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument(
        "--batch-rows",
        default="50,250,500",
        help="rows per batch, comma-separated: one table each (500 is the seeds' partition)",
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in str(args.batch_rows).split(",")]
    if args.child:
        child(args.child, args.url, args.batches, sizes[0], args.concurrency)
        return 0

    ensure_invoices(args.url, args.batches * max(sizes))
    delays = latencies(args.batches)
    print(
        f"{args.batches} batches, handler latency uniform 0-{MAX_LATENCY * 1000:.0f} ms "
        f"(seed {SEED}, sum {sum(delays):.2f} s), concurrency {args.concurrency}, "
        f"median of {args.repeat} runs",
        flush=True,
    )
    for batch_rows in sizes:
        if run_size(args, batch_rows) != 0:
            return 1
    print("\nEvery variant handled every invoice exactly once.")
    return 0


def run_size(args: argparse.Namespace, batch_rows: int) -> int:
    rows = args.batches * batch_rows
    print(f"\n{batch_rows} invoices a batch ({rows:,} rows):", flush=True)
    runs: dict[str, list[Result]] = {name: [] for name in VARIANTS}
    for attempt in range(args.repeat):
        # Interleaved, so that a noisy neighbour slows every variant alike.
        for name in VARIANTS:
            report, peak = run_child(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--url",
                    args.url,
                    "--batches",
                    str(args.batches),
                    "--batch-rows",
                    str(batch_rows),
                    "--concurrency",
                    str(args.concurrency),
                ]
            )
            if not report["exactly_once"] or report["rows"] != rows:
                print(f"FAILED: {name} did not handle every invoice exactly once", flush=True)
                return 1
            result = Result(name, report["rows"], report["seconds"], peak)
            runs[name].append(result)
            print(f"  run {attempt + 1}: {name:28} {result.seconds:6.2f} s", flush=True)
    medians = [median_run(results) for results in runs.values()]
    print()
    print(ratio_table(medians, [("speed vs waves", WAVES)]))
    return 0


def median_run(results: list[Result]) -> Result:
    seconds = statistics.median(r.seconds for r in results)
    chosen = min(results, key=lambda r: abs(r.seconds - seconds))
    return Result(chosen.name, chosen.rows, seconds, max(r.peak_rss_mb for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
