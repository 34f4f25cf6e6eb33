"""The binary COPY path's own parts: the libpq connection string and the bounded pipeline.

Its output (every type, through PgBouncer, the fall-back) is checked in test_export_pg.py.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

import rowstream
from rowstream._pgarrow import QUEUE_BATCHES, _Pump, libpq_conninfo


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
    assert report.strategy == "copy" and report.rows == 200_000
    (pump,) = pumps
    assert 1 <= pump.high_water <= QUEUE_BATCHES
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(1, 200_001))
    assert table.schema.field("note").type == pa.string()
