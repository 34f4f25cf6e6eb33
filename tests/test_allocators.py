"""The command's allocator settings for ``--jobs``: set in its own process, never by the library.

Each case runs in a fresh Python process: pyarrow's default pool is fixed when pyarrow loads,
and glibc's arena cap belongs to the whole process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs the command in this process, then says which pool pyarrow ended up with.
_COMMAND = """
import json, sys
from rowstream._cli import main
code = main(sys.argv[1:])
import pyarrow as pa
print(json.dumps({"code": code, "pool": pa.default_memory_pool().backend_name}))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(500)])
    return f"sqlite:///{path}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_lean_for_jobs_sets_the_system_pool_before_pyarrow_loads_and_caps_the_arenas() -> None:
    code = (
        "import json; from rowstream._allocators import lean_for_jobs; "
        "done = lean_for_jobs(user_pool=None); import pyarrow as pa; "
        "print(json.dumps([done, pa.default_memory_pool().backend_name]))"
    )
    done, pool = json.loads(_python(code))
    assert pool == "system"
    assert done[0] == "ARROW_DEFAULT_MEMORY_POOL=system"
    # glibc here (Debian): mallopt accepted the cap.
    assert done[1:] == ["M_ARENA_MAX=2"]
    # Once pyarrow has loaded its pool is fixed: nothing claims to change it.
    late = (
        "import json, pyarrow; from rowstream._allocators import lean_for_jobs; "
        "print(json.dumps(lean_for_jobs(user_pool=None)))"
    )
    assert json.loads(_python(late)) == ["M_ARENA_MAX=2"]


def test_the_jobs_command_runs_on_the_system_pool_and_a_single_export_keeps_jemalloc(
    db: str, tmp_path: Path
) -> None:
    jobs = ["export", db, "--table", "t", "--jobs", "2", "-o", f"{tmp_path}/ds/", "--quiet"]
    assert json.loads(_python(_COMMAND, *jobs)) == {"code": 0, "pool": "system"}
    assert len(list((tmp_path / "ds").glob("part-*.parquet"))) == 1  # SQLite: one reader
    single = ["export", db, "--table", "t", "-o", str(tmp_path / "one.parquet"), "--quiet"]
    assert json.loads(_python(_COMMAND, *single)) == {"code": 0, "pool": "jemalloc"}


def test_a_pool_the_user_names_stands(db: str, tmp_path: Path) -> None:
    jobs = ["export", db, "--table", "t", "--jobs", "2", "-o", f"{tmp_path}/ds/", "--quiet"]
    got = json.loads(_python(_COMMAND, *jobs, env={"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}))
    assert got == {"code": 0, "pool": "mimalloc"}


def test_the_library_leaves_the_process_allocators_alone(db: str, tmp_path: Path) -> None:
    code = (
        "import asyncio, json, os, sys, pyarrow as pa, rowstream\n"
        "asyncio.run(rowstream.export(sys.argv[1], 't', sys.argv[2], jobs=2))\n"
        "print(json.dumps([pa.default_memory_pool().backend_name,"
        " os.environ.get('ARROW_DEFAULT_MEMORY_POOL')]))"
    )
    pool, variable = json.loads(_python(code, db, f"{tmp_path}/ds/"))
    plain = json.loads(
        _python(
            "import json, pyarrow as pa; print(json.dumps(pa.default_memory_pool().backend_name))"
        )
    )
    assert pool == plain and variable is None  # pyarrow's own default, untouched
