"""rowstream: stream very large SQL result sets with flat memory, on async SQLAlchemy 2.x.

async with rowstream.stream("postgresql://app@db/shop", select(Order)) as orders:
    async for order in orders:
        ...

``import rowstream`` loads only the exceptions: the public functions and classes
(and the ``rowstream.sync`` module) are imported on first use by the module ``__getattr__``
below, so a command like ``rowstream --help`` does not pay for SQLAlchemy, and a CSV export
never loads pyarrow. Type checkers and IDEs see the names through the ``TYPE_CHECKING``
imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._exceptions import (
    ConfigurationError,
    ConnectionLostError,
    HandlerTimeoutError,
    QueryError,
    ResumeError,
    RowstreamError,
    SinkError,
    SourceError,
    StreamKeyError,
    UnsupportedQueryError,
)

if TYPE_CHECKING:
    from . import sync as sync  # the alias marks a re-export: rowstream.sync
    from ._checkpoint import Checkpoint, CheckpointStore, FileCheckpoint, TableCheckpoint
    from ._doctor import Diagnosis, doctor
    from ._export import ExportReport
    from ._export_jobs import export
    from ._process import BatchFailure, ProcessReport, process
    from ._sizing import DEFAULT_BATCH_BYTES
    from ._source import create_engine
    from ._stream import RowStream, Stats, stream

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "BatchFailure",
    "Checkpoint",
    "CheckpointStore",
    "ConfigurationError",
    "ConnectionLostError",
    "Diagnosis",
    "ExportReport",
    "FileCheckpoint",
    "HandlerTimeoutError",
    "ProcessReport",
    "QueryError",
    "ResumeError",
    "RowStream",
    "RowstreamError",
    "SinkError",
    "SourceError",
    "Stats",
    "StreamKeyError",
    "TableCheckpoint",
    "UnsupportedQueryError",
    "create_engine",
    "doctor",
    "export",
    "process",
    "stream",
]

# Where each lazily loaded public name lives.
_LAZY = {
    "DEFAULT_BATCH_BYTES": "._sizing",
    "BatchFailure": "._process",
    "Checkpoint": "._checkpoint",
    "CheckpointStore": "._checkpoint",
    "Diagnosis": "._doctor",
    "ExportReport": "._export",
    "FileCheckpoint": "._checkpoint",
    "ProcessReport": "._process",
    "RowStream": "._stream",
    "Stats": "._stream",
    "TableCheckpoint": "._checkpoint",
    "create_engine": "._source",
    "doctor": "._doctor",
    "export": "._export_jobs",
    "process": "._process",
    "stream": "._stream",
}


def __getattr__(name: str) -> object:
    # Called only for names not yet in the module's namespace (PEP 562).
    if name == "sync":
        return importlib.import_module(".sync", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "sync"})
