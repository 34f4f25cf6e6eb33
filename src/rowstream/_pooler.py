"""Is a pooler (PgBouncer) between us and PostgreSQL, and does it pool by transaction?

Two signs, both cheap:

- the address and port the server accepted us on (``inet_server_addr()``,
  ``inet_server_port()``) differ from those our socket is connected to: something sits in
  between (a pooler or a proxy; auto then reads by keyset pages, which work through either);
- two client connections held at the same time see the same backend, one after the other, or
  one client sees its backend change between transactions: the pooler hands backends out per
  transaction (PgBouncer reuses the backend released last, so on a quiet pool this shows at once).

The answer is cached per engine: it describes the path, which does not change while it lives.
The probe's reading (:func:`rowstream._strategy.path_info`) is shared with the sync face.
"""

from __future__ import annotations

import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._acompat import Lock, driver_connection, peer_address, sync_engine
from ._strategy import PATH_PROBE, Backend, PathInfo, path_info

__all__ = ["PathInfo", "inspect_path"]

_cache: weakref.WeakKeyDictionary[sa.Engine, PathInfo] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[sa.Engine, Lock] = weakref.WeakKeyDictionary()


async def _backend(conn: AsyncConnection) -> Backend:
    row = (await conn.execute(PATH_PROBE)).one()
    await conn.commit()
    return Backend.of(row, peer_address(await driver_connection(conn)))


async def inspect_path(engine: AsyncEngine) -> PathInfo:
    """Probe (once per engine) whether a transaction-pooling pooler is in the path."""
    key = sync_engine(engine)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    # Concurrent streams on one engine wait for one probe: probes running side by side would
    # see each other's backends and blur the answer.
    lock = _locks.setdefault(key, Lock())
    async with lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = await _probe(engine)
    return cached


async def _probe(engine: AsyncEngine) -> PathInfo:
    if engine.dialect.name != "postgresql":
        return PathInfo()
    async with engine.connect() as first, engine.connect() as second:
        one = await _backend(first)
        two = await _backend(second)
        three = await _backend(first)
    return path_info(one, two, three, engine.url.port)
