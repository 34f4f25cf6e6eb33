"""The binary COPY path's own parts: the libpq connection string and the bounded pipeline.

Its output (every type, through PgBouncer, the fall-back) is checked in test_export_pg.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

import rowstream
from rowstream._pgarrow import CONNECT_TIMEOUT, QUEUE_BATCHES, _Pump, libpq_conninfo
from rowstream._watchdog import LIBPQ_KEEPALIVE

# libpq's parser gives every value back as text.
KEEPALIVE = {k: str(v) for k, v in LIBPQ_KEEPALIVE.items()}
KEEPALIVE["connect_timeout"] = str(CONNECT_TIMEOUT)


def test_conninfo_is_what_libpq_parses() -> None:
    url = sa.make_url(
        "postgresql+asyncpg://app:it's a \\ secret@db.example:6432/shop"
        "?ssl=true&prepared_statement_cache_size=0&options=-c%20work_mem%3D64MB"
    )
    # libpq's own parser (through psycopg) reads back exactly what the URL says.
    assert conninfo_to_dict(libpq_conninfo(url)) == {
        "host": "db.example",
        "port": "6432",
        "user": "app",
        "password": "it's a \\ secret",
        "dbname": "shop",
        "application_name": "rowstream",
        **KEEPALIVE,
        "sslmode": "require",
        "options": "-c work_mem=64MB",
    }


def test_conninfo_keeps_a_socket_directory() -> None:
    url = sa.make_url("postgresql://app@/shop?host=/var/run/postgresql")
    assert conninfo_to_dict(libpq_conninfo(url)) == {
        "host": "/var/run/postgresql",
        "user": "app",
        "dbname": "shop",
        "application_name": "rowstream",
        **KEEPALIVE,
    }


async def test_queue_stays_bounded(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thousands of small batches: the reader waits on the queue, never piles them up.
    pumps: list[_Pump] = []
    original = _Pump.__init__

    def spy(self: _Pump, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        pumps.append(self)

    monkeypatch.setattr(_Pump, "__init__", spy)
    monkeypatch.setattr("rowstream._pgarrow.BATCH_BYTES", 16 * 1024)
    query = sa.text(
        "SELECT i AS id, md5(i::text) AS note FROM generate_series(1, 200000) i ORDER BY i"
    )
    out = tmp_path / "bounded.parquet"
    report = await rowstream.export(pg_url, query, out)
    assert report.method == "copy" and report.rows == 200_000
    (pump,) = pumps
    assert 1 <= pump.high_water <= QUEUE_BATCHES
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(1, 200_001))
    assert table.schema.field("note").type == pa.string()


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _largest(directory: Path) -> int:
    """The size of the largest file in ``directory``; -1 when it is empty."""
    return max((p.stat().st_size for p in directory.iterdir()), default=-1)


async def _rowstream_backends(url: str) -> dict[int, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid, state || ': ' || query FROM pg_stat_activity "
            "WHERE application_name = 'rowstream' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        )
        return {r[0]: r[1] for r in rows}
    finally:
        await conn.close()


async def test_cancelling_stops_the_server_query(pg_url: str, tmp_path: Path) -> None:
    # In-process, so the process's exit cannot be what ends the backend: the cancellation
    # itself must cancel the COPY, close ADBC's connection and remove the temporary file.
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS arrow_cancel; CREATE TABLE arrow_cancel AS "
            "SELECT i AS id, md5(i::text) || md5((i + 1)::text) AS note "
            "FROM generate_series(1, 1500000) i",
            timeout=None,
        )
    finally:
        await conn.close()
    # Other tests' connections may linger (a PgBouncer keeps its server connections): only
    # the backends this export opens count.
    before = await _rowstream_backends(pg_url)
    target = tmp_path / "cancelled.parquet"
    task = asyncio.create_task(rowstream.export(pg_url, "arrow_cancel", target))
    try:
        for _ in range(600):
            written = _largest(tmp_path) > 1_000_000
            if written or task.done():
                break
            await asyncio.sleep(0.02)
        assert not task.done(), "the export finished before it could be cancelled"
        assert written, "the export never started writing"
        running = await _rowstream_backends(pg_url)
        assert any("COPY" in q for pid, q in running.items() if pid not in before)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _largest(tmp_path) == -1, "the temporary file is left behind"
        # Closed, not merely idle: the connection is gone (the server may take a moment to
        # notice the closed socket).
        for _ in range(50):
            now = await _rowstream_backends(pg_url)
            left = [q for pid, q in now.items() if pid not in before]
            if not left:
                break
            await asyncio.sleep(0.1)
        assert left == []
    finally:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DROP TABLE IF EXISTS arrow_cancel")
        finally:
            await conn.close()


async def test_parquet_over_tls_with_a_password(pg_tls_url: str, tmp_path: Path) -> None:
    # The server refuses TCP without TLS and asks for a scram password: ADBC's connection
    # (strategy "copy", no fall-back) must carry both from the URL, as asyncpg's does.
    query = sa.text(
        "SELECT i AS id, md5(i::text) AS note, timestamptz '2024-01-01' + i * interval '1 s' AS at "
        "FROM generate_series(1, 50000) i"
    )
    out, reference = tmp_path / "tls.parquet", tmp_path / "stream.parquet"
    report = await rowstream.export(pg_tls_url, query, out)
    assert report.method == "copy" and report.rows == 50_000
    await rowstream.export(pg_tls_url, query, reference, method="stream")
    assert pq.read_table(out).equals(pq.read_table(reference))
    wrong = sa.make_url(pg_tls_url).set(password="not-the-password-42")
    with pytest.raises(rowstream.SourceError) as failed:
        await rowstream.export(wrong, query, tmp_path / "refused.parquet")
    assert "not-the-password-42" not in str(failed.value)
    assert "password" in str(failed.value)
    assert _names(tmp_path) == ["stream.parquet", "tls.parquet"]
