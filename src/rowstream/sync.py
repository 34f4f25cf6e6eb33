"""rowstream for synchronous code: Celery tasks, threads, scripts.

The same stream and the same ``process()`` as the async API, on a sync Engine, Connection or
Session (or a URL), with every option of the async face: ``strategy="auto"|"cursor"|"keyset"``
(PgBouncer and other poolers detected, as on the async side), resume after a dropped
connection (``retries``, ``backoff``), ``start_after``, byte-sized batches, ``read_timeout``,
checkpoints, ``handler_timeout``, ``on_error`` and ``ordered``. Sync drivers:

- PostgreSQL through psycopg 3 (a named cursor, ``DECLARE ... CURSOR`` / ``FETCH FORWARD n``);
- MySQL/MariaDB through PyMySQL (an unbuffered ``SSCursor``);
- SQLite through sqlite3, which steps its statement as rows are fetched.

This module is a facade: the stream and ``process()`` are generated from the async modules
by ``tools/unasync.py`` (rowstream._sync), so the two faces cannot drift apart; see
docs/one-core.md.

Example::

    from rowstream import sync

    with sync.stream(engine, select(Invoice).where(Invoice.status == "ready")) as invoices:
        for invoice in invoices:
            ...
"""

from __future__ import annotations

from ._sync._process import process
from ._sync._source import SYNC_DRIVERS, SyncSource, create_engine, resolve_url, sync_engine_for
from ._sync._stream import SyncRowStream, stream

__all__ = [
    "SYNC_DRIVERS",
    "SyncRowStream",
    "SyncSource",
    "create_engine",
    "process",
    "resolve_url",
    "stream",
    "sync_engine_for",
]
