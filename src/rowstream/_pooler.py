"""Is a pooler (PgBouncer) between us and PostgreSQL, and does it pool by transaction?

Two signs, both cheap:

- the address and port the server accepted us on (``inet_server_addr()``,
  ``inet_server_port()``) differ from those our socket is connected to: something sits in
  between (a pooler or a proxy; auto then reads by keyset pages, which work through either);
- two client connections held at the same time see the same backend, one after the other, or
  one client sees its backend change between transactions: the pooler hands backends out per
  transaction (PgBouncer reuses the backend released last, so on a quiet pool this shows at once).

The answer is cached per engine: it describes the path, which does not change while it lives.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_PROBE = sa.text(
    "SELECT pg_backend_pid(), inet_server_port(), host(inet_server_addr()), "
    "(SELECT setting::int FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout')"
)


@dataclass(frozen=True)
class PathInfo:
    """What lies between the client and the database server."""

    pooler: bool = False
    transaction_pooling: bool = False
    server_port: int | None = None
    dialled_port: int | None = None
    #: The server ends transactions idle for this long (ms, 0 = never): it asks for short ones.
    idle_in_transaction_timeout: int = 0

    @property
    def wants_short_transactions(self) -> bool:
        return self.pooler or self.idle_in_transaction_timeout > 0


_cache: weakref.WeakKeyDictionary[sa.Engine, PathInfo] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[sa.Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Backend:
    pid: int
    server: tuple[str | None, int | None]
    peer: tuple[str | None, int | None]
    idle_timeout: int


async def _backend(conn: AsyncConnection) -> _Backend:
    row = (await conn.execute(_PROBE)).one()
    await conn.commit()
    raw = await conn.get_raw_connection()
    transport = getattr(raw.driver_connection, "_transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    peer_addr = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (None, None)
    return _Backend(int(row[0]), (row[2], row[1]), peer_addr, int(row[3] or 0))


async def inspect_path(engine: AsyncEngine) -> PathInfo:
    """Probe (once per engine) whether a transaction-pooling pooler is in the path."""
    cached = _cache.get(engine.sync_engine)
    if cached is not None:
        return cached
    # Concurrent streams on one engine wait for one probe: probes running side by side would
    # see each other's backends and blur the answer.
    lock = _locks.setdefault(engine.sync_engine, asyncio.Lock())
    async with lock:
        cached = _cache.get(engine.sync_engine)
        if cached is None:
            cached = _cache[engine.sync_engine] = await _probe(engine)
    return cached


async def _probe(engine: AsyncEngine) -> PathInfo:
    if engine.dialect.name != "postgresql":
        return PathInfo()
    async with engine.connect() as first, engine.connect() as second:
        one = await _backend(first)
        two = await _backend(second)
        three = await _backend(first)
    per_transaction = one.pid == two.pid or one.pid != three.pid
    moved = one.peer != (None, None) and one.server != one.peer
    return PathInfo(
        pooler=per_transaction or moved,
        transaction_pooling=per_transaction,
        server_port=one.server[1],
        dialled_port=one.peer[1] or engine.url.port or 5432,
        idle_in_transaction_timeout=one.idle_timeout,
    )
