"""Resume after a dropped connection: a terminated backend, a restarted pooler connection and a
cut network, directly and through PgBouncer, with both strategies.

The stream must finish with every row exactly once, in key order.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream

ROWS = 2_000_000
KILL_AT = 300_000
TABLE = sa.table("rs_resume", sa.column("id"), sa.column("v"))


@pytest.fixture(scope="module")
def resume_table(servers: object) -> Iterator[None]:
    pg_url: str = servers.pg_url  # type: ignore[attr-defined]

    async def build() -> None:
        conn = await asyncpg.connect(_dsn(pg_url))
        try:
            await conn.execute("DROP TABLE IF EXISTS rs_resume")
            await conn.execute("CREATE TABLE rs_resume (id bigint PRIMARY KEY, v int NOT NULL)")
            await conn.execute(
                f"INSERT INTO rs_resume SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g"
            )
            await conn.execute("ANALYZE rs_resume")
        finally:
            await conn.close()

    asyncio.run(build())
    yield


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _engine(url: str, name: str) -> AsyncEngine:
    return rowstream.create_engine(
        url, connect_args={"server_settings": {"application_name": name}}
    )


async def _terminate(pg_url: str, name: str) -> int:
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        return len(rows)
    finally:
        await admin.close()


async def _stream_with(
    engine: AsyncEngine, strategy: str, at: int, drop: object
) -> rowstream.Stats:
    expected = 1
    async with rowstream.stream(
        engine,
        sa.select(TABLE),
        strategy=strategy,
        key="id",
        backoff=0.05,  # type: ignore[arg-type]
    ) as rows:
        async for row in rows:
            assert row.id == expected, f"expected id {expected}, got {row.id}"
            expected += 1
            if expected == at:
                await drop()  # type: ignore[operator]
    assert expected == ROWS + 1
    return rows.stats


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
@pytest.mark.parametrize("path", ["direct", "pgbouncer"])
async def test_terminated_backend_resumes_exactly(
    resume_table: None, pg_url: str, pgbouncer_url: str, strategy: str, path: str
) -> None:
    name = f"rs-resume-{uuid.uuid4().hex[:8]}"
    engine = _engine(pg_url if path == "direct" else pgbouncer_url, name)
    killed: list[int] = []

    async def drop() -> None:
        killed.append(await _terminate(pg_url, name))

    try:
        stats = await _stream_with(engine, strategy, KILL_AT, drop)
    finally:
        await engine.dispose()
    assert killed and killed[0] >= 1
    assert stats.rows == ROWS
    assert stats.strategy == strategy
    if strategy == "cursor":
        # The cursor's backend was in the middle of the stream: it had to reconnect.
        assert stats.reconnects >= 1


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
async def test_pgbouncer_dropping_every_connection_resumes_exactly(
    resume_table: None, pgbouncer_url: str, strategy: str
) -> None:
    """PgBouncer's admin KILL drops every client and server connection of the database, as a
    PgBouncer restart does; RESUME lets new ones in again."""
    url = make_url(pgbouncer_url)
    admin_dsn = url.set(drivername="postgresql", database="pgbouncer")
    engine = _engine(pgbouncer_url, f"rs-resume-{uuid.uuid4().hex[:8]}")

    async def drop() -> None:
        # The admin console speaks only the simple query protocol: execute() without arguments.
        admin = await asyncpg.connect(
            admin_dsn.render_as_string(hide_password=False), statement_cache_size=0
        )
        try:
            await admin.execute(f'KILL "{url.database}"')
            await admin.execute(f'RESUME "{url.database}"')
        finally:
            await admin.close()

    try:
        stats = await _stream_with(engine, strategy, KILL_AT, drop)
    finally:
        await engine.dispose()
    assert stats.rows == ROWS
    if strategy == "cursor":
        assert stats.reconnects >= 1


class CuttableProxy:
    """A TCP proxy in front of PostgreSQL whose connections can be cut, like a network."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    url = make_url(pg_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    yield proxy, url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    await proxy.close()


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
async def test_cut_network_resumes_exactly(
    resume_table: None, proxy: tuple[CuttableProxy, str], strategy: str
) -> None:
    cuttable, url = proxy
    engine = _engine(url, "rs-resume-cut")

    async def drop() -> None:
        cuttable.cut()

    try:
        stats = await _stream_with(engine, strategy, KILL_AT, drop)
    finally:
        await engine.dispose()
    assert stats.rows == ROWS
    if strategy == "cursor":
        # Keyset pages hold no connection between pages: the pool's pre-ping replaces the
        # cut one before the next page, so only the cursor has to resume.
        assert stats.reconnects >= 1


async def test_without_key_a_drop_is_a_clear_error(resume_table: None, pg_url: str) -> None:
    name = f"rs-resume-{uuid.uuid4().hex[:8]}"
    engine = _engine(pg_url, name)
    seen = 0
    try:
        with pytest.raises(rowstream.ResumeError, match="cannot resume: it has no key"):
            async with rowstream.stream(
                engine, "SELECT id FROM rs_resume", batch_rows=1000
            ) as rows:
                async for _ in rows:
                    seen += 1
                    if seen == 5_000:
                        await _terminate(pg_url, name)
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_retries_are_bounded(resume_table: None, pg_url: str) -> None:
    url = make_url(pg_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    engine = _engine(url.set(port=port).render_as_string(hide_password=False), "rs-resume-gone")
    try:
        with pytest.raises(rowstream.ResumeError, match="2 reconnects failed") as caught:
            async with rowstream.stream(
                engine, sa.select(TABLE), key="id", retries=2, backoff=0.01, batch_rows=1000
            ) as rows:
                async for row in rows:
                    if row.id == 2_500:
                        await proxy.close()  # the path is gone for good
        # Rows up to 3,000 were read before the cut and delivered; the next batch failed.
        assert caught.value.context["last_key"] == (3_000,)
        assert rows.stats.reconnects == 2
    finally:
        await engine.dispose()
