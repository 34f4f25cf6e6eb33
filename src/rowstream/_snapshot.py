"""One consistent snapshot shared by every reader of a partitioned export.

PostgreSQL: a coordinator transaction ``REPEATABLE READ READ ONLY`` exports its snapshot
(``pg_export_snapshot()``) and stays open until the snapshot is released; each reader's first
statements are ``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY`` and
``SET TRANSACTION SNAPSHOT``, and the import is verified: the reader's ``pg_current_snapshot()``
(xmin, xmax and in-progress list) must equal the coordinator's, or the reader is refused.
Behind a transaction-pooling PgBouncer the export is refused with one line: the snapshot would
pin ``jobs + 1`` server connections for the whole export and can wait forever on a small pool;
connect to PostgreSQL directly for ``jobs > 1``.

MariaDB/MySQL: the reader sessions are opened up front, and each starts
``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` at one point in time, as mydumper
and MySQL Shell do:

1. ``FLUSH TABLES WITH READ LOCK`` (bounded by ``lock_wait_timeout``) when the account may take
   it: no commit can happen while the sessions start; the lock is released at once.
2. Otherwise, with a binary log: every session's ``binlog_snapshot_file``/``position`` status
   (MariaDB records where its snapshot stands in the binary log) must be equal; if a commit
   slipped in between, the sessions roll back and start again (bounded retries).
3. Otherwise the snapshot is *not consistent*: ``SnapshotInfo.consistent`` is false and
   ``note`` says why and what would make it consistent.

Nothing is written: the coordinator and the readers are read-only transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._exceptions import ConfigurationError, SnapshotError
from ._pooler import inspect_path
from ._source import mask_url
from ._strategy import shielded
from ._translate import raise_translated

__all__ = ["SETUP_TIMEOUT", "Snapshot", "SnapshotError", "SnapshotInfo"]

#: Bound on every step of taking or importing the snapshot (seconds).
SETUP_TIMEOUT = 30.0
#: MariaDB: seconds FLUSH TABLES WITH READ LOCK may wait for running statements.
LOCK_WAIT_TIMEOUT = 10
#: MariaDB without the lock: attempts at starting every session at one binlog position.
CONSISTENT_START_RETRIES = 50

Method = Literal["pg_export_snapshot", "flush_tables_with_read_lock", "binlog_position", "none"]

# pg_export_snapshot() gives e.g. 00000003-0000001B-1: checked before it is quoted.
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+(-[0-9A-Fa-f]+){1,2}$")
_MY_ACCESS_DENIED = {1227, 1044, 1045, 1142}


# -- joining an exported snapshot: the same checks and words on every driver ------------------

#: What a reader asks for its point in time, to compare with the coordinator's.
POINT_QUERY = "SELECT pg_current_snapshot()::text"


def join_statement(snapshot_id: str) -> str:
    """The statement that imports PostgreSQL snapshot ``snapshot_id`` (the first of a
    REPEATABLE READ transaction); the id is checked, since it is pasted into the SQL.

    >>> join_statement("00000003-0000001B-1")
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'"
    """
    if not _SNAPSHOT_ID.match(snapshot_id):
        raise SnapshotError(f"malformed snapshot id {snapshot_id!r}")
    return f"SET TRANSACTION SNAPSHOT '{snapshot_id}'"


def cannot_join(snapshot_id: str, where: str, exc: BaseException) -> SnapshotError:
    """The error of a reader whose import failed: the coordinator no longer holds it."""
    return SnapshotError(
        f"cannot join snapshot {snapshot_id} on {where}: {_first_line(exc)}; it is held only "
        "while the export that took it runs"
    )


def check_point(point: str, want: str | None) -> None:
    """Refuse to read unless the reader's transaction sees what the coordinator's does."""
    if want is not None and point != want:
        raise SnapshotError(
            f"the reader's snapshot ({point}) is not the coordinator's ({want}): the import "
            "did not take; refusing to read from another point in time"
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """Where the export's snapshot stands (recorded in a dataset's manifest)."""

    dialect: str
    method: Method
    consistent: bool
    #: PostgreSQL's exported snapshot id (valid while the coordinator holds it).
    id: str | None = None
    #: PostgreSQL: ``xmin:xmax:xip``; MariaDB: the binlog file and position, when known.
    point: str | None = None
    taken_at: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dialect": self.dialect,
            "method": self.method,
            "consistent": self.consistent,
            "id": self.id,
            "point": self.point,
            "taken_at": self.taken_at,
            "note": self.note,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Snapshot:
    """A snapshot held for the lifetime of the ``async with`` block; readers join it.

    ``sessions`` is how many readers will join (MariaDB opens them all at the start; on
    PostgreSQL any number may join while the snapshot is held). ``existing`` (PostgreSQL) is a
    snapshot id from an earlier run: when something still holds it, readers join it and the
    result is one point in time with the earlier parts; otherwise a new snapshot is taken.

    Example::

        async with Snapshot(engine, sessions=4) as snap:
            conn = await snap.join()  # a read-only transaction at snap.info's point in time
            ...
            await snap.leave(conn)
    """

    def __init__(self, engine: AsyncEngine, *, sessions: int, existing: str | None = None) -> None:
        if sessions < 1:
            raise ConfigurationError(f"sessions must be at least 1, not {sessions}")
        self._engine = engine
        self._sessions = sessions
        self._existing = existing
        self._coordinator: AsyncConnection | None = None
        self._ready: list[AsyncConnection] = []
        self._joined: list[AsyncConnection] = []
        self.info = SnapshotInfo(engine.dialect.name, "none", False)
        #: True when ``existing`` could still be joined.
        self.reused = False

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def rejoinable(self) -> bool:
        """Whether a new connection can join while the snapshot is held (PostgreSQL)."""
        return self.dialect == "postgresql" and self.info.id is not None

    async def __aenter__(self) -> Snapshot:
        try:
            async with asyncio.timeout(SETUP_TIMEOUT * 2):
                if self.dialect == "postgresql":
                    await self._take_pg()
                elif self.dialect in ("mysql", "mariadb"):
                    await self._take_mysql()
                else:
                    self.info = SnapshotInfo(
                        self.dialect,
                        "none",
                        True,
                        taken_at=_now(),
                        note="one reader: its own transaction is the snapshot",
                    )
        except TimeoutError:
            await self.aclose()
            raise SnapshotError(
                f"taking the shared snapshot on {mask_url(self._engine.url)} took over "
                f"{SETUP_TIMEOUT * 2:.0f} s: a long statement or lock on the server holds it up; "
                "try again, or use --jobs 1"
            ) from None
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the readers' sessions, then the snapshot; safe to call twice."""
        for conn in [*self._ready, *self._joined]:
            await shielded(_close(conn))
        self._ready.clear()
        self._joined.clear()
        if self._coordinator is not None:
            conn, self._coordinator = self._coordinator, None
            await shielded(_close(conn))

    async def join(self) -> AsyncConnection:
        """A connection in a read-only transaction at the snapshot (its first statements)."""
        if self.dialect in ("mysql", "mariadb"):
            if not self._ready:
                raise SnapshotError(
                    f"all {self._sessions} sessions opened at the snapshot are in use: a "
                    "MariaDB snapshot cannot be joined later (open more sessions at the start)"
                )
            conn = self._ready.pop()
        elif self.dialect == "postgresql":
            snapshot_id = self._snapshot_id()
            try:
                async with asyncio.timeout(SETUP_TIMEOUT):
                    conn = await self._import_pg(snapshot_id)
            except TimeoutError:
                raise SnapshotError(
                    f"joining snapshot {snapshot_id} on {mask_url(self._engine.url)} took over "
                    f"{SETUP_TIMEOUT:.0f} s: the server did not answer; try again"
                ) from None
        else:
            conn = await _connect(self._engine)
        self._joined.append(conn)
        return conn

    async def leave(self, conn: AsyncConnection) -> None:
        """End a reader's transaction and return its connection."""
        if conn in self._joined:
            self._joined.remove(conn)
        await shielded(_close(conn))

    # ------------------------------------------------------------ PostgreSQL

    def _snapshot_id(self) -> str:
        if self.info.id is None:
            raise SnapshotError("the snapshot is not held: use `async with Snapshot(...)`")
        return self.info.id

    async def _take_pg(self) -> None:
        path = await inspect_path(self._engine)
        if path.transaction_pooling:
            raise SnapshotError(
                f"{mask_url(self._engine.url)} goes through a transaction-pooling pooler "
                "(PgBouncer): a partitioned export holds jobs + 1 transactions open for its "
                "whole length, which a pool can starve; connect to PostgreSQL directly for "
                "--jobs, or use --jobs 1"
            )
        if self._existing is not None and _SNAPSHOT_ID.match(self._existing):
            with contextlib.suppress(SnapshotError):
                probe = await self._import_pg(self._existing, verify=False)
                point = await _pg_point(probe)
                await shielded(_close(probe))
                self.info = SnapshotInfo(
                    "postgresql",
                    "pg_export_snapshot",
                    True,
                    id=self._existing,
                    point=point,
                    taken_at=_now(),
                    note="joined the snapshot of the earlier run, still held",
                )
                self.reused = True
                return
        conn = await _connect(self._engine)
        self._coordinator = conn
        try:
            await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row: Any = (
                await conn.exec_driver_sql(
                    "SELECT pg_export_snapshot(), pg_current_snapshot()::text"
                )
            ).one()
        except Exception as exc:
            raise_translated(exc, url=self._engine.url)
        self.info = SnapshotInfo(
            "postgresql",
            "pg_export_snapshot",
            True,
            id=str(row[0]),
            point=str(row[1]),
            taken_at=_now(),
        )

    async def _import_pg(self, snapshot_id: str, *, verify: bool = True) -> AsyncConnection:
        statement = join_statement(snapshot_id)
        conn = await _connect(self._engine)
        try:
            try:
                await conn.exec_driver_sql(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
                await conn.exec_driver_sql(statement)
                point = await _pg_point(conn)
            except Exception as exc:
                raise cannot_join(snapshot_id, mask_url(self._engine.url), exc) from None
            if verify:
                check_point(point, self.info.point)
        except BaseException:
            await shielded(_close(conn))
            raise
        return conn

    # ------------------------------------------------------------ MariaDB / MySQL

    async def _take_mysql(self) -> None:
        engine = self._engine
        for _ in range(self._sessions):
            conn = await _connect(engine)
            self._ready.append(conn)
        taken = await self._under_read_lock()
        if taken is not None:
            self.info = taken
            return
        log_bin = await self._ready[0].scalar(sa.text("SELECT @@log_bin"))
        await self._ready[0].rollback()
        if log_bin and int(log_bin):
            for attempt in range(CONSISTENT_START_RETRIES):
                points = await _start_together(self._ready)
                if len(set(points)) == 1 and points[0]:
                    self.info = SnapshotInfo(
                        self.dialect,
                        "binlog_position",
                        True,
                        point=points[0],
                        taken_at=_now(),
                        note="every session's snapshot stands at the same binlog position",
                    )
                    return
                for conn in self._ready:
                    await conn.rollback()
                # A short, growing, jittered pause: a burst of commits may pass meanwhile.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            note = (
                f"commits kept landing between the sessions' starts ({CONSISTENT_START_RETRIES} "
                "tries): the parts may come from slightly different points in time"
            )
        else:
            note = (
                "no RELOAD privilege for a brief FLUSH TABLES WITH READ LOCK, and no binary "
                "log to compare the sessions' positions: the parts may come from slightly "
                "different points in time (grant RELOAD, or use --jobs 1 for one snapshot)"
            )
            await _start_together(self._ready)
        self.info = SnapshotInfo(self.dialect, "none", False, taken_at=_now(), note=note)

    async def _under_read_lock(self) -> SnapshotInfo | None:
        """Start every session under a brief global read lock; None when not permitted."""
        locker = await _connect(self._engine)
        try:
            await locker.exec_driver_sql(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
            try:
                await locker.exec_driver_sql("FLUSH TABLES WITH READ LOCK")
            except Exception as exc:
                if _mysql_errno(exc) in _MY_ACCESS_DENIED:
                    return None
                raise_translated(exc, url=self._engine.url)
            try:
                points = await _start_together(self._ready)
            finally:
                await locker.exec_driver_sql("UNLOCK TABLES")
        finally:
            await shielded(_close(locker))
        return SnapshotInfo(
            self.dialect,
            "flush_tables_with_read_lock",
            True,
            point=points[0] or None,
            taken_at=_now(),
            note="every session started under one brief global read lock",
        )


async def join_exported(engine: AsyncEngine, info: SnapshotInfo) -> AsyncConnection:
    """A connection at a snapshot another process holds (a distributed export's coordinator),
    verified against the point it recorded; :class:`SnapshotError` when it cannot be joined
    (the coordinator is gone), so the caller fails at once instead of reading another point."""
    if info.dialect != "postgresql" or info.id is None:
        raise SnapshotError(
            "only PostgreSQL's exported snapshots can be joined from another process"
        )
    holder = Snapshot(engine, sessions=1)
    holder.info = info
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            return await holder._import_pg(info.id)
    except TimeoutError:
        raise SnapshotError(
            f"joining snapshot {info.id} on {mask_url(engine.url)} took over "
            f"{SETUP_TIMEOUT:.0f} s: the server did not answer; try again"
        ) from None


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    try:
        return await engine.connect()
    except Exception as exc:
        raise_translated(exc, url=engine.url, connecting=True)


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.rollback()
    with contextlib.suppress(Exception):
        await conn.close()


async def _pg_point(conn: AsyncConnection) -> str:
    return str(await conn.scalar(sa.text(POINT_QUERY)))


async def _start_together(sessions: list[AsyncConnection]) -> list[str]:
    """Start every session's read-only snapshot at (nearly) one moment: each step is sent on
    all sessions at once, so the STARTs are one round trip apart at most. Their binlog
    positions ("" without a binlog) say whether a commit landed in between."""

    async def each(sql: str) -> None:
        await asyncio.gather(*(conn.exec_driver_sql(sql) for conn in sessions))

    await each("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    await each("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    return list(await asyncio.gather(*(_binlog_point(conn) for conn in sessions)))


async def _binlog_point(conn: AsyncConnection) -> str:
    rows: Any = (
        await conn.exec_driver_sql(
            "SHOW SESSION STATUS WHERE Variable_name IN "
            "('binlog_snapshot_file', 'binlog_snapshot_position')"
        )
    ).all()
    values = {str(r[0]).lower(): str(r[1]) for r in rows}
    file = values.get("binlog_snapshot_file", "")
    return f"{file}:{values.get('binlog_snapshot_position', '')}" if file else ""


def _mysql_errno(exc: BaseException) -> int | None:
    inner: BaseException | None = getattr(exc, "orig", None) or exc
    while inner is not None:
        args = getattr(inner, "args", ())
        if args and isinstance(args[0], int):
            return int(args[0])
        inner = inner.__cause__
    return None


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__
