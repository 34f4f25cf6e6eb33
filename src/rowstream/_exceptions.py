"""rowstream's exceptions, one tree.

    RowstreamError
    ├── ConfigurationError       bad arguments: unknown strategy, malformed URL, sync driver, ...
    │   └── UnsupportedQueryError    a statement rowstream cannot stream as asked
    │                                (collection joinedload, subqueryload, unique()), or one
    │                                that is not a single read (DML, DDL, a second statement,
    │                                SELECT ... INTO, FOR UPDATE): rowstream only reads
    ├── SourceError              the database cannot be reached or used: refused, unknown host,
    │   │                        missing database, bad credentials, a pooler in the way
    │   ├── ConnectionLostError      the connection dropped in the middle of a stream
    │   └── SnapshotError            a shared snapshot could not be taken, joined or verified
    │                                (a partitioned export's workers join the coordinator's)
    ├── QueryError               the server rejected the statement: unknown table or column,
    │                            syntax, permissions, a timeout; or a value of the result
    │                            cannot be converted here (the message names column and value)
    ├── StreamKeyError           no usable key: nullable, not unique, not in the statement
    ├── ResumeError              a dropped stream could not be resumed (no key, retries spent)
    ├── HandlerTimeoutError      a process() handler ran longer than handler_timeout
    └── SinkError                the output cannot be written (export)

Driver and SQLAlchemy errors are translated where they enter rowstream (``raise ... from exc``),
so callers catch one family. Every message says what to do, never contains a password, and every
exception survives pickling with its context (Celery and process pools send them across).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "ConnectionLostError",
    "HandlerTimeoutError",
    "QueryError",
    "ResumeError",
    "RowstreamError",
    "SinkError",
    "SnapshotError",
    "SourceError",
    "StreamKeyError",
    "UnsupportedQueryError",
]


class RowstreamError(Exception):
    """Base class of every error rowstream raises.

    ``context`` holds what helps to diagnose the failure (table, partition, last key, ...);
    it is shown after the message and kept when the exception is pickled.
    """

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
        return f"{self.message} ({details})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[RowstreamError], message: str, context: dict[str, Any]) -> RowstreamError:
    return cls(message, **context)


class ConfigurationError(RowstreamError):
    """An argument or setting is wrong; nothing was sent to the database."""


class UnsupportedQueryError(ConfigurationError):
    """The statement cannot be streamed as asked; the message names the fix."""


class SourceError(RowstreamError):
    """The database cannot be reached or used as configured."""


class ConnectionLostError(SourceError):
    """The connection dropped in the middle of a stream."""


class SnapshotError(SourceError):
    """The shared snapshot could not be taken, imported or verified."""


class QueryError(RowstreamError):
    """The server rejected the statement, or a value of its result could not be converted
    in this process (then ``context["column"]`` names the column)."""


class StreamKeyError(RowstreamError):
    """No usable key: it must be unique and non-null, and selected by the statement."""


class ResumeError(RowstreamError):
    """A dropped stream could not be resumed."""


class HandlerTimeoutError(RowstreamError, TimeoutError):
    """A ``process()`` handler ran longer than ``handler_timeout``; its batch failed."""


class SinkError(RowstreamError):
    """The output cannot be written."""
