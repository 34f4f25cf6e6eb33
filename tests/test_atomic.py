"""A full disk is a SinkError about the disk, and leaves nothing half-written.

The disk is real: a 2 MB tmpfs mounted for the test (as root) and unmounted after it. The
exports are larger than that, on every path that writes: PostgreSQL's COPY (CSV, JSONL), its
Parquet through ADBC, and the generic stream path on MariaDB and SQLite.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import rowstream
from rowstream import SinkError

ROWS = 200_000  # about 14 MB of CSV, 7 MB compressed: well past the 2 MB disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, timeout=30
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


def _query(dialect: str) -> str:
    if dialect == "mariadb":
        return f"SELECT seq AS id, concat(md5(seq), md5(seq + 1)) AS note FROM seq_1_to_{ROWS}"
    if dialect == "sqlite":
        return (
            "WITH RECURSIVE s(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM s "
            f"WHERE id < {ROWS}) SELECT id, hex(randomblob(32)) AS note FROM s"
        )
    return (
        "SELECT i AS id, md5(i::text) || md5((i + 1)::text) AS note "
        f"FROM generate_series(1, {ROWS}) i"
    )


def assert_disk_full(error: SinkError, target: Path) -> None:
    message = str(error)
    assert f"cannot write {str(target)!r}: no space left on device" in message
    assert "free some space or write elsewhere" in message
    assert "connect" not in message and "server" not in message
    assert os.listdir(target.parent) == []  # neither the target nor a temporary file


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet", "csv.gz"])
async def test_a_full_disk_on_postgresql(pg_url: str, small_disk: Path, suffix: str) -> None:
    target = small_disk / f"out.{suffix}"
    statement = sa.text(_query("postgresql"))
    with pytest.raises(SinkError) as caught:
        await rowstream.export(pg_url, statement, target)
    assert_disk_full(caught.value, target)
    # The disk is usable again: nothing was left taking its space.
    assert shutil.disk_usage(small_disk).used < 100_000


@pytest.mark.parametrize("dialect", ["mariadb", "sqlite"])
async def test_a_full_disk_on_the_stream_path(
    mysql_url: str, sqlite_url: str, small_disk: Path, dialect: str
) -> None:
    url = mysql_url if dialect == "mariadb" else sqlite_url
    if dialect == "sqlite":
        engine = rowstream.create_engine(sqlite_url)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x int)")
        await engine.dispose()
    for suffix in ("csv", "parquet"):
        target = small_disk / f"out.{suffix}"
        with pytest.raises(SinkError) as caught:
            await rowstream.export(url, sa.text(_query(dialect)), target)
        assert_disk_full(caught.value, target)


async def test_a_full_disk_on_the_command_line(pg_url: str, small_disk: Path) -> None:
    target = small_disk / "out.csv"
    sql = _query("postgresql")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rowstream", "export", pg_url, "-o", str(target), "--query", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rowstream: error: cannot write {str(target)!r}: no space left")
    assert os.listdir(small_disk) == []
