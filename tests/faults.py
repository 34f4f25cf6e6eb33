"""Fault injection shared by the fault tests and ``bench/faults_terminations.py``.

:func:`terminated_stream` reads a numbered table through :func:`rowstream.stream` while the
stream's database connections are killed five times at different points: shortly after a batch
was delivered (the kill lands in the next fetch, page query or between pages), right before a
statement runs on the stream's connection (a drop while a cursor or page starts) and right
before a keyset page's rollback (the drop the rollback used to let escape untranslated). It
reports whether every row arrived exactly once, in order.

PostgreSQL (directly or through PgBouncer) is killed with ``pg_terminate_backend`` on every
backend carrying the stream's ``application_name``; MariaDB with ``KILL CONNECTION`` on every
connection the stream's engine opened. Kills run from separate, synchronous admin connections,
so they can fire from inside SQLAlchemy's (synchronous) connection events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream

TABLE = "rs_faults"
# Where the kills land, in turn. "delayed": a few ms after a batch reached the caller;
# "execute": right before the next statement on a stream connection; "rollback": right
# before the next rollback (the end of a keyset page). A cursor runs statements only when it
# (re)opens and rolls back only when it closes, so its kills are "delayed", each second one
# followed by a kill of the query that resumes it ("delayed+execute", two kills).
KEYSET_MODES = ("delayed", "rollback", "execute", "delayed", "rollback")
CURSOR_MODES = ("delayed+execute", "delayed")


def is_mysql(url: str) -> bool:
    return make_url(url).get_backend_name() in ("mysql", "mariadb")


def _pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _my_args(url: str) -> dict[str, Any]:
    u = make_url(url)
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port or 3306,
        "user": u.username or "root",
        "password": u.password or "",
        "database": u.database,
        "autocommit": True,
    }


# Rows of about 1 KB: MariaDB sends an unbuffered result as fast as the sockets take it, and
# the last few MB of it sit in the kernel's buffers, where a kill no longer reaches them; with
# wide rows that tail stays behind the last kill point (kills land in the first 80%).
PAD = 1000


def make_table(url: str, rows: int, table: str = TABLE, *, pad: int = PAD) -> None:
    """``table (id bigint primary key, v int, pad text)`` with ids 1..rows (kept when full)."""
    if is_mysql(url):
        my = pymysql.connect(**_my_args(url))
        try:
            with my.cursor() as cur:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT PRIMARY KEY, v INT, pad TEXT)"
                )
                cur.execute(f"SELECT COUNT(*) FROM {table}")
                if cur.fetchone()[0] == rows:  # type: ignore[index]
                    return
                cur.execute(f"DELETE FROM {table}")
                step = 50_000
                for start in range(1, rows + 1, step):
                    end = min(rows, start + step - 1)
                    cur.execute(
                        f"INSERT INTO {table} SELECT seq, seq % 1000, REPEAT('x', {pad}) "
                        f"FROM seq_{start}_to_{end}"
                    )
        finally:
            my.close()
        return
    with psycopg.connect(_pg_dsn(url), autocommit=True) as pg:
        pg.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, v int, pad text)")
        count = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
        if count is not None and count[0] == rows:
            return
        pg.execute(f"TRUNCATE {table}")
        pg.execute(
            f"INSERT INTO {table} SELECT g, g % 1000, repeat('x', {pad}) "
            f"FROM generate_series(1, {rows}) g"
        )
        pg.execute(f"ANALYZE {table}")


class Killer:
    """Kills every database connection of one stream's engine, on demand or at events."""

    def __init__(self, stream_url: str, admin_url: str) -> None:
        self.mysql = is_mysql(stream_url)
        self.name = f"rs-faults-{uuid.uuid4().hex[:10]}"
        self.kills = 0
        self.pending: str | None = None
        self._threads: set[int] = set()
        self._admin: Any = (
            pymysql.connect(**_my_args(admin_url))
            if self.mysql
            else psycopg.connect(_pg_dsn(admin_url), autocommit=True)
        )
        connect_args = {} if self.mysql else {"server_settings": {"application_name": self.name}}
        self.engine: AsyncEngine = rowstream.create_engine(stream_url, connect_args=connect_args)
        sync_engine = self.engine.sync_engine
        event.listen(sync_engine, "connect", self._on_connect)
        event.listen(sync_engine, "before_cursor_execute", self._on_execute)
        event.listen(sync_engine, "rollback", self._on_rollback)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if self.mysql:
            driver = dbapi_connection.driver_connection
            self._threads.add(int(driver.thread_id()))
            # A small receive buffer (no autotuning up to tcp_rmem's 32 MB): the result stays
            # on the server's side, where a kill stops it.
            sock = driver._transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)

    def _on_execute(self, *_args: Any) -> None:
        if self.pending == "execute":
            self.kill()

    def _on_rollback(self, *_args: Any) -> None:
        if self.pending == "rollback":
            self.kill()

    def kill(self) -> bool:
        """Kill now (blocking: it also runs inside SQLAlchemy's synchronous events); only a
        kill that ended at least one connection counts; one that found none stays pending."""
        killed = 0
        if self.mysql:
            with self._admin.cursor() as cur:
                for thread in sorted(self._threads):
                    with contextlib.suppress(pymysql.err.OperationalError):
                        cur.execute(f"KILL CONNECTION {thread}")
                        killed += 1
            self._threads.clear()
        else:
            killed = len(
                self._admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (self.name,),
                ).fetchall()
            )
        if killed:
            self.pending = None
            self.kills += 1
        return bool(killed)

    async def kill_soon(self, delay: float, then: str | None) -> None:
        await asyncio.sleep(delay)
        if self.pending == "delayed" and self.kill():
            self.pending = then

    async def aclose(self) -> None:
        await self.engine.dispose()
        self._admin.close()


@dataclass
class Outcome:
    """How one stream under terminations ended."""

    exact: bool
    kills: int
    reconnects: int = 0
    error: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)


async def terminated_stream(
    stream_url: str,
    admin_url: str,
    strategy: str,
    rows: int,
    *,
    kills: int = 5,
    batch_rows: int = 1000,
    seed: int = 0,
    table: str = TABLE,
) -> Outcome:
    """Stream ``table`` (ids 1..rows) with ``kills`` terminations; see the module docstring."""
    rng = random.Random(seed)
    killer = Killer(stream_url, admin_url)
    # Kill points spread over the stream, jittered so that runs hit different places.
    cycle = CURSOR_MODES if strategy == "cursor" else KEYSET_MODES
    modes: list[str] = []
    while sum(len(m.split("+")) for m in modes) < kills:
        modes.append(cycle[(len(modes) + seed) % len(cycle)])
    if sum(len(m.split("+")) for m in modes) > kills:
        modes[-1] = "delayed"
    span = rows * 4 // 5 // (len(modes) + 1)
    points = sorted(
        span * (i + 1) + rng.randrange(-span // 3, span // 3) for i in range(len(modes))
    )
    outcome = Outcome(exact=False, kills=0)
    expected = 1
    due: list[str] = []
    then = ""
    try:
        async with rowstream.stream(
            killer.engine,
            sa.select(sa.table(table, sa.column("id"), sa.column("v"), sa.column("pad"))),
            strategy=strategy,  # type: ignore[arg-type]
            key="id",
            batch_rows=batch_rows,
            backoff=0.02,
            retries=10,
        ) as stream:
            async for batch in stream.batches():
                for row in batch:
                    if row.id != expected:
                        raise AssertionError(f"expected id {expected}, got {row.id}")
                    expected += 1
                while points and expected > points[0]:
                    points.pop(0)
                    due.append(modes.pop(0))
                if killer.pending is None and due:
                    mode, _, then = due.pop(0).partition("+")
                    killer.pending = mode
                idle = not outcome.tasks or outcome.tasks[-1].done()
                if killer.pending == "delayed" and idle:
                    # (Again, when the last one found no connection to end.)
                    soon = killer.kill_soon(rng.uniform(0, 0.01), then or None)
                    outcome.tasks.append(asyncio.create_task(soon))
        outcome.reconnects = stream.stats.reconnects
        outcome.exact = expected == rows + 1
        if not outcome.exact:
            outcome.error = f"stopped after id {expected - 1} of {rows}"
    except Exception as exc:
        outcome.error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    finally:
        # A kill due a few ms after the last batch still counts.
        await asyncio.gather(*outcome.tasks, return_exceptions=True)
        outcome.kills = killer.kills
        if killer.engine.pool.checkedout():
            outcome.exact = False
            outcome.error = f"{killer.engine.pool.checkedout()} connections left checked out"
        await killer.aclose()
    return outcome
