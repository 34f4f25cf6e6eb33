"""Is a pooler (PgBouncer) between us and PostgreSQL, and does it pool by transaction?

Two signs, both cheap and both from plain SQL:

- the server's own port (``inet_server_port()``) differs from the port we dialled: something
  sits in between;
- two client connections held at the same time see the same backend, one after the other, or
  one client sees its backend change between transactions: the pooler hands backends out per
  transaction (PgBouncer reuses the backend released last, so on a quiet pool this shows at once).

The answer is cached per engine: it describes the path, which does not change while it lives.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_PROBE = sa.text(
    "SELECT pg_backend_pid(), inet_server_port(), "
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
        return self.transaction_pooling or self.idle_in_transaction_timeout > 0


_cache: weakref.WeakKeyDictionary[sa.Engine, PathInfo] = weakref.WeakKeyDictionary()


async def _backend(conn: AsyncConnection) -> tuple[int, int | None, int]:
    row = (await conn.execute(_PROBE)).one()
    await conn.commit()
    return int(row[0]), row[1], int(row[2] or 0)


async def inspect_path(engine: AsyncEngine) -> PathInfo:
    """Probe (once per engine) whether a transaction-pooling pooler is in the path."""
    cached = _cache.get(engine.sync_engine)
    if cached is not None:
        return cached
    if engine.dialect.name != "postgresql":
        info = PathInfo()
    else:
        dialled = engine.url.port or 5432
        async with engine.connect() as first, engine.connect() as second:
            pid_1, server_port, idle_timeout = await _backend(first)
            pid_2, _, _ = await _backend(second)
            pid_3, _, _ = await _backend(first)
        per_transaction = pid_1 == pid_2 or pid_1 != pid_3
        moved = server_port is not None and server_port != dialled
        info = PathInfo(
            pooler=per_transaction or moved,
            transaction_pooling=per_transaction,
            server_port=server_port,
            dialled_port=dialled,
            idle_in_transaction_timeout=idle_timeout,
        )
    _cache[engine.sync_engine] = info
    return info
