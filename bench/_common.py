"""Shared benchmark helpers: the 5M-row orders table, per-child peak RSS, ratio tables, and
the peers' children that more than one benchmark runs (ADBC to Parquet, psql's ``\\copy``).

Benchmarks measure rowstream and its peers in the same run, each variant in a fresh child
process, so every peak RSS belongs to one variant alone (``os.wait4`` reports the child's own
``ru_maxrss``; the parent's memory never mixes in).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

DEFAULT_PG_DSN = os.environ.get(
    "ROWSTREAM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ORDERS_TABLE = "bench_orders"
ORDERS_ROWS = 5_000_000
ORDERS_COLUMNS = ("id", "user_id", "total_cents", "status", "created_at", "note")

# Any number of benchmark processes may call ensure_orders() at once: the first builds the
# table, the others wait on this lock and then find it ready.
_BUILD_LOCK = 0x726F7773  # "rows"

_FILL = """
INSERT INTO {table} (id, user_id, total_cents, status, created_at, note)
SELECT i,
       1 + (i * 7919) % 50000,
       100 + (i * 104729) % 100000,
       (ARRAY['pending', 'completed', 'shipped', 'cancelled'])[1 + i % 4],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '6 seconds',
       CASE WHEN i % 10 = 0 THEN NULL
            ELSE 'order ' || i || ' ' || md5(i::text) || md5((i + 1)::text) END
FROM generate_series(1::bigint, {rows}) AS i
"""


def asyncpg_dsn(url: str) -> str:
    """asyncpg takes plain ``postgresql://`` DSNs: drop a SQLAlchemy ``+driver``."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


async def ensure_orders(
    dsn: str = DEFAULT_PG_DSN, rows: int = ORDERS_ROWS, table: str = ORDERS_TABLE
) -> float:
    """Make sure ``table`` holds exactly ``rows`` orders; build it if not. Returns build seconds.

    The table is filled under a temporary name and renamed at the end, so a build that is
    interrupted never leaves a half-filled table under the real name.
    """
    conn = await asyncpg.connect(asyncpg_dsn(dsn))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _BUILD_LOCK)
        try:
            if await _row_count(conn, table) == rows:
                return 0.0
            started = time.perf_counter()
            building = f"{table}_building"
            # Bulk-load settings for this session only; the server's configuration is untouched.
            await conn.execute("SET synchronous_commit = off")
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await conn.execute(f"DROP TABLE IF EXISTS {building}")
            await conn.execute(
                f"CREATE TABLE {building} (id bigint NOT NULL, user_id int NOT NULL, "
                "total_cents bigint NOT NULL, status text NOT NULL, "
                "created_at timestamptz NOT NULL, note text)"
            )
            await conn.execute(_FILL.format(table=building, rows=int(rows)), timeout=None)
            # The key after the load: one sorted index build beats 5M index insertions.
            await conn.execute(f"ALTER TABLE {building} ADD PRIMARY KEY (id)", timeout=None)
            async with conn.transaction():
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.execute(f"ALTER TABLE {building} RENAME TO {table}")
                await conn.execute(f"ALTER INDEX {building}_pkey RENAME TO {table}_pkey")
            # Set hint bits and the visibility map now, so the first timed read does not
            # pay for writing them.
            await conn.execute(f"VACUUM (ANALYZE) {table}", timeout=None)
            return time.perf_counter() - started
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _BUILD_LOCK)
    finally:
        await conn.close()


async def _row_count(conn: asyncpg.Connection, table: str) -> int | None:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    if not exists:
        return None
    count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return count


@dataclass
class Result:
    """One variant's measurement, as reported by its child process."""

    name: str
    rows: int
    seconds: float
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def run_child(argv: Sequence[str], *, timeout: float = 1800.0) -> tuple[dict[str, Any], float]:
    """Run ``argv`` (a Python child that prints one JSON object last) and return that object
    and the child's own peak RSS in MB, read from ``os.wait4`` when it exits."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    # Read to the end first (a full pipe would block the child), then reap it ourselves:
    # wait4 is the only call that hands back this child's rusage and no one else's.
    try:
        out, err = _drain(proc, deadline)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {' '.join(argv[1:])!r} exited {proc.returncode}:\n{err.decode()}"
        )
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(argv[1:])!r} printed nothing")
    # Linux reports ru_maxrss in KiB.
    return json.loads(lines[-1]), usage.ru_maxrss / 1024


def _drain(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        open_streams = 2
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in selector.select(timeout=remaining):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def child_report(rows: int, seconds: float, **extra: Any) -> None:
    """What a benchmark child prints last: one JSON line for :func:`run_child`."""
    print(json.dumps({"rows": rows, "seconds": seconds, **extra}), flush=True)


def child_adbc(dsn: str, sql: str, out: Path) -> None:
    """Peer: ``sql`` through ADBC's PostgreSQL driver, each record batch into pyarrow's
    Parquet writer (zstd), as a user of the two libraries would write it."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    started = time.perf_counter()
    count = 0
    with adbc.connect(asyncpg_dsn(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        reader = cur.fetch_record_batch()
        with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                count += batch.num_rows
    child_report(count, time.perf_counter() - started)


def child_psql(dsn: str, sql: str, out: Path) -> None:
    """Peer: ``psql -c "\\copy (sql) TO 'out' WITH CSV HEADER"``, timestamps in UTC.

    Reports the rows psql counted, or -1 when it says nothing (``-q`` may keep the count
    back): the parent then counts the file's lines, once this child has exited.
    """
    started = time.perf_counter()
    command = f"\\copy ({sql}) TO '{out}' WITH CSV HEADER"
    done = subprocess.run(
        [
            *("psql", asyncpg_dsn(dsn), "-X", "-q", "-v", "ON_ERROR_STOP=1"),
            *("-c", "SET TimeZone='UTC'", "-c", command),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    text = done.stdout.strip()
    child_report(int(text.rsplit(" ", 1)[-1]) if text else -1, seconds)


def ratio_table(results: Sequence[Result], baselines: Sequence[tuple[str, str]]) -> str:
    """A Markdown table: rows/s, peak RSS and rows/s ratios against each named baseline.

    ``baselines`` pairs a column title with the name of the result it divides by.
    """
    by_name = {r.name: r for r in results}
    header = ["variant", "rows", "seconds", "rows/s", "peak RSS MB"]
    header += [title for title, _ in baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        cells = [
            r.name,
            f"{r.rows:,}",
            f"{r.seconds:.2f}",
            f"{r.rows_per_second:,.0f}",
            f"{r.peak_rss_mb:.0f}",
        ]
        for _, base_name in baselines:
            base = by_name.get(base_name)
            cells.append(
                f"{r.rows_per_second / base.rows_per_second:.2f}x"
                if base is not None and base.rows_per_second
                else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def python() -> str:
    return sys.executable


def main_build(argv: Sequence[str] | None = None) -> None:
    """``python bench/_common.py [rows]``: build the orders table ahead of a run."""
    args = list(sys.argv[1:] if argv is None else argv)
    rows = int(args[0]) if args else ORDERS_ROWS
    seconds = asyncio.run(ensure_orders(rows=rows))
    state = f"built in {seconds:.0f} s" if seconds else "already there"
    print(f"{ORDERS_TABLE}: {rows:,} rows, {state}")


if __name__ == "__main__":
    main_build()
