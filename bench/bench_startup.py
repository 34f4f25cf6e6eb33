"""Start-up time of the CLI and of ``import rowstream``, each command in a fresh process.

A command-line user waits for the imports on every call, so this measures what issue 11 asks:
``rowstream --help`` (target < 0.25 s) and a 1-row export (target < 0.45 s), against the floors
they stand on (an empty interpreter; SQLAlchemy's own import; what an async PostgreSQL export
cannot avoid loading), and psql's 1-row ``\\copy`` as the peer. Commands run round-robin, so
machine noise hits them alike; the table gives the median wall time and the median CPU time
(user + system, from ``os.wait4``: the child's own, which load on a shared machine inflates less
than the wall time).

Source trees are byte-compiled first (a real install has its .pyc files; this environment sets
PYTHONDONTWRITEBYTECODE, which would otherwise make every run compile rowstream anew).

    python bench/bench_startup.py                          # this checkout, 10 runs each
    python bench/bench_startup.py --before /tmp/old/src    # and an older tree, same run
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

SRC = Path(__file__).resolve().parents[1] / "src"


def commands(pg_url: str, work: Path) -> list[tuple[str, list[str]]]:
    """(name, argv after the interpreter) for each measured command."""
    sqlite = work / "one.db"
    with sqlite3.connect(sqlite) as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT OR REPLACE INTO t VALUES (1, 'a')")
    export = ["-m", "rowstream", "export"]
    return [
        ("import rowstream", ["-c", "import rowstream"]),
        ("import rowstream._cli", ["-c", "import rowstream._cli"]),
        ("rowstream --help", ["-m", "rowstream", "--help"]),
        ("rowstream export --help", [*export, "--help"]),
        (
            "export 1 row, SQLite -> CSV",
            [*export, f"sqlite:///{sqlite}", "--table", "t", "-o", str(work / "1.csv"), "-q"],
        ),
        (
            "export 1 row, PostgreSQL -> CSV",
            [*export, pg_url, "--query", "SELECT 1 AS x", "-o", str(work / "pg.csv"), "-q"],
        ),
        (
            "export 1 row, PostgreSQL -> Parquet",
            [*export, pg_url, "--query", "SELECT 1 AS x", "-o", str(work / "pg.parquet"), "-q"],
        ),
    ]


FLOORS: list[tuple[str, list[str]]] = [
    ("floor: python -c pass", ["-c", "pass"]),
    ("floor: import sqlalchemy", ["-c", "import sqlalchemy"]),
    # What a COPY export from a URL loads at least (it never needs sqlalchemy.ext.asyncio).
    (
        "floor: sqlalchemy + asyncpg dialect + asyncpg",
        ["-c", "import asyncio, sqlalchemy.dialects.postgresql.asyncpg, asyncpg"],
    ),
    (
        "floor: sqlalchemy.ext.asyncio + asyncpg",
        ["-c", "import sqlalchemy.ext.asyncio, sqlalchemy.dialects.postgresql.asyncpg"],
    ),
]


def peers(pg_url: str, work: Path) -> list[tuple[str, list[str]]]:
    """(name, full argv) of the peer tools measured in the same run: psql's 1-row ``\\copy``."""
    psql = shutil.which("psql")
    if psql is None:
        return []
    copy = f"\\copy (SELECT 1 AS x) TO '{work / 'psql.csv'}' WITH CSV HEADER"
    return [("peer: psql \\copy 1 row -> CSV", [psql, "-X", "-q", pg_url, "-c", copy])]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=_common.DEFAULT_PG_DSN, help="PostgreSQL URL")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", type=Path, help="an older src/ tree to measure alongside")
    args = parser.parse_args()

    trees = [("", SRC)] + ([("before: ", args.before)] if args.before else [])
    for _, tree in trees:
        compileall.compile_dir(str(tree), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plan: list[tuple[str, list[str], dict[str, str]]] = []
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for name, argv in FLOORS:
            plan.append((name, [sys.executable, *argv], base_env))
        for name, argv in peers(args.pg, work):
            plan.append((name, argv, base_env))
        for label, tree in trees:
            env = {**base_env, "PYTHONPATH": str(tree)}
            for name, argv in commands(args.pg, work):
                plan.append((label + name, [sys.executable, *argv], env))
        walls: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        cpus: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        for _name, argv, env in plan:  # warm the page cache
            run_once(argv, env)
        for _ in range(args.runs):
            for name, argv, env in plan:
                wall, cpu = run_once(argv, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
    floor = statistics.median(walls[FLOORS[0][0]])
    print(f"median of {args.runs} runs each; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| command | wall s | CPU s | wall above python -c pass |")
    print("|---|---|---|---|")
    for name, _, _ in plan:
        wall = statistics.median(walls[name])
        print(
            f"| {name} | {wall:.3f} | {statistics.median(cpus[name]):.3f} | {wall - floor:+.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
