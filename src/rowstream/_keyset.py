"""The keyset strategy: pages by key, each page a complete query in its own short transaction.

``WHERE (a, b) > (:a, :b) ORDER BY a, b LIMIT n`` holds no cursor, no long transaction and no
old snapshot, so it is the strategy of choice behind a transaction-pooling pooler, and on
MySQL/MariaDB it lets selectinload() send its queries on the same connection.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.selectable import Select

from ._exceptions import StreamKeyError
from ._keys import Key
from ._plan import Plan
from ._readonly import ReadOnlyTransaction
from ._source import ResolvedSource
from ._translate import raise_translated


class KeysetStrategy:
    """Read ``plan`` page by page in the order of ``key``, starting after ``after``."""

    name = "keyset"

    def __init__(
        self,
        source: ResolvedSource,
        plan: Plan,
        key: Key,
        *,
        after: tuple[Any, ...] | None = None,
        setup: tuple[str, ...] = (),
    ) -> None:
        statement = plan.statement
        if not isinstance(statement, Select):
            raise StreamKeyError("keyset pages need a select(); use strategy='cursor' for text()")
        refusal = pageable(statement, key)
        if refusal:
            raise StreamKeyError(f"cannot page this statement by key: {refusal}")
        self._source = source
        self._plan = plan
        self._base = statement.order_by(None).order_by(*key.columns)
        self._key = key
        self._last = after
        self._setup = setup
        self._keys = list(statement.selected_columns.keys())
        self.exhausted = False

    async def open(self) -> None:
        """Nothing to open: every page connects, reads and lets go on its own."""

    def keys(self) -> list[str]:
        return self._keys

    async def fetch(self, size: int) -> list[Any]:
        if self.exhausted:
            return []
        statement = self._base
        if self._last is not None:
            statement = statement.where(self._key.after(self._last, dialect=self._source.dialect))
        statement = statement.limit(size)
        source = self._source
        url = source.engine.url
        if source.borrowed is not None:
            rows = await self._page(source.borrowed, statement)
        else:
            try:
                conn = await source.engine.connect()
            except Exception as exc:
                # Before the first page the server was never reached: a plain connect error.
                # Later, the stream was running: a drop it can resume from.
                raise_translated(exc, url=url, connecting=self._last is None)
            try:
                async with ReadOnlyTransaction(conn) as transaction:
                    rows = await self._page(conn, statement)
                    # Read-only: nothing to keep, and a rollback is the cheapest end.
                    await transaction.rollback()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
        if len(rows) < size:
            self.exhausted = True
        if rows:
            self._last = self._key.of(rows[-1])
        return rows

    async def _page(self, conn: AsyncConnection, statement: Select[Any]) -> list[Any]:
        try:
            for sql in self._setup:
                await conn.exec_driver_sql(sql)
            if self._plan.orm:
                session = AsyncSession(bind=conn, autoflush=False, expire_on_commit=False)
                try:
                    result = await session.execute(statement)
                    rows = list(result.scalars().all() if self._plan.scalars else result.all())
                finally:
                    await session.close()
                return rows
            return list((await conn.execute(statement)).all())
        except Exception as exc:
            raise_translated(exc, url=self._source.engine.url)

    async def aclose(self) -> None:
        """Each page already let go of its connection."""


def pageable(statement: Select[Any], key: Key) -> str | None:
    """Why ``statement`` cannot be paged by ``key``, or None when it can."""
    if statement._limit_clause is not None or statement._offset_clause is not None:
        return "it has LIMIT/OFFSET; use strategy='cursor'"
    if statement._group_by_clauses or statement._distinct:
        return "it has GROUP BY or DISTINCT, so the key may not be unique in the result"
    if statement._order_by_clauses and not key.ordered_by(statement):
        return (
            "it is ordered by something else than its key, and pages follow the key's "
            "order: drop order_by() or order by the key, or use strategy='cursor'"
        )
    return None
