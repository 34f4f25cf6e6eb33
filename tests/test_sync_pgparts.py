"""A distributed export's part on the sync face (psycopg COPY text, ADBC Parquet), on a real
PostgreSQL: the bytes of the async export, at the coordinator's snapshot, under gevent too."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

import rowstream
from rowstream._dataset import PartRecord
from rowstream._exceptions import UnsupportedQueryError
from rowstream._snapshot import SnapshotError, SnapshotInfo
from rowstream._sync._pgparts import PgPart, write_part
from rowstream.celery import _part_plans

TABLE = "pgparts_t"
ROWS = 5_000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table(pg_url: str) -> str:
    with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, n numeric(12, 3), t timestamptz, "
            "j json, b jsonb, a int[], raw bytea, note text)"
        )
        # Backslashes and quotes in JSON strings (COPY text doubles them), NULL everywhere,
        # an array holding NULL, a json whose keys repeat; one row of 3 MB (sliced unescaping).
        conn.execute(
            f"""INSERT INTO {TABLE}
            SELECT g, g * 1.125, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
                   CASE WHEN g % 7 = 0 THEN NULL ELSE '{{"k": 1, "k": "a\\\\b"}}'::json END,
                   jsonb_build_object('path', 'C:\\' || g, 'q', '"'),
                   CASE WHEN g % 5 = 0 THEN NULL ELSE ARRAY[g, g + 1, NULL] END,
                   decode('5c' || lpad(to_hex(g), 8, '0'), 'hex'),
                   CASE WHEN g = 42 THEN repeat('\\', 3000000) ELSE 'row ' || g END
            FROM generate_series(1, {ROWS}) g"""
        )
    return TABLE


def _libpq(url: str) -> str:
    import sqlalchemy as sa

    from rowstream._pgarrow import libpq_conninfo

    return libpq_conninfo(sa.make_url(url))


@contextlib.contextmanager
def _held(url: str) -> Iterator[SnapshotInfo]:
    """A snapshot exported and held by this test, as a coordinator holds it."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot(), pg_current_snapshot()::text").fetchone()
        assert row is not None
        yield SnapshotInfo(
            "postgresql", "pg_export_snapshot", True, id=row[0], point=row[1], taken_at=""
        )
        conn.execute("ROLLBACK")


def _plans(
    url: str, fmt: str, snapshot: SnapshotInfo, bounds: list[dict[str, object]]
) -> list[PgPart]:
    """The coordinator's plan of each part, as rowstream.celery.export makes it."""
    records = {f"p{i}": PartRecord(i, f"part-{i}", b) for i, b in enumerate(bounds)}

    async def plan() -> dict[str, dict[str, object]]:
        engine = rowstream.create_engine(url)
        try:
            return await _part_plans(engine, TABLE, None, None, fmt, None, snapshot, records, 30.0)
        finally:
            await engine.dispose()

    return [PgPart.from_dict(p) for p in asyncio.run(plan()).values()]


def _reference(url: str, fmt: str, tmp_path: Path) -> Path:
    path = tmp_path / f"reference.{fmt}"
    rowstream.sync.export(url, TABLE, path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_whole_table_part_is_the_single_export(
    pg_url: str, table: str, tmp_path: Path, fmt: str
) -> None:
    reference = _reference(pg_url, fmt, tmp_path)
    with _held(pg_url) as snapshot:
        (part,) = _plans(pg_url, fmt, snapshot, [{"kind": "all"}])
        rows, size = write_part(pg_url, part, tmp_path / f"part.{fmt}")
    assert rows == ROWS
    out = tmp_path / f"part.{fmt}"
    assert size == out.stat().st_size
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(reference))
    else:
        assert (
            hashlib.sha256(out.read_bytes()).digest()
            == hashlib.sha256(reference.read_bytes()).digest()
        )
    if fmt == "jsonl":
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines[41]["note"] == "\\" * 3_000_000
        assert lines[0]["b"] == {"path": "C:\\1", "q": '"'}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_parts_at_the_snapshot_ignore_later_writes(
    pg_url: str, table: str, tmp_path: Path, fmt: str
) -> None:
    # Two ctid ranges that cover the table; rows deleted after the snapshot are still read.
    bounds: list[dict[str, object]] = [
        {"kind": "ctid", "lower": None, "upper": 40},
        {"kind": "ctid", "lower": 40, "upper": None},
    ]
    with _held(pg_url) as snapshot:
        with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
            conn.execute(f"DELETE FROM {TABLE} WHERE id % 2 = 0")
        counts = [
            write_part(pg_url, part, tmp_path / f"part-{i}.{fmt}")[0]
            for i, part in enumerate(_plans(pg_url, fmt, snapshot, bounds))
        ]
    assert all(counts) and sum(counts) == ROWS


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_snapshot_no_longer_held_fails_at_once_and_writes_nothing(
    pg_url: str, table: str, tmp_path: Path, fmt: str
) -> None:
    with _held(pg_url) as snapshot:
        (part,) = _plans(pg_url, fmt, snapshot, [{"kind": "all"}])
    out = tmp_path / f"part.{fmt}"
    with pytest.raises(SnapshotError, match=f"cannot join snapshot {snapshot.id}"):
        write_part(pg_url, part, out)
    assert list(tmp_path.iterdir()) == []


def test_a_plan_that_writes_is_refused_before_it_is_sent(
    pg_url: str, table: str, tmp_path: Path
) -> None:
    with _held(pg_url) as snapshot:
        (part,) = _plans(pg_url, "csv", snapshot, [{"kind": "all"}])
        tampered = PgPart(f"DELETE FROM {TABLE} RETURNING *", (), "csv", None, snapshot)
        with pytest.raises(UnsupportedQueryError):
            write_part(pg_url, tampered, tmp_path / "x.csv")
    with psycopg.connect(_libpq(pg_url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert row is not None and row[0] == ROWS
    assert part.sql.startswith("SELECT")
    assert list(tmp_path.iterdir()) == []


def test_parts_written_by_gevent_greenlets_at_once(pg_url: str, table: str, tmp_path: Path) -> None:
    """What a Celery worker's gevent pool does: greenlets writing parts concurrently in one
    thread (an event loop per part would fail: "asyncio.run() cannot be called from a running
    event loop")."""
    bounds: list[dict[str, object]] = [
        {"kind": "ctid", "lower": None, "upper": 40},
        {"kind": "ctid", "lower": 40, "upper": None},
    ]
    with _held(pg_url) as snapshot:
        plans = [
            *_plans(pg_url, "csv", snapshot, bounds),
            *_plans(pg_url, "parquet", snapshot, bounds),
        ]
        specs = tmp_path / "plans.json"
        specs.write_text(json.dumps([p.as_dict() for p in plans]))
        script = textwrap.dedent(
            f"""
            from gevent import monkey
            monkey.patch_all()
            import gevent, json, sys
            from pathlib import Path
            from rowstream._sync._pgparts import PgPart, write_part

            plans = [PgPart.from_dict(p) for p in json.loads(Path({str(specs)!r}).read_text())]
            out = Path({str(tmp_path)!r})
            jobs = [
                gevent.spawn(write_part, {pg_url!r}, p, out / f"g{{i}}.{{p.format}}")
                for i, p in enumerate(plans)
            ]
            gevent.joinall(jobs, timeout=120, raise_error=True)
            print(json.dumps([j.value[0] for j in jobs]))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=180,
            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts[0] + counts[1] == ROWS and counts[2] + counts[3] == ROWS
    csv_rows = sum(len((tmp_path / f"g{i}.csv").read_bytes().splitlines()) - 1 for i in (0, 1))
    assert csv_rows == ROWS
    assert sum(pq.read_table(tmp_path / f"g{i}.parquet").num_rows for i in (2, 3)) == ROWS


class _SilencingProxy:
    """A loopback TCP proxy that goes silent (sockets open, nothing passes) once ``after``
    bytes came from the server: a network lost behind a proxy or a pooler, which TCP
    keepalive between the client and the proxy never notices."""

    def __init__(self, host: str, port: int, after: int) -> None:
        self._target = (host, port)
        self._after = after
        self._down = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def silent(self) -> bool:
        return self._down >= self._after

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
                self._sockets += [client, upstream]
                threading.Thread(
                    target=self._pipe, args=(client, upstream, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pipe, args=(upstream, client, True), daemon=True
                ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.silent:
                    continue  # lost
                if down:
                    with self._lock:
                        self._down += len(data)
                dst.sendall(data)

    def close(self) -> None:
        """Cut every connection (the server's backends see them end, and leave)."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pipes blocked reading it
            sock.close()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_network_gone_silent_mid_part_fails_it_within_the_read_deadline(
    pg_url: str, table: str, tmp_path: Path, fmt: str
) -> None:
    import sqlalchemy as sa

    from rowstream._watchdog import CANCEL_GRACE, LIVENESS_TIMEOUT

    with _held(pg_url) as snapshot:
        (part,) = _plans(pg_url, fmt, snapshot, [{"kind": "all"}])
        target = sa.make_url(pg_url)
        # Past the connection's start and the snapshot's import, inside the COPY's data.
        proxy = _SilencingProxy(target.host or "127.0.0.1", target.port or 5432, 1_000_000)
        proxied = target.set(host="127.0.0.1", port=proxy.port)
        out = tmp_path / f"part.{fmt}"
        started = time.monotonic()
        try:
            with pytest.raises(rowstream.ConnectionLostError) as caught:
                write_part(proxied, part, out, read_timeout=1.0)
        finally:
            proxy.close()
    took = time.monotonic() - started
    assert proxy.silent
    assert took < 1.0 + LIVENESS_TIMEOUT + CANCEL_GRACE + 5, took
    assert "within read_timeout=1s" in str(caught.value)
    assert "nothing was written to the target" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
