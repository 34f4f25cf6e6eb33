"""The strategy seam: how batches are read from the server.

A strategy is opened once, asked for batches of a given number of rows until it returns an
empty list, and closed exactly once on every exit path (success, exception, cancellation).
:mod:`rowstream._cursor` reads through one server-side cursor in one transaction;
:mod:`rowstream._keyset` reads pages by key, each in its own short transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

CLEANUP_TIMEOUT = 10.0


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
