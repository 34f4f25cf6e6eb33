"""Peak memory on very wide rows: 10 rows of 50 MB, through every stream and export path.

Memory is flat in the number of rows; this checks it is flat in their width too. A table of
10 rows, each holding one large value, is read by every entry point, each case in a fresh
child process whose own peak RSS comes from ``os.wait4`` (``ru_maxrss``). An idle child that
only imports rowstream (and one that also imports pyarrow, as Parquet does) gives the
baseline: the data path's cost is the case's peak minus that.

Databases and tables (built once, reused when present):

    PostgreSQL  bench_wide_text (text), bench_wide_bytea (bytea): 10 rows of 50 MB
    MariaDB     bench_wide_text (longtext): 10 rows of 15 MB, the largest a row can be under
                the shared server's max_allowed_packet of 16 MB (its globals stay untouched)
    SQLite      bench_wide_text (text) in a file: 10 rows of 50 MB

Cases: ``stream-cursor`` and ``stream-keyset`` (``async for batch in rows.batches()``),
``sync-stream`` (``rowstream.sync``), ``export-csv``, ``export-jsonl``, ``export-parquet``
(PostgreSQL: COPY and ADBC; the others: the stream export), and on PostgreSQL also
``export-stream-*`` (the stream export, ``method="stream"``).

    python bench/bench_wide_rows.py                       # every database and case
    python bench/bench_wide_rows.py --only pg --mb 20     # PostgreSQL, 20 MB rows
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

ROWS = 10
PG_MB = 50
# MariaDB's max_allowed_packet (16 MB on the shared server) bounds a row, sent or received.
MYSQL_MB = 15
SQLITE_MB = 50
TARGET_MB = 400
RUNS = 3
DEFAULT_MYSQL_URL = os.environ.get("ROWSTREAM_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
DEFAULT_SQLITE = os.path.join(tempfile.gettempdir(), "rowstream-bench-wide.db")
STREAM_CASES = ("stream-cursor", "stream-keyset", "sync-stream")
EXPORT_CASES = ("export-csv", "export-jsonl", "export-parquet")
PG_STREAM_EXPORTS = ("export-stream-csv", "export-stream-jsonl", "export-stream-parquet")


def _table(name: str, body: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", body),
    )


def _body_type(kind: str) -> Any:
    import sqlalchemy as sa

    return sa.LargeBinary() if kind == "bytea" else sa.Text()


# Building -----------------------------------------------------------------------------------
async def build_pg(dsn: str, mb: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(_common.asyncpg_dsn(dsn))
    try:
        for kind in ("text", "bytea"):
            table = f"bench_wide_{kind}"
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if exists:
                width = await conn.fetchval(
                    f"SELECT min(octet_length(body)) || '/' || count(*) FROM {table}"
                )
                if width == f"{mb * 1024 * 1024}/{ROWS}":
                    continue
            # 16 hex digits repeated: compressible on disk, full width on the wire.
            value = f"repeat(lpad(to_hex(i), 16, '0'), {mb * 1024 * 1024 // 16})"
            if kind == "bytea":
                value = f"convert_to({value}, 'UTF8')"
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body {kind})")
            await conn.execute(
                f"INSERT INTO {table} SELECT i, {value} FROM generate_series(1, {ROWS}) AS i",
                timeout=None,
            )
    finally:
        await conn.close()


def build_mysql(url: str, mb: int) -> None:
    import pymysql
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    conn = pymysql.connect(
        host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
        database=u.database,
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'bench_wide_text'")
            if cur.fetchone():
                cur.execute("SELECT MIN(LENGTH(body)), COUNT(*) FROM bench_wide_text")
                if cur.fetchone() == (mb * 1024 * 1024, ROWS):
                    return
            cur.execute("DROP TABLE IF EXISTS bench_wide_text")
            cur.execute("CREATE TABLE bench_wide_text (id int PRIMARY KEY, body longtext)")
            for i in range(1, ROWS + 1):
                cur.execute(
                    "INSERT INTO bench_wide_text VALUES (%s, REPEAT(LPAD(HEX(%s), 16, '0'), %s))",
                    (i, i, mb * 1024 * 1024 // 16),
                )
        conn.commit()
    finally:
        conn.close()


def build_sqlite(path: str, mb: int) -> None:
    conn = sqlite3.connect(path)
    try:
        exists = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'bench_wide_text'"
        ).fetchone()[0]
        if exists:
            got = conn.execute("SELECT min(length(body)), count(*) FROM bench_wide_text").fetchone()
            if got == (mb * 1024 * 1024, ROWS):
                return
        conn.execute("DROP TABLE IF EXISTS bench_wide_text")
        conn.execute("CREATE TABLE bench_wide_text (id integer PRIMARY KEY, body text)")
        for i in range(1, ROWS + 1):
            conn.execute(
                "INSERT INTO bench_wide_text VALUES (?, ?)",
                (i, f"{i:016x}" * (mb * 1024 * 1024 // 16)),
            )
        conn.commit()
    finally:
        conn.close()


# Children -----------------------------------------------------------------------------------
async def _stream(url: str, table: Any, strategy: str) -> dict[str, Any]:
    import sqlalchemy as sa

    import rowstream

    rows = batches = widest = 0
    async with rowstream.stream(url, sa.select(table), strategy=strategy) as stream:  # type: ignore[arg-type]
        async for batch in stream.batches():
            rows += len(batch)
            batches += 1
            widest = max(widest, len(batch))
    return {"rows": rows, "batches": batches, "largest_batch": widest}


def _sync_stream(url: str, table: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    from rowstream import sync

    rows = batches = widest = 0
    with sync.stream(url, sa.select(table)) as stream:
        for batch in stream.batches():
            rows += len(batch)
            batches += 1
            widest = max(widest, len(batch))
    return {"rows": rows, "batches": batches, "largest_batch": widest}


async def _export(url: str, table: str, fmt: str, strategy: str) -> dict[str, Any]:
    import rowstream

    suffix = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}[fmt]
    with tempfile.TemporaryDirectory(prefix="rowstream-wide-") as tmp:
        path = os.path.join(tmp, "out" + suffix)
        report = await rowstream.export(url, table, path, method=strategy)  # type: ignore[arg-type]
        return {"rows": report.rows, "bytes": report.bytes, "strategy": report.method}


def child(case: str, url: str, table: str, kind: str) -> None:
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if case.startswith("idle"):
        import rowstream  # noqa: F401

        if case == "idle+pyarrow":
            import pyarrow  # noqa: F401
        info = {"rows": 0}
    elif case in ("stream-cursor", "stream-keyset"):
        info = asyncio.run(_stream(url, _table(table, _body_type(kind)), case.split("-")[1]))
    elif case == "sync-stream":
        info = _sync_stream(url, _table(table, _body_type(kind)))
    else:
        fmt = case.rsplit("-", 1)[1]
        strategy = "stream" if case.startswith("export-stream-") else "auto"
        info = asyncio.run(_export(url, table, fmt, strategy))
    rows = info.pop("rows")
    _common.child_report(rows, time.perf_counter() - started, **info)


# Driver -------------------------------------------------------------------------------------
def _run(name: str, case: str, url: str, table: str, kind: str) -> dict[str, Any]:
    argv = [_common.python(), __file__, "--child", case, "--url", url, "--table", table]
    argv += ["--kind", kind]
    for attempt in range(1, RUNS + 1):
        try:
            report, peak = _common.run_child(argv, timeout=900)
            return {"name": name, "peak": peak, **report}
        except RuntimeError as exc:
            # The machine is shared: other tests terminate PostgreSQL backends now and then.
            if attempt == RUNS or "connection" not in str(exc):
                raise
            print(f"  {name}: connection lost, run again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=_common.DEFAULT_PG_DSN)
    parser.add_argument("--mysql", default=DEFAULT_MYSQL_URL)
    parser.add_argument("--sqlite", default=DEFAULT_SQLITE, help="the SQLite file to build")
    parser.add_argument("--mb", type=int, default=PG_MB, help="MB per row (PostgreSQL, SQLite)")
    parser.add_argument("--mysql-mb", type=int, default=MYSQL_MB, help="MB per row (MariaDB)")
    parser.add_argument("--only", default="pg,mysql,sqlite", help="comma-separated databases")
    parser.add_argument("--cases", default="", help="comma-separated cases (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="text", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.table, args.kind)
        return 0
    only = set(args.only.split(","))
    if args.build:
        if "pg" in only:
            asyncio.run(build_pg(args.dsn, args.mb))
        if "mysql" in only:
            build_mysql(args.mysql, args.mysql_mb)
        if "sqlite" in only:
            build_sqlite(args.sqlite, args.mb)
        return 0

    wanted = set(filter(None, args.cases.split(",")))
    plan: list[tuple[str, str, str, str, str]] = []  # name, case, url, table, kind

    def add(db: str, url: str, table: str, kind: str, cases: tuple[str, ...]) -> None:
        for case in cases:
            if not wanted or case in wanted:
                plan.append((f"{db} {kind} {case}", case, url, table, kind))

    # The tables are built in a child: a parent that held 50 MB strings would pass its peak
    # RSS on to every child it forks (ru_maxrss counts the fork's memory before exec).
    build = [_common.python(), __file__, "--build", "--only", args.only, "--mb", str(args.mb)]
    build += ["--mysql-mb", str(args.mysql_mb), "--dsn", args.dsn, "--mysql", args.mysql]
    subprocess.run([*build, "--sqlite", args.sqlite], check=True, timeout=1800)
    if "pg" in only:
        everything = STREAM_CASES + EXPORT_CASES + PG_STREAM_EXPORTS
        add("pg", args.dsn, "bench_wide_text", "text", everything)
        add("pg", args.dsn, "bench_wide_bytea", "bytea", everything)
    if "mysql" in only:
        add("mariadb", args.mysql, "bench_wide_text", "text", STREAM_CASES + EXPORT_CASES)
    if "sqlite" in only:
        url = f"sqlite:///{args.sqlite}"
        add("sqlite", url, "bench_wide_text", "text", STREAM_CASES + EXPORT_CASES)

    results = [_run("idle (import rowstream)", "idle", args.dsn, "-", "text")]
    results.append(_run("idle (+ pyarrow)", "idle+pyarrow", args.dsn, "-", "text"))
    for name, case, url, table, kind in plan:
        results.append(_run(name, case, url, table, kind))
        print(f"  {name}: {results[-1]['peak']:.0f} MB", file=sys.stderr, flush=True)

    widths = {"pg": args.mb, "mariadb": args.mysql_mb, "sqlite": args.mb}
    print(
        "| case | row MB | rows | batches | largest batch | seconds | peak RSS MB | "
        f"< {TARGET_MB} MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        width = widths.get(r["name"].split(" ", 1)[0], "")
        verdict = "" if r["name"].startswith("idle") else (
            "yes" if r["peak"] < TARGET_MB else "NO"
        )  # fmt: skip
        print(
            f"| {r['name']} | {width} | {r['rows']} | {r.get('batches', '-')} | "
            f"{r.get('largest_batch', '-')} | {r['seconds']:.1f} | {r['peak']:.0f} | {verdict} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
