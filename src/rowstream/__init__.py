"""rowstream: stream very large SQL result sets with flat memory, on async SQLAlchemy 2.x.

async with rowstream.stream("postgresql://app@db/shop", select(Order)) as orders:
    async for order in orders:
        ...
"""

from ._checkpoint import Checkpoint, CheckpointStore, FileCheckpoint, TableCheckpoint
from ._doctor import Diagnosis, doctor
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
from ._export import ExportReport, export
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
