"""Bounded waits: a silent network, a slow query, a cancelled stream, a stuck handler and a
locked SQLite file each end within a known time, with one clear error (or a resume).

The silent network is a loopback TCP proxy written here: when it goes silent it keeps every
socket open and drops whatever arrives, as a network that loses packets without a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import rowstream
import rowstream.sync
from rowstream._watchdog import CANCEL_GRACE, LIVENESS_TIMEOUT
from tests import faults

ROWS = 20_000
TABLE = sa.table(faults.TABLE, sa.column("id"), sa.column("v"), sa.column("pad"))
READ_TIMEOUT = 1.0
# The documented bound: the read timeout, the liveness check, the cancel grace, clean-up.
BOUND = READ_TIMEOUT + LIVENESS_TIMEOUT + CANCEL_GRACE + 1.5


class SilentProxy:
    """A TCP proxy whose network can go silent: sockets stay open, nothing gets through."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.silent = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if not self.silent:  # silent: the packets are lost
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture(scope="module")
def timeout_table(servers: Any) -> None:
    faults.make_table(servers.pg_url, ROWS)
    faults.make_table(servers.mysql_url, ROWS)


@pytest.fixture(params=["postgresql", "mariadb"])
async def proxied(
    request: pytest.FixtureRequest, pg_url: str, mysql_url: str, timeout_table: None
) -> AsyncIterator[tuple[SilentProxy, str]]:
    url = make_url(pg_url if request.param == "postgresql" else mysql_url)
    proxy = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    yield proxy, url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    await proxy.close()


def _through(url: str, strategy: str, **options: Any) -> rowstream.RowStream:
    """A stream of the fault table through the proxy at ``url``."""
    statement = options.pop("statement", sa.select(TABLE))
    return rowstream.stream(url, statement, strategy=strategy, **options)


def _strategies(url: str) -> list[str]:
    # A MariaDB cursor's rows wait in the client's socket buffer (megabytes) and keep coming
    # for a while after the network went silent; a keyset page asks the server every time.
    return ["keyset"] if faults.is_mysql(url) else ["cursor", "keyset"]


async def test_a_silent_network_is_an_error_within_the_bound(
    proxied: tuple[SilentProxy, str],
) -> None:
    proxy, url = proxied
    for strategy in _strategies(url):
        proxy.silent = False
        silenced = 0.0
        with pytest.raises(rowstream.ResumeError) as caught:
            async with _through(
                url, strategy, batch_rows=1_000, read_timeout=READ_TIMEOUT, retries=0
            ) as rows:
                async for _batch in rows.batches():
                    if not silenced:
                        proxy.silent = True
                        silenced = time.monotonic()
        waited = time.monotonic() - silenced
        assert waited < BOUND, f"{strategy}: {waited:.1f}s"
        lost = caught.value.__cause__
        assert isinstance(lost, rowstream.ConnectionLostError)
        assert f"within read_timeout={READ_TIMEOUT:g}s" in str(lost)


async def test_a_network_silent_from_the_start_is_an_error_within_the_bound(
    proxied: tuple[SilentProxy, str],
) -> None:
    proxy, url = proxied
    proxy.silent = True
    started = time.monotonic()
    with pytest.raises(rowstream.ConnectionLostError, match=r"within read_timeout=1s"):
        async with _through(url, "auto", read_timeout=READ_TIMEOUT) as rows:
            async for _ in rows:
                pass
    assert time.monotonic() - started < READ_TIMEOUT + CANCEL_GRACE + 1.5


async def test_a_stream_resumes_when_the_network_speaks_again(
    proxied: tuple[SilentProxy, str],
) -> None:
    proxy, url = proxied
    loop = asyncio.get_running_loop()
    for strategy in _strategies(url):
        proxy.silent = False
        expected = 1
        async with _through(
            url,
            strategy,
            statement=sa.select(TABLE.c.id),
            batch_rows=1_000,
            read_timeout=READ_TIMEOUT,
            backoff=0.5,
        ) as rows:
            async for batch in rows.batches():
                assert [r.id for r in batch] == list(range(expected, expected + len(batch)))
                expected += len(batch)
                if expected == 5_001:
                    proxy.silent = True
                    loop.call_later(2.0, setattr, proxy, "silent", False)
        assert expected == ROWS + 1
        assert rows.stats.reconnects >= 1


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
async def test_cancel_on_a_silent_network_returns_within_two_seconds(
    proxied: tuple[SilentProxy, str], strategy: str
) -> None:
    proxy, url = proxied
    stuck = asyncio.Event()

    async def read() -> None:
        # A URL: the engine is rowstream's, and its clean-up (dispose) is part of the cancel.
        async with _through(url, strategy, batch_rows=500, read_timeout=None) as rows:
            async for _batch in rows.batches():
                proxy.silent = True
                stuck.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(stuck.wait(), 30)
    await asyncio.sleep(0.5)
    assert not task.done()
    started = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    took = time.monotonic() - started
    assert task.cancelled()
    assert took < 2.0, f"cancel took {took:.2f}s"


@pytest.mark.parametrize("path", ["postgresql", "mariadb"])
async def test_a_slow_first_row_is_waited_for_while_the_server_works(
    pg_url: str, mysql_url: str, path: str
) -> None:
    url, sleep = (pg_url, "pg_sleep(2.5)") if path == "postgresql" else (mysql_url, "SLEEP(2.5)")
    started = time.monotonic()
    async with rowstream.stream(url, f"SELECT {sleep} AS s, 7 AS n", read_timeout=1.0) as rows:
        got = [row.n async for row in rows]
    assert got == [7]
    assert time.monotonic() - started >= 2.5
    assert rows.stats.reconnects == 0


async def test_behind_a_pooler_a_slow_first_row_counts_as_silence(pgbouncer_url: str) -> None:
    """PgBouncer hides the backend, so the liveness check cannot see the server at work:
    the docs say to raise read_timeout (or pass None) there."""
    with pytest.raises(rowstream.ConnectionLostError, match=r"read_timeout=0\.5s"):
        async with rowstream.stream(
            pgbouncer_url, "SELECT pg_sleep(2) AS s", read_timeout=0.5
        ) as rows:
            async for _ in rows:
                pass


# Both faces: batches of 1,000 rows, and a handler gets half a second.
STUCK: dict[str, Any] = {"batch_rows": 1_000, "handler_timeout": 0.5}


def _idle_in_transaction(pg_url: str, name: str) -> list[Any]:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        return admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND state LIKE 'idle in transaction%%'",
            (name,),
        ).fetchall()


async def test_a_stuck_handler_is_stopped_by_handler_timeout(
    pg_url: str, timeout_table: None
) -> None:
    name = f"rs-stuck-{uuid.uuid4().hex[:8]}"
    engine = rowstream.create_engine(
        pg_url, connect_args={"server_settings": {"application_name": name}}
    )

    async def stuck(batch: list[Any]) -> None:
        await asyncio.sleep(3600)

    seen_stuck: list[list[Any]] = []

    async def one_stuck(batch: list[Any]) -> None:
        if not seen_stuck:
            seen_stuck.append(batch)
            await asyncio.sleep(3600)

    try:
        started = time.monotonic()
        with pytest.raises(rowstream.HandlerTimeoutError, match=r"handler_timeout=0\.5s"):
            await rowstream.process(engine, sa.select(TABLE.c.id), stuck, **STUCK)
        assert time.monotonic() - started < 5
        assert _idle_in_transaction(pg_url, name) == []
        # Collect mode: the stuck batch is a failure, the run goes on.
        report = await rowstream.process(
            engine, sa.select(TABLE.c.id), one_stuck, on_error="collect", **STUCK
        )
        assert [type(f.error) for f in report.failures] == [rowstream.HandlerTimeoutError]
        assert report.rows + report.failed_rows == ROWS
        assert _idle_in_transaction(pg_url, name) == []
    finally:
        await engine.dispose()


def test_a_stuck_handler_is_stopped_by_handler_timeout_in_the_sync_face(
    pg_url: str, timeout_table: None
) -> None:
    name = f"rs-stuck-{uuid.uuid4().hex[:8]}"
    engine = rowstream.sync.create_engine(pg_url, connect_args={"application_name": name})
    release = threading.Event()
    calls: list[int] = []

    def stuck_once(batch: list[Any]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            release.wait(30)  # a thread cannot be interrupted: it is let go at the end

    try:
        started = time.monotonic()
        with pytest.raises(rowstream.HandlerTimeoutError, match="runs on in the background"):
            rowstream.sync.process(engine, sa.select(TABLE.c.id), stuck_once, **STUCK)
        assert time.monotonic() - started < 5
        assert _idle_in_transaction(pg_url, name) == []
        calls.clear()
        report = rowstream.sync.process(
            engine, sa.select(TABLE.c.id), stuck_once, on_error="collect", **STUCK
        )
        assert len(report.failures) == 1
        assert report.rows == ROWS - report.failures[0].rows
        assert _idle_in_transaction(pg_url, name) == []
    finally:
        release.set()
        engine.dispose()


def _sqlite_with_rows(path: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, i) for i in range(1, 1001)])
    db.close()


def _writer(path: str) -> Any:
    def write(batch: list[Any]) -> None:
        db = sqlite3.connect(path, timeout=0.2)
        try:
            with db:
                db.execute("UPDATE t SET v = v + 1 WHERE id = ?", (batch[0].id,))
        finally:
            db.close()

    return write


async def test_a_handler_writing_to_the_sqlite_file_being_read_gets_a_clear_message(
    tmp_path: Any,
) -> None:
    path = str(tmp_path / "locked.db")
    _sqlite_with_rows(path)
    message = r"the SQLite database is locked: .* WAL mode .* another database"
    with pytest.raises(rowstream.QueryError, match=message) as caught:
        await rowstream.process(
            f"sqlite:///{path}", "SELECT id FROM t", _writer(path), batch_rows=100
        )
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "\n" not in caught.value.message
    with pytest.raises(rowstream.QueryError, match=message):
        rowstream.sync.process(
            f"sqlite:///{path}", "SELECT id FROM t", _writer(path), batch_rows=100
        )
    # In WAL mode the same handler works.
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    report = await rowstream.process(
        f"sqlite:///{path}", "SELECT id FROM t", _writer(path), batch_rows=100
    )
    assert report.rows == 1000


@pytest.fixture
def proxy_thread(pg_url: str, timeout_table: None) -> Iterator[tuple[SilentProxy, str]]:
    """A SilentProxy in front of PostgreSQL, on an event loop of its own (for the sync face)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = make_url(pg_url)
    proxy = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    port = asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
    yield proxy, url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_a_silent_network_is_an_error_within_the_bound_in_the_sync_face(
    proxy_thread: tuple[SilentProxy, str],
) -> None:
    # The sync face is generated from the async one: the same bound, the same resume
    # (given no retries here, the drop ends the stream as a ResumeError).
    proxy, url = proxy_thread
    for strategy in ("cursor", "keyset"):
        proxy.silent = False
        silenced = 0.0
        with (
            pytest.raises(rowstream.ResumeError) as caught,
            rowstream.sync.stream(
                url,
                sa.select(TABLE),
                batch_rows=1_000,
                read_timeout=READ_TIMEOUT,
                strategy=strategy,
                retries=0,
            ) as rows,
        ):
            for _batch in rows.batches():
                if not silenced:
                    proxy.silent = True
                    silenced = time.monotonic()
        waited = time.monotonic() - silenced
        assert waited < BOUND, f"{strategy}: {waited:.1f}s"
        lost = caught.value.__cause__
        assert isinstance(lost, rowstream.ConnectionLostError)
        assert f"within read_timeout={READ_TIMEOUT:g}s" in str(lost)


async def test_timeouts_are_checked_before_anything_is_sent(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(rowstream.ConfigurationError, match="read_timeout must be a positive"):
        rowstream.stream(url, "SELECT 1", read_timeout=0)
    with pytest.raises(rowstream.ConfigurationError, match="handler_timeout must be a positive"):
        await rowstream.process(url, "SELECT 1", print, handler_timeout=-1)
    with pytest.raises(rowstream.ConfigurationError, match="read_timeout must be a positive"):
        rowstream.sync.stream(url, "SELECT 1", read_timeout=True)  # type: ignore[arg-type]
    assert not (tmp_path / "never.db").exists()


@pytest.fixture
async def pg_proxied(pg_url: str, timeout_table: None) -> AsyncIterator[tuple[SilentProxy, str]]:
    url = make_url(pg_url)
    proxy = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    yield proxy, url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    await proxy.close()


def _long_copy(times: int) -> Any:
    """The fault table ``times`` over: 20 times is about 400 MB, long enough that a COPY is
    still sending when the network goes silent."""
    return sa.text(f"SELECT t.* FROM {faults.TABLE} t CROSS JOIN generate_series(1, {times}) g")


async def _silence_then_expect_a_rerun(
    proxy: SilentProxy, export: asyncio.Future[Any], tmp_path: Any
) -> None:
    """Silence the network under a running export: it ends within the bound, says to run it
    again, and leaves nothing in ``tmp_path``."""
    proxy.silent = True
    silenced = time.monotonic()
    with pytest.raises(rowstream.ConnectionLostError) as caught:
        await asyncio.wait_for(export, 30)
    assert time.monotonic() - silenced < BOUND
    assert f"within read_timeout={READ_TIMEOUT:g}s" in str(caught.value)
    assert "run the export again" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("when", ["from the start", "in the middle"])
async def test_a_silent_network_ends_a_copy_export_within_the_bound(
    pg_proxied: tuple[SilentProxy, str], fmt: str, when: str, tmp_path: Any
) -> None:
    proxy, url = pg_proxied
    target = tmp_path / f"out.{fmt}"
    export = asyncio.ensure_future(
        rowstream.export(url, _long_copy(20), target, read_timeout=READ_TIMEOUT)
    )
    if when == "in the middle":
        # Silent once the COPY's data is arriving: the temporary file beside the target grows.
        for _ in range(200):
            if any(p.stat().st_size > 1_000_000 for p in tmp_path.iterdir()):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the COPY sent nothing within 10 s")
    await _silence_then_expect_a_rerun(proxy, export, tmp_path)


async def test_a_silent_network_ends_an_adbc_parquet_export_within_the_bound(
    pg_proxied: tuple[SilentProxy, str], tmp_path: Any
) -> None:
    proxy, url = pg_proxied
    target = tmp_path / "out.parquet"
    # About 4 GB of rows (a small file: the padding compresses), read for many seconds.
    export = asyncio.ensure_future(
        rowstream.export(url, _long_copy(200), target, read_timeout=READ_TIMEOUT)
    )
    await asyncio.sleep(1.5)  # connected, the binary COPY streaming
    assert not export.done(), "the export ended before the network went silent"
    await _silence_then_expect_a_rerun(proxy, export, tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_a_slow_first_row_of_a_copy_export_is_waited_for(
    pg_url: str, fmt: str, tmp_path: Any
) -> None:
    # A URL's COPY runs on a bare asyncpg connection (no AsyncEngine): its liveness check
    # connects the same way, and sees the server at work for 2.5 s before the first row.
    target = tmp_path / f"slow.{fmt}"
    report = await rowstream.export(
        pg_url,
        sa.text("SELECT g AS n FROM pg_sleep(2.5), generate_series(1, 3) g"),
        target,
        read_timeout=READ_TIMEOUT,
    )
    assert (report.rows, report.method) == (3, "copy")
    assert target.read_text().splitlines()[-1] == ("3" if fmt == "csv" else '{"n": 3}')


async def test_a_slow_first_batch_of_an_adbc_export_is_waited_for(
    pg_url: str, tmp_path: Any
) -> None:
    # The server works for 2.5 s before the first row: busy, not silent.
    target = tmp_path / "slow.parquet"
    report = await rowstream.export(
        pg_url,
        sa.text("SELECT g AS n FROM pg_sleep(2.5), generate_series(1, 3) g"),
        target,
        read_timeout=READ_TIMEOUT,
    )
    assert report.rows == 3
    assert report.method == "copy"
