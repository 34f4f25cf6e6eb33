"""Read-only transactions: the database's own refusal behind rowstream's statement check.

Every statement is checked before it is sent (:mod:`rowstream._guard`); where rowstream begins
the transaction itself, the database is also told that the transaction only reads, so a
statement the check misread still cannot change data:

- PostgreSQL: ``SET TRANSACTION READ ONLY`` first in the transaction. It applies to whatever
  transaction the driver has open (SQLAlchemy's ``postgresql_readonly`` option would not: the
  drivers put it in their next BEGIN, and psycopg refuses it on a connection that a ``connect``
  event left in a transaction), dies with it, and holds behind a transaction-pooling PgBouncer.
- MySQL/MariaDB: ``START TRANSACTION READ ONLY``: writes fail with error 1792. DDL does not:
  MariaDB 10.11 commits the transaction implicitly and runs ``CREATE``/``DROP``/``TRUNCATE``
  (measured), so there the statement check is the defence that counts.
- SQLite: ``PRAGMA query_only = ON`` for the stream's duration, set back before the transaction
  ends, so a pooled (or the caller's) connection is not left read-only.

A transaction the caller already holds is theirs: rowstream reads inside it and changes
nothing about it. What each database needs is :func:`rowstream._guard.read_only_steps`; the
sync twin of this module, rowstream._sync._readonly, is generated (tools/unasync.py).
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

from ._guard import read_only_steps
from ._translate import raise_translated

__all__ = ["ReadOnlyTransaction"]


class ReadOnlyTransaction:
    """rowstream's own transaction on ``conn``, read-only (see the module docstring).

    Used as ``trans = await ReadOnlyTransaction(conn).start()`` or
    ``async with ReadOnlyTransaction(conn) as trans:``; ``rollback()`` ends it.
    Errors are translated (a dropped connection is a :class:`ConnectionLostError`).
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._steps = read_only_steps(conn.dialect.name)
        self._trans: AsyncTransaction | None = None
        self._restore: str | None = None

    async def __aenter__(self) -> ReadOnlyTransaction:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.is_active:
            return
        if exc is None:
            await self.rollback()
            return
        # The block's own error goes first; a connection that cannot even roll back is
        # dropped rather than pooled (it could still be read-only).
        try:
            await self.rollback()
        except Exception:
            with contextlib.suppress(Exception):
                await self._conn.invalidate()

    @property
    def is_active(self) -> bool:
        return self._trans is not None and self._trans.is_active

    async def start(self) -> ReadOnlyTransaction:
        conn, steps = self._conn, self._steps
        try:
            self._trans = await conn.begin()
            for sql in steps.after_begin:
                await conn.exec_driver_sql(sql)
            if steps.switch is not None:
                read, turn_on, turn_off = steps.switch
                if not (await conn.exec_driver_sql(read)).scalar():
                    await conn.exec_driver_sql(turn_on)
                    self._restore = turn_off
        except Exception as exc:
            raise_translated(exc, url=conn.engine.url)
        return self

    async def rollback(self) -> None:
        """Set back what was changed for the transaction (SQLite), then roll it back."""
        conn = self._conn
        try:
            if self._restore is not None:
                await conn.exec_driver_sql(self._restore)
                self._restore = None
            if self._trans is not None:
                await self._trans.rollback()
        except Exception as exc:
            raise_translated(exc, url=conn.engine.url)
