"""A Celery export against the local partitioned export, in one run.

    python bench/bench_celery.py                       # 5M orders, Parquet, 2 workers, RabbitMQ
    python bench/bench_celery.py --rows 1000000 --broker redis://127.0.0.1:6379/0

Both write the same dataset (``jobs=2``: the same partition plan, one snapshot): the local one
with ``rowstream._jobs.export_dataset`` (two connections in one process), the Celery one with
``rowstream.celery.export`` fed to two real ``celery -A rowstream.celery worker`` processes
(prefork, one pool process each) started here on a private queue. The report gives rows/s, the
ratio, the coordinator's peak RSS and checks that DuckDB finds the two datasets identical
(``EXCEPT ALL`` both ways). Workers start before the clock does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rowstream.celery
from _common import DEFAULT_PG_DSN, ORDERS_TABLE, ensure_orders
from rowstream._jobs import export_dataset

ROOT = Path(__file__).resolve().parent.parent


def start_workers(broker: str, queue: str, n: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, ROWSTREAM_BROKER_URL=broker, PYTHONPATH=str(ROOT / "src"))
    procs = []
    for i in range(n):
        log = logs / f"worker{i}.log"
        argv = [sys.executable, "-m", "celery", "-A", "rowstream.celery", "worker", "-Q", queue]
        argv += ["--pool", "prefork", "--concurrency", "1", "-n", f"bench{i}-{queue}@localhost"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + 90
    for i in range(n):
        while b" ready." not in (logs / f"worker{i}.log").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit(f"worker {i} did not start; see {logs}")
            time.sleep(0.2)
    return procs


def identical(a: Path, b: Path) -> bool:
    import duckdb

    left, right = f"read_parquet('{a}/part-*.parquet')", f"read_parquet('{b}/part-*.parquet')"
    [(missing,)] = duckdb.sql(
        f"SELECT count(*) FROM (SELECT * FROM {left} EXCEPT ALL SELECT * FROM {right})"
    ).fetchall()
    [(extra,)] = duckdb.sql(
        f"SELECT count(*) FROM (SELECT * FROM {right} EXCEPT ALL SELECT * FROM {left})"
    ).fetchall()
    return missing == 0 and extra == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_PG_DSN)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    table = ORDERS_TABLE if args.rows == 5_000_000 else f"{ORDERS_TABLE}_{args.rows}"
    asyncio.run(ensure_orders(args.url, args.rows, table))
    work = Path(tempfile.mkdtemp(prefix="rowstream-bench-celery-"))
    queue = f"rowstream-bench-{uuid.uuid4().hex[:8]}"
    workers = start_workers(args.broker, queue, args.jobs, work)
    try:
        t0 = time.perf_counter()
        local = asyncio.run(
            export_dataset(args.url, table, work / "local", jobs=args.jobs, format="parquet")
        )
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = rowstream.celery.export(
            args.url,
            table,
            work / "celery",
            jobs=args.jobs,
            format="parquet",
            broker=args.broker,
            queue=queue,
        )
        celery_s = time.perf_counter() - t0
    finally:
        for proc in workers:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before DuckDB's check
    same = identical(work / "local", work / "celery")
    print(f"rows: {local.rows:,} local, {remote.rows:,} celery; parts {len(remote.parts)}")
    print(f"local  --jobs {args.jobs}: {local_s:6.2f} s  {local.rows / local_s:>12,.0f} rows/s")
    print(f"celery {args.jobs} workers: {celery_s:6.2f} s  {remote.rows / celery_s:>12,.0f} rows/s")
    print(f"celery / local: {local_s / celery_s:.2f}x   identical datasets: {same}")
    print(f"bench process peak RSS (local export + coordinator): {rss:.0f} MB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
