"""The strategy seam: how batches are read from the server.

A strategy is opened once, asked for batches of a given number of rows until it returns an
empty list, and closed exactly once on every exit path (success, exception, cancellation).
:mod:`rowstream._cursor` reads through one server-side cursor in one transaction;
:mod:`rowstream._keyset` reads pages by key, each in its own short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# While a stream is open, the cyclic collector runs after this many new container objects
# instead of Python's 700: a batch of 10,000 rows allocates 20,000-30,000 of them (records,
# tuples, Rows), all acyclic and alive until the caller drops them, and every step of an async
# iterator allocates one more, so the default threshold makes the collector walk the live batch
# dozens of times per batch for nothing (measured: it halves the throughput of building
# SQLAlchemy Rows). Collections still happen, so memory stays bounded.
BATCH_GC_THRESHOLD = 100_000


class Strategy(Protocol):
    """What :class:`rowstream.RowStream` asks of a way of reading."""

    name: str

    async def open(self) -> None:
        """Connect and start reading; errors are already translated."""

    async def fetch(self, size: int) -> list[Any]:
        """The next ``size`` rows or fewer; an empty list at the end."""

    def keys(self) -> list[str]:
        """The names of the result's columns."""

    async def aclose(self) -> None:
        """Release everything: cursor, transaction, connection. Never raises."""


async def shielded(awaitable: Awaitable[T]) -> T:
    """Run clean-up to its end even when the calling task is being cancelled.

    A cancellation that arrives meanwhile is held back and re-raised once the clean-up is
    done, so a cancelled stream still returns its connection to the pool.
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's first threshold while streams are open (see BATCH_GC_THRESHOLD).

    Re-entrant across tasks and threads: the first reader saves the thresholds, the last one
    puts them back.
    """
    global _gc_depth, _gc_saved
    with _gc_lock:
        if _gc_depth == 0:
            _gc_saved = gc.get_threshold()
            if 0 < _gc_saved[0] < BATCH_GC_THRESHOLD:
                gc.set_threshold(BATCH_GC_THRESHOLD, _gc_saved[1], _gc_saved[2])
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None
