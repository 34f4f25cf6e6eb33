"""`rowstream doctor` against real servers, as a user runs it: a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

import rowstream


def doctor(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rowstream", "doctor", url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_direct_postgresql_is_fine(pg_url: str) -> None:
    done = doctor(pg_url)
    assert done.returncode == 0, done.stderr
    assert "PostgreSQL 15" in done.stdout or "PostgreSQL 1" in done.stdout
    assert "asyncpg" in done.stdout
    assert "no (direct connection)" in done.stdout
    assert "idle_in_transaction_session_timeout" in done.stdout
    assert "prepared statements" in done.stdout and "survive" in done.stdout
    assert "server-side cursor" in done.stdout and "works (5000 rows" in done.stdout
    assert done.stdout.rstrip().endswith("streaming: ok")


def test_pgbouncer_transaction_mode_is_explained(pgbouncer_url: str) -> None:
    done = doctor(pgbouncer_url)
    assert done.returncode == 0, done.stderr
    assert "pooling by transaction" in done.stdout
    assert "named ones do not survive" in done.stdout
    assert "statement_cache_size=0" in done.stdout
    assert "keyset" in done.stdout


def test_mariadb_and_sqlite(mysql_url: str, sqlite_url: str) -> None:
    maria = doctor(mysql_url)
    assert maria.returncode == 0, maria.stderr
    assert "MariaDB" in maria.stdout and "net_write_timeout" in maria.stdout
    assert "works (5000 rows" in maria.stdout
    lite = doctor(sqlite_url)
    assert lite.returncode == 0, lite.stderr
    assert "aiosqlite" in lite.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://app:s3cret-pw@127.0.0.1:1/shop", "cannot connect"),
        ("notadb://x", "unsupported database"),
    ],
)
def test_bad_setups_exit_non_zero_with_one_line(url: str, says: str) -> None:
    done = doctor(url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_missing_database(pg_url: str) -> None:
    missing = make_url(pg_url).set(database="no_such_database_here")
    done = doctor(missing.render_as_string(hide_password=False))
    assert done.returncode != 0
    assert "does not exist" in done.stderr and "create the database" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_api_returns_a_diagnosis(pg_url: str) -> None:
    found = await rowstream.doctor(pg_url)
    assert found.ok
    facts = dict(found.facts)
    assert (
        facts["database"]
        == make_url(pg_url).set(drivername="postgresql+asyncpg").render_as_string()
    )
