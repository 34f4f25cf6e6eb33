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
nothing about it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

from ._translate import raise_translated

__all__ = ["ReadOnlyTransaction", "Steps", "SyncReadOnlyTransaction", "read_only_steps"]


@dataclass(frozen=True)
class Steps:
    """What makes one transaction read-only on one database."""

    #: Statements right after BEGIN.
    after_begin: tuple[str, ...] = ()
    #: SQLite: (read the setting, turn it on, turn it off): when it is off, it is turned on
    #: for the transaction and off again before it ends.
    switch: tuple[str, str, str] | None = None


def read_only_steps(dialect: str) -> Steps:
    """The one place that knows how each database makes a transaction read-only."""
    if dialect == "postgresql":
        return Steps(after_begin=("SET TRANSACTION READ ONLY",))
    if dialect in ("mysql", "mariadb"):
        return Steps(after_begin=("START TRANSACTION READ ONLY",))
    if dialect == "sqlite":
        return Steps(
            switch=("PRAGMA query_only", "PRAGMA query_only = ON", "PRAGMA query_only = OFF")
        )
    return Steps()


class ReadOnlyTransaction:
    """rowstream's own transaction on ``conn``, read-only (see the module docstring).

    Used like SQLAlchemy's: ``trans = await ReadOnlyTransaction(conn)`` or
    ``async with ReadOnlyTransaction(conn) as trans:``; ``rollback()`` ends it.
    Errors are translated (a dropped connection is a :class:`ConnectionLostError`).
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._steps = read_only_steps(conn.dialect.name)
        self._trans: AsyncTransaction | None = None
        self._restore: str | None = None

    def __await__(self) -> Generator[Any, None, ReadOnlyTransaction]:
        return self.start().__await__()

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


class SyncReadOnlyTransaction:
    """The same on a synchronous connection (``rowstream.sync``)."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._steps = read_only_steps(conn.dialect.name)
        self._trans: sa.RootTransaction | None = None
        self._restore: str | None = None
        steps = self._steps
        try:
            self._trans = conn.begin()
            for sql in steps.after_begin:
                conn.exec_driver_sql(sql)
            if steps.switch is not None:
                read, turn_on, turn_off = steps.switch
                if not conn.exec_driver_sql(read).scalar():
                    conn.exec_driver_sql(turn_on)
                    self._restore = turn_off
        except Exception as exc:
            raise_translated(exc, url=conn.engine.url)

    @property
    def is_active(self) -> bool:
        return self._trans is not None and self._trans.is_active

    def rollback(self) -> None:
        """Set back what was changed for the transaction (SQLite), then roll it back."""
        conn = self._conn
        try:
            if self._restore is not None:
                conn.exec_driver_sql(self._restore)
                self._restore = None
            if self._trans is not None:
                self._trans.rollback()
        except Exception as exc:
            raise_translated(exc, url=conn.engine.url)
