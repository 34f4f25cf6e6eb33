"""The partitioned export (``jobs=``) against single readers and their peers, in one run.

    python bench/bench_jobs.py                          # the 5M-row orders table, 1 round
    python bench/bench_jobs.py --rows 1000000 --repeat 2
    python bench/bench_jobs.py --rows 1000000 --only psql-copy-csv,rowstream-csv-jobs2

CSV: the command ``rowstream export --table T --jobs N -o DIR/`` (with its allocator settings,
``rowstream._allocators``) with N 1, 2 and 4 against ``psql \\copy``.
Parquet: the same against rowstream's single-job export (``rowstream export``, one file),
ADBC (``adbc_driver_postgresql`` + pyarrow's writer) and ConnectorX (``partition_num=2`` on
``id``, then pyarrow's writer). Every variant reads the whole table and writes zstd Parquet
or CSV. ``--rows`` below 5M reads a table of its own built the same way
(``bench_orders_<rows>``), so that every variant, and every partition plan, sees the same
whole table.

Each variant runs in a fresh child process (see ``_common``); the table gives rows/s, ratios,
the child's peak RSS (``ru_maxrss`` from ``os.wait4``: for a child that runs psql, the larger
of the two), and CPU seconds per million rows:

- client: the child's user + system time from ``os.wait4`` (it includes the children it
  waited for: psql under its wrapper);
- server: the CPU of the PostgreSQL backends that served the child. Every 50 ms the parent
  lists the child's (and its descendants') TCP connections to the server (psutil), finds their
  backends in ``pg_stat_activity`` by ``client_port``, and reads each backend's user + system
  time (``/proc/<pid>/stat``, through psutil); the last reading of each backend counts. A
  backend's last 50 ms before it exits are missed, and parallel query workers are not counted
  (none of these reads uses them: COPY and cursors do not run in parallel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_PG_DSN,
    ORDERS_ROWS,
    ORDERS_TABLE,
    Result,
    _drain,
    asyncpg_dsn,
    child_adbc,
    child_psql,
    child_report,
    ensure_orders,
)

VARIANTS = (
    "psql-copy-csv",
    "rowstream-csv-jobs1",
    "rowstream-csv-jobs2",
    "rowstream-csv-jobs4",
    "rowstream-parquet",
    "adbc-parquet",
    "connectorx-parquet-p2",
    "rowstream-parquet-jobs1",
    "rowstream-parquet-jobs2",
    "rowstream-parquet-jobs4",
)
SAMPLE_SECONDS = 0.05


def table_for(rows: int) -> str:
    return ORDERS_TABLE if rows == ORDERS_ROWS else f"{ORDERS_TABLE}_{int(rows)}"


# ---------------------------------------------------------------- children


def child_jobs(fmt: str, jobs: int, dsn: str, table: str, out: Path) -> None:
    # The command users run: `rowstream export URL --table T --jobs N -o DIR/`. It sets its
    # allocators before pyarrow loads (rowstream._allocators); this child imports pyarrow
    # before the clock, as the peers' children do, so it makes the same call first.
    from rowstream._allocators import lean_for_jobs
    from rowstream._cli import USER_ARROW_POOL
    from rowstream._cli import main as cli
    from rowstream._dataset import MANIFEST_NAME

    lean_for_jobs(user_pool=USER_ARROW_POOL)
    if fmt == "parquet":
        import pyarrow.parquet  # noqa: F401

    argv = ["export", dsn, "--table", table, "--jobs", str(jobs), "--format", fmt]
    started = time.perf_counter()
    code = cli([*argv, "-o", f"{out}/", "--quiet"])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(code)
    parts = json.loads((out / MANIFEST_NAME).read_text())["parts"]
    child_report(sum(p["rows"] for p in parts), seconds, parts=len(parts))


def child_single(dsn: str, table: str, out: Path) -> None:
    # The command users run: `rowstream export URL --table T -o PATH`.
    import pyarrow.parquet  # noqa: F401

    from rowstream._cli import main as cli

    started = time.perf_counter()
    code = cli(["export", dsn, "--table", table, "-o", str(out), "--quiet"])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(code)
    import pyarrow.parquet as pq

    child_report(pq.ParquetFile(out).metadata.num_rows, seconds)


def child_connectorx(dsn: str, table: str, out: Path) -> None:
    import connectorx as cx
    import pyarrow.parquet as pq

    started = time.perf_counter()
    frame = cx.read_sql(
        asyncpg_dsn(dsn),
        f"SELECT * FROM {table}",
        partition_on="id",
        partition_num=2,
        return_type="arrow",
    )
    pq.write_table(frame, out, compression="zstd")
    child_report(frame.num_rows, time.perf_counter() - started)


def run_variant(name: str, dsn: str, table: str, out: Path) -> None:
    if name.startswith("rowstream-") and "-jobs" in name:
        fmt = name.split("-")[1]
        child_jobs(fmt, int(name.rsplit("jobs", 1)[1]), dsn, table, out)
    elif name == "rowstream-parquet":
        child_single(dsn, table, out)
    elif name == "adbc-parquet":
        child_adbc(dsn, f"SELECT * FROM {table}", out)
    elif name == "connectorx-parquet-p2":
        child_connectorx(dsn, table, out)
    elif name == "psql-copy-csv":
        child_psql(dsn, f"SELECT * FROM {table}", out)
    else:
        raise SystemExit(f"unknown variant {name!r}")


# ---------------------------------------------------------------- the server's CPU


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving a process and its descendants, sampled
    every :data:`SAMPLE_SECONDS` between :meth:`start` and :meth:`stop` (see the module
    docstring). Its own connection is opened once, before any child runs."""

    def __init__(self, dsn: str) -> None:
        import psutil
        import psycopg

        self._psutil = psutil
        self._conn = psycopg.connect(asyncpg_dsn(dsn), autocommit=True)
        self._port = _url_port(dsn)
        self._pid = 0
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._pid, self._seen = pid, {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return sum(self._seen.values())

    def close(self) -> None:
        self._conn.close()

    def _client_ports(self) -> list[int]:
        psutil = self._psutil
        try:
            root = psutil.Process(self._pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        ports = []
        for proc in procs:
            try:
                for c in proc.net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port == self._port:
                        ports.append(c.laddr.port)
            except psutil.Error:
                continue
        return ports

    def _sample(self) -> None:
        ports = self._client_ports()
        if not ports:
            return
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)
        ).fetchall()
        for (backend,) in rows:
            try:
                times = self._psutil.Process(backend).cpu_times()
            except self._psutil.Error:
                continue
            self._seen[backend] = max(self._seen.get(backend, 0.0), times.user + times.system)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_SECONDS)


def sampler_main(dsn: str) -> None:
    """``--sampler``: a process of its own (psycopg and psutil would otherwise raise the
    parent's memory, which the kernel folds into every child's peak RSS). Says ``ready``,
    reads the child's pid, samples until ``stop``, prints the backends' CPU seconds."""
    sampler = BackendCpu(dsn)
    print("ready", flush=True)
    sampler.start(int(sys.stdin.readline()))
    sys.stdin.readline()  # "stop", or the parent is gone
    print(json.dumps({"server_cpu": sampler.stop()}), flush=True)
    sampler.close()


class Sampler:
    """The parent's handle on a ``--sampler`` process."""

    def __init__(self, dsn: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--sampler", "--dsn", dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None and self._proc.stdin is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        if self._out.readline().strip() != "ready":
            raise SystemExit("the CPU sampler did not start")

    def start(self, pid: int) -> None:
        self._in.write(f"{pid}\n")
        self._in.flush()

    def stop(self) -> float:
        self._in.write("stop\n")
        self._in.flush()
        seconds = float(json.loads(self._out.readline())["server_cpu"])
        self._proc.wait(timeout=30)
        return seconds


# ---------------------------------------------------------------- parent


def measure(name: str, dsn: str, table: str, tmp: Path) -> Result | None:
    out = tmp / (name if "-jobs" in name else name + (".csv" if "csv" in name else ".parquet"))
    argv = [sys.executable, __file__, "--child", name, "--dsn", dsn, "--table", table]
    argv += ["--out", str(out)]
    sampler = Sampler(dsn)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler.start(proc.pid)
    try:
        stdout, stderr = _drain(proc, time.monotonic() + 1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    finally:
        # wait4: this child's own rusage (its CPU and peak RSS, with psql's under the wrapper).
        _, status, usage = os.wait4(proc.pid, 0)
        server = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"{name}: failed: {stderr.decode()[-400:]}", file=sys.stderr)
        return None
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    # Linux reports ru_maxrss in KiB.
    client, peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
    rows = report["rows"]
    if rows < 0:  # psql -q does not say: one line per row (the notes hold no newline)
        rows = _csv_rows(out)
    result = Result(
        name,
        rows,
        report["seconds"],
        peak,
        {"client_cpu": client, "server_cpu": server, "parts": report.get("parts")},
    )
    print(
        f"{name}: {rows:,} rows in {result.seconds:.2f} s, {result.rows_per_second:,.0f} rows/s, "
        f"peak RSS {peak:.0f} MB, CPU client {client:.2f} s server {server:.2f} s",
        file=sys.stderr,
        flush=True,
    )
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    return result


def _csv_rows(path: Path) -> int:
    lines = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
    return lines - 1  # the header


def _url_port(dsn: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(asyncpg_dsn(dsn)).port or 5432


def per_million(seconds: float, rows: int) -> str:
    return f"{seconds / rows * 1e6:.2f}" if rows > 0 else "-"


def table_md(results: Sequence[Result], baselines: Sequence[tuple[str, str]]) -> str:
    by_name = {r.name: r for r in results}
    header = ["variant", "rows/s", *[t for t, _ in baselines], "peak RSS MB"]
    header += ["client CPU s/M rows", "server CPU s/M rows"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        cells = [r.name, f"{r.rows_per_second:,.0f}"]
        for _, base_name in baselines:
            base = by_name.get(base_name)
            cells.append(
                f"{r.rows_per_second / base.rows_per_second:.2f}x"
                if base is not None and base.rows_per_second
                else "-"
            )
        cells += [
            f"{r.peak_rss_mb:.0f}",
            per_million(r.extra["client_cpu"], r.rows),
            per_million(r.extra["server_cpu"], r.rows),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best(results: list[Result]) -> Result:
    """The fastest run (on a shared machine noise only ever slows a run down), with the
    median CPU figures and the highest peak RSS of all runs."""
    fastest = min(results, key=lambda r: r.seconds)
    extra = dict(fastest.extra)
    for key in ("client_cpu", "server_cpu"):
        extra[key] = statistics.median(r.extra[key] for r in results)
    return Result(
        fastest.name, fastest.rows, fastest.seconds, max(r.peak_rss_mb for r in results), extra
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_PG_DSN)
    parser.add_argument("--rows", type=int, default=ORDERS_ROWS)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds (best of)")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sampler", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sampler:
        sampler_main(args.dsn)
        return
    if args.child:
        run_variant(args.child, args.dsn, args.table, args.out)
        return

    table = table_for(args.rows)
    built = asyncio.run(ensure_orders(args.dsn, args.rows, table))
    if built:
        print(f"built {table} in {built:.0f} s", file=sys.stderr)
    names = args.only.split(",") if args.only else list(VARIANTS)
    runs: dict[str, list[Result]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench_jobs_") as tmp:
        # Rounds interleave the variants: a noisy moment hits one run of each.
        for _ in range(args.repeat):
            for name in names:
                result = measure(name, args.dsn, table, Path(tmp))
                if result is not None:
                    runs[name].append(result)
    results = [_best(r) for r in runs.values() if r]
    print(
        f"\n### {table}: {args.rows:,} rows, best of {args.repeat} "
        "(CPU: median; peak RSS: highest)\n"
    )
    print(
        table_md(
            results,
            [
                ("vs psql \\copy", "psql-copy-csv"),
                ("vs rowstream 1 job", "rowstream-parquet"),
                ("vs ADBC", "adbc-parquet"),
            ],
        )
    )


if __name__ == "__main__":
    main()
