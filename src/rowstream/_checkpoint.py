"""Checkpoints: where a keyed run of ``process()`` has got to, so that a restart skips done work.

A checkpoint holds a low watermark, ``after``: every row whose key is at or before it has been
handled. Batches finish out of order, so it also holds the key ranges handled beyond the
watermark (``done``). A restart streams ``start_after=after`` and drops the rows that fall in
a ``done`` range before they reach a handler.

Two stores, one format (a small JSON document):

- :class:`FileCheckpoint`: a JSON file, replaced atomically (temporary file, fsync, rename),
  so a crash leaves the previous checkpoint or the new one, never half of one.
- :class:`TableCheckpoint`: a row in a table of the same database (``rowstream_checkpoints``
  by default, created when missing), one row per checkpoint name.

Both are plain synchronous objects: ``rowstream.sync.process`` calls them directly,
``rowstream.process`` from a worker thread (a checkpoint is a few hundred bytes written once
per batch, not worth a second async driver).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import URL

from ._exceptions import ConfigurationError, ResumeError, SinkError

#: The values of one key (a row's key columns, in order); not the `Key` of rowstream._keys.
KeyValues = tuple[Any, ...]
FORMAT_VERSION = 1
DEFAULT_TABLE = "rowstream_checkpoints"

# Key values whose Python order is the database's order on every backend rowstream reads.
# Text is not among them: collations (case-insensitive MySQL, ICU or libc PostgreSQL) order
# strings differently from Python, so text keys keep only the watermark (see Checkpoint).
_ORDERED_TYPES = (int, float, Decimal, datetime, date, time, timedelta, UUID, bytes)


# -- the document ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What a checkpoint store holds.

    ``after`` is the low watermark: every row with a key up to and including it is done.
    ``done`` lists key ranges ``(first, last)``, inclusive, handled beyond the watermark;
    it is kept only for keys whose values Python orders as the database does (numbers, dates
    and times, UUIDs, bytes), since a restart compares keys in Python to drop those rows.
    ``rows`` and ``batches`` count what was handled across every run so far; ``complete``
    is true once a run reached the end of its stream.
    """

    key_columns: tuple[str, ...]
    after: KeyValues | None = None
    done: list[tuple[KeyValues, KeyValues]] = field(default_factory=list)
    rows: int = 0
    batches: int = 0
    complete: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "key_columns": list(self.key_columns),
                "after": _encode_key(self.after),
                "done": [[_encode_key(a), _encode_key(b)] for a, b in self.done],
                "rows": self.rows,
                "batches": self.batches,
                "complete": self.complete,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Checkpoint:
        try:
            doc = json.loads(text)
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {doc.get('version')!r}")
            return cls(
                key_columns=tuple(doc["key_columns"]),
                after=_decode_key(doc["after"]),
                done=[(_decode_key(a), _decode_key(b)) for a, b in doc["done"]],  # type: ignore[misc]
                rows=int(doc["rows"]),
                batches=int(doc["batches"]),
                complete=bool(doc["complete"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ResumeError(
                f"the checkpoint {where} is not readable ({exc}): delete it to start over"
            ) from None


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    for name, kind in _CODECS:
        if isinstance(value, kind):
            return {"$": name, "v": _ENCODERS[name](value)}
    raise ConfigurationError(
        f"cannot checkpoint a key value of type {type(value).__name__}: use a key of numbers, "
        "text, dates, times, UUIDs or bytes"
    )


def _encode_key(key: KeyValues | None) -> list[Any] | None:
    return None if key is None else [_encode_value(v) for v in key]


def _decode_key(raw: list[Any] | None) -> KeyValues | None:
    if raw is None:
        return None
    return tuple(_DECODERS[v["$"]](v["v"]) if isinstance(v, dict) else v for v in raw)


# datetime before date: a datetime is a date.
_CODECS: list[tuple[str, type]] = [
    ("datetime", datetime),
    ("date", date),
    ("time", time),
    ("timedelta", timedelta),
    ("decimal", Decimal),
    ("uuid", UUID),
    ("bytes", bytes),
]
_ENCODERS: dict[str, Any] = {
    "datetime": datetime.isoformat,
    "date": date.isoformat,
    "time": time.isoformat,
    "timedelta": lambda v: [v.days, v.seconds, v.microseconds],
    "decimal": str,
    "uuid": str,
    "bytes": lambda v: base64.b64encode(v).decode("ascii"),
}
_DECODERS: dict[str, Any] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": Decimal,
    "uuid": UUID,
    "bytes": base64.b64decode,
}


def orders_like_the_database(key: KeyValues | None) -> bool:
    """True when comparing ``key`` with another key in Python gives the database's order."""
    return key is not None and all(
        isinstance(v, _ORDERED_TYPES) and not isinstance(v, bool) for v in key
    )


# -- stores ----------------------------------------------------------------------------------


@runtime_checkable
class CheckpointStore(Protocol):
    """Where a checkpoint lives. Methods are synchronous and may block (file or database I/O)."""

    def load(self) -> Checkpoint | None:
        """The saved checkpoint, or None when there is none yet."""

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the saved checkpoint, atomically."""

    def clear(self) -> None:
        """Forget the checkpoint, so that the next run starts from the beginning."""


class FileCheckpoint:
    """A checkpoint in a JSON file, replaced atomically on every save.

    Example::

        report = await rowstream.process(
            engine, select(Invoice).where(Invoice.status == "ready"), send,
            checkpoint=rowstream.FileCheckpoint("invoices.checkpoint.json"),
        )
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileCheckpoint({str(self.path)!r})"

    def load(self) -> Checkpoint | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ResumeError(f"cannot read the checkpoint {self.path}: {exc.strerror}") from None
        return Checkpoint.from_json(text, where=str(self.path))

    def save(self, checkpoint: Checkpoint) -> None:
        data = checkpoint.to_json().encode("utf-8")
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise SinkError(
                f"cannot write the checkpoint {self.path}: {exc.strerror}; check that the "
                "directory exists and is writable"
            ) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SinkError(f"cannot write the checkpoint {self.path}: {exc.strerror}") from None
        # The rename is durable only once the directory entry is on disk.
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


class TableCheckpoint:
    """A checkpoint in a table of the database, one row per ``name``.

    ``source`` is a URL or an engine (sync or async); the store talks to the database through
    a small synchronous engine of its own (psycopg, PyMySQL or sqlite3), so it never uses the
    streaming connection. The table (``rowstream_checkpoints`` unless ``table`` says
    otherwise) is created when missing. On SQLite the database must be in WAL mode
    (``PRAGMA journal_mode=WAL``, once): in the default journal mode a write waits for the
    stream's read to end, so no checkpoint could be saved during the run.

    Example::

        store = rowstream.TableCheckpoint(engine, "invoices-2026-11")
        report = await rowstream.process(engine, select(Invoice), send, checkpoint=store)
    """

    def __init__(
        self,
        source: str | URL | sa.Engine | Any,
        name: str,
        *,
        table: str = DEFAULT_TABLE,
    ) -> None:
        if not name or len(name) > 200:
            raise ConfigurationError("a checkpoint name must be 1 to 200 characters long")
        self.name = name
        self._source = source
        self._engine: sa.Engine | None = None
        self._owns_engine = False
        metadata = sa.MetaData()
        self._table = sa.Table(
            table,
            metadata,
            sa.Column("name", sa.String(200), primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
        self._created = False

    def __repr__(self) -> str:
        return f"TableCheckpoint({self._table.name!r}, name={self.name!r})"

    def _conn_engine(self) -> sa.Engine:
        if self._engine is None:
            from ._sync._source import sync_engine_for

            self._engine, self._owns_engine = sync_engine_for(self._source)
        if not self._created:
            if self._engine.dialect.name == "sqlite":
                self._check_wal(self._engine)
            try:
                self._table.create(self._engine, checkfirst=True)
            except sa.exc.DBAPIError as exc:
                # Two runs creating the table at once: the loser finds it there.
                if not sa.inspect(self._engine).has_table(self._table.name):
                    raise SinkError(
                        f"cannot create the checkpoint table {self._table.name}: {_first_line(exc)}"
                    ) from None
            self._created = True
        return self._engine

    @staticmethod
    def _check_wal(engine: sa.Engine) -> None:
        # In SQLite's default rollback-journal mode a write cannot commit while the stream's
        # connection reads the same file: every save would wait for the lock and time out.
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":
            raise ConfigurationError(
                f"a TableCheckpoint in SQLite needs the database in WAL mode (it is in {mode} "
                "mode): run PRAGMA journal_mode=WAL on it once, or use FileCheckpoint"
            )

    def load(self) -> Checkpoint | None:
        table = self._table
        try:
            with self._conn_engine().connect() as conn:
                state = conn.execute(
                    sa.select(table.c.state).where(table.c.name == self.name)
                ).scalar()
        except sa.exc.DBAPIError as exc:
            raise ResumeError(
                f"cannot read the checkpoint {self.name!r} from {table.name}: {_first_line(exc)}"
            ) from None
        if state is None:
            return None
        return Checkpoint.from_json(state, where=f"{self.name!r} in {table.name}")

    def save(self, checkpoint: Checkpoint) -> None:
        table = self._table
        values = {"state": checkpoint.to_json(), "updated_at": sa.func.current_timestamp()}
        try:
            with self._conn_engine().begin() as conn:
                # UPDATE, then INSERT when there was no row: portable across the three
                # databases, and one writer per name is the normal case.
                updated = conn.execute(
                    table.update().where(table.c.name == self.name).values(**values)
                )
                if updated.rowcount == 0:
                    conn.execute(table.insert().values(name=self.name, **values))
        except sa.exc.DBAPIError as exc:
            raise SinkError(
                f"cannot save the checkpoint {self.name!r} in {table.name}: {_first_line(exc)}"
            ) from None

    def clear(self) -> None:
        table = self._table
        with self._conn_engine().begin() as conn:
            conn.execute(table.delete().where(table.c.name == self.name))

    def close(self) -> None:
        """Dispose of the store's own engine (a no-op for an engine the caller passed)."""
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()
        self._engine = None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


# -- the watermark ---------------------------------------------------------------------------


@dataclass
class _Pending:
    first: KeyValues | None
    last: KeyValues | None
    rows: int
    done: bool = False


class Watermark:
    """Follows the batches of one run and says what the checkpoint is at any moment.

    Batches are registered in stream order when they are read (:meth:`read`) and marked done
    in any order (:meth:`done`); the watermark moves over the done batches at the front.
    """

    def __init__(self, key_columns: Sequence[str], loaded: Checkpoint | None) -> None:
        self.key_columns = tuple(key_columns)
        base = loaded or Checkpoint(self.key_columns)
        self.after: KeyValues | None = base.after
        self.rows = base.rows
        self.batches = base.batches
        self._skip: list[tuple[KeyValues, KeyValues]] = list(base.done)
        self._pending: dict[int, _Pending] = {}
        self._front = 0  # the lowest seq not yet done
        self._next = 0
        self.complete = False
        self.dirty = False

    @staticmethod
    def check(loaded: Checkpoint, key_columns: Sequence[str] | None, where: str) -> None:
        """Refuse a checkpoint taken with another key."""
        if key_columns is None:
            raise ConfigurationError(
                "checkpoint= needs a stream key: select from one table with a primary key, or "
                "pass key= with unique non-null columns"
            )
        if tuple(key_columns) != loaded.key_columns:
            raise ResumeError(
                f"the checkpoint {where} was taken with key ({', '.join(loaded.key_columns)}), "
                f"not ({', '.join(key_columns)}): use another checkpoint or clear this one"
            )

    def skips(self, key: KeyValues) -> bool:
        """True when a row with ``key`` was handled by an earlier run (in a ``done`` range)."""
        if not self._skip:
            return False
        try:
            return any(first <= key <= last for first, last in self._skip)
        except TypeError:
            return False

    def read(self, first: KeyValues | None, last: KeyValues | None, rows: int) -> int:
        """Register the next batch in stream order; returns its sequence number."""
        seq = self._next
        self._next += 1
        self._pending[seq] = _Pending(first, last, rows)
        return seq

    def done(self, seq: int) -> None:
        """Mark batch ``seq`` handled (or settled as failed, in collect mode)."""
        pending = self._pending[seq]
        pending.done = True
        self.rows += pending.rows
        self.batches += 1
        while self._front in self._pending and self._pending[self._front].done:
            front = self._pending.pop(self._front)
            if front.last is not None:
                self.after = front.last
            self._front += 1
        self.dirty = True

    def finish(self) -> None:
        """The stream was read to its end and every batch is done."""
        self.complete = not self._pending
        self.dirty = True

    def snapshot(self) -> Checkpoint:
        """The checkpoint to save now."""
        self.dirty = False
        beyond = [
            (p.first, p.last)
            for p in self._pending.values()
            if p.done and orders_like_the_database(p.first) and orders_like_the_database(p.last)
        ]
        done: list[tuple[KeyValues, KeyValues]] = []
        for first, last in [*self._skip, *beyond]:
            if first is None or last is None:
                continue
            if self.after is not None and orders_like_the_database(self.after):
                try:
                    if last <= self.after:
                        continue  # the watermark has passed it
                except TypeError:
                    pass
            done.append((first, last))
        return Checkpoint(
            key_columns=self.key_columns,
            after=self.after,
            done=done,
            rows=self.rows,
            batches=self.batches,
            complete=self.complete,
        )
