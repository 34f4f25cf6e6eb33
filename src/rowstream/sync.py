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
docs/one-core.md. ``export()`` is not generated yet: it runs the async
:func:`rowstream.export` in a private event loop on a thread of its own (so it works from any
sync code, even a thread whose own event loop is running); a generated export on psycopg is
future work.

Example::

    from rowstream import sync

    with sync.stream(engine, select(Invoice).where(Invoice.status == "ready")) as invoices:
        for invoice in invoices:
            ...
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._sync._process import process
from ._sync._source import SYNC_DRIVERS, SyncSource, create_engine, resolve_url, sync_engine_for
from ._sync._stream import SyncRowStream, stream

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL

    from ._export import ExportReport
    from ._jobs import JobReport
    from ._statement import TableOrStatement

__all__ = [
    "SYNC_DRIVERS",
    "SyncRowStream",
    "SyncSource",
    "create_engine",
    "export",
    "process",
    "resolve_url",
    "stream",
    "sync_engine_for",
]

T = TypeVar("T")
#: How long a cancelled export gets to cancel its query and remove its temporary file.
CANCEL_GRACE = 30.0


def export(
    source: str | URL | sa.Engine,
    table_or_statement: TableOrStatement,
    path: str | os.PathLike[str] | Any,
    **options: Any,
) -> ExportReport | JobReport:
    """:func:`rowstream.export` for synchronous code, with the same options (``jobs=N``,
    ``resume``, ``partition_by``, ``format``, ``where``, ...) and the same report.

    A facade, not a generated sync export: the async export runs in a private event loop on a
    thread of its own, which this call waits for; so it works from plain scripts, Celery
    tasks, and even from a thread whose event loop is running (where ``asyncio.run`` would
    refuse). ``source`` is a URL, or a sync ``Engine`` whose URL is used with rowstream's async
    driver for the same database. KeyboardInterrupt in the waiting thread cancels the export
    (its query is cancelled, its temporary file removed) before it propagates.

    Example::

        from rowstream import sync

        report = sync.export("postgresql://app@db/shop", "orders", "orders.parquet", jobs=4)
        print(report.summary())
    """
    import sqlalchemy as sa

    from ._export_jobs import export as export_async

    if isinstance(source, sa.Engine):
        # The same database through the async driver rowstream picks for it.
        source = source.url.set(drivername=source.url.get_backend_name())
    report: ExportReport | JobReport = _run_in_private_loop(
        lambda: export_async(source, table_or_statement, path, **options)
    )
    return report


def _run_in_private_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work()`` with ``asyncio.run`` on a new daemon thread and wait for its result."""
    import asyncio

    outcome: list[tuple[bool, Any]] = []
    running: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> T:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        ready.set()
        return await work()

    def thread_main() -> None:
        try:
            outcome.append((True, asyncio.run(main())))
        except BaseException as exc:  # handed to the waiting thread, raised there
            outcome.append((False, exc))
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="rowstream-sync-export", daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:
        # Interrupted while waiting (Ctrl-C): cancel the export, give it time to clean up.
        ready.wait(CANCEL_GRACE)
        loop, task = running.get("loop"), running.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        thread.join(CANCEL_GRACE)
        raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
