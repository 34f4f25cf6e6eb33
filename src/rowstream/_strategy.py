"""The strategy seam: how batches are read from the server, and the decisions around it.

A strategy is opened once, asked for batches of a given number of rows until it returns an
empty list, and closed exactly once on every exit path (success, exception, cancellation).
:mod:`rowstream._cursor` reads through one server-side cursor in one transaction;
:mod:`rowstream._keyset` reads pages by key, each in its own short transaction.

Everything here is free of I/O and shared by both faces: the async modules and their sync
twins generated from them (:mod:`rowstream._sync`, see docs/one-core.md) read the same
options, stats, path facts and backoff from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from ._exceptions import ConfigurationError

T = TypeVar("T")

StrategyName = Literal["auto", "cursor", "keyset"]
STRATEGIES = ("auto", "cursor", "keyset")
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MYSQL = frozenset({"mysql", "mariadb"})
#: Behind a pooler, session settings do not stick: set them for each transaction.
POOLED_SETUP = ("SET LOCAL jit = off",)

# While a stream is open, the cyclic collector runs after this many new container objects
# instead of Python's 700: a batch of 10,000 rows allocates 20,000-30,000 of them (records,
# tuples, Rows), all acyclic and alive until the caller drops them, and every step of an async
# iterator allocates one more, so the default threshold makes the collector walk the live batch
# dozens of times per batch for nothing (measured: it halves the throughput of building
# SQLAlchemy Rows). Collections still happen, so memory stays bounded.
BATCH_GC_THRESHOLD = 100_000


def check_stream_options(strategy: str, retries: int, backoff: float) -> None:
    """Validate the stream's own arguments, before anything is sent."""
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}"
        )
    if retries < 0 or backoff < 0:
        raise ConfigurationError("retries and backoff must not be negative")


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before reconnect number ``attempt`` (from 1): doubling, capped."""
    return float(min(MAX_BACKOFF, backoff * 2 ** (attempt - 1)))


@dataclass
class Stats:
    """What a stream has read so far. ``bytes`` is an estimate of the Python size of the rows."""

    rows: int = 0
    batches: int = 0
    bytes: int = 0
    reconnects: int = 0
    strategy: str = ""
    started: float = field(default=0.0, repr=False)
    finished: float | None = field(default=None, repr=False)

    @property
    def elapsed(self) -> float:
        """Seconds since the stream opened (until it closed, once closed)."""
        if not self.started:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rows_per_second(self) -> float:
        elapsed = self.elapsed
        return self.rows / elapsed if elapsed > 0 else 0.0

    def __repr__(self) -> str:
        # The dataclass repr would show the raw clock readings; a reader wants the duration
        # and the rate (the README's print(rows.stats)).
        return (
            f"Stats(rows={self.rows}, batches={self.batches}, bytes={self.bytes}, "
            f"elapsed={self.elapsed:.3f}, rows_per_second={self.rows_per_second:.0f}, "
            f"reconnects={self.reconnects}, strategy={self.strategy!r})"
        )


# -- what lies between the client and PostgreSQL (probed by rowstream._pooler) --------------

PATH_PROBE = sa.text(
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


@dataclass(frozen=True)
class Backend:
    """One answer to PATH_PROBE, with the address our socket is connected to."""

    pid: int
    server: tuple[str | None, int | None]
    peer: tuple[str | None, int | None]
    idle_timeout: int

    @classmethod
    def of(cls, row: Any, peer: tuple[str | None, int | None]) -> Backend:
        return cls(int(row[0]), (row[2], row[1]), peer, int(row[3] or 0))


def path_info(one: Backend, two: Backend, three: Backend, url_port: int | None) -> PathInfo:
    """Read the path from three probes: ``one`` and ``three`` on one client connection,
    ``two`` on a second one held meanwhile (see rowstream._pooler)."""
    per_transaction = one.pid == two.pid or one.pid != three.pid
    moved = one.peer != (None, None) and one.server != one.peer
    return PathInfo(
        pooler=per_transaction or moved,
        transaction_pooling=per_transaction,
        server_port=one.server[1],
        dialled_port=one.peer[1] or url_port or 5432,
        idle_in_transaction_timeout=one.idle_timeout,
    )


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
