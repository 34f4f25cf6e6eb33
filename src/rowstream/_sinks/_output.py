"""Destinations: where an encoder's bytes go, counted, maybe gzip'd, errors named for the target.

- a path: an atomic file (:class:`rowstream._atomic.AtomicFile`), whole or not at all;
- ``"-"``: standard output, written as it goes;
- any writable binary stream (an object with ``write(bytes)``: ``io.BytesIO``, a socket's
  file, a response body's buffer): written as it goes; it is flushed, never closed, since the
  caller owns it.

Encoders (:mod:`rowstream._sinks`) write into the :class:`Output` this module yields; none of
them seeks, so every format goes to every destination.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast, runtime_checkable

from .._atomic import STDOUT, AtomicFile, check_writable, write_error
from .._exceptions import SinkError

__all__ = [
    "Destination",
    "Output",
    "Target",
    "Writable",
    "check_target",
    "is_stream",
    "open_output",
    "target_name",
]

WRITE_BEHIND_BYTES = 32 * 1024 * 1024


@runtime_checkable
class Writable(Protocol):
    """Any binary stream an export can write to."""

    def write(self, data: bytes, /) -> object: ...


Target = str | os.PathLike[str] | Writable


def is_stream(target: Target) -> bool:
    """Whether ``target`` is a stream the caller owns (not a path, not ``"-"``)."""
    return not isinstance(target, (str, os.PathLike)) and callable(getattr(target, "write", None))


def target_name(target: Target) -> str:
    """How reports and messages name ``target``: the path, ``"-"``, or the stream's name."""
    if isinstance(target, (str, os.PathLike)):
        return str(target)
    name = getattr(target, "name", None)
    return name if isinstance(name, str) else f"<{type(target).__name__}>"


def check_target(target: Target) -> None:
    """Refuse early, before any query, a target that cannot be written."""
    if isinstance(target, (str, os.PathLike)):
        if str(target) != STDOUT:
            check_writable(Path(target))
    elif not is_stream(target):
        raise SinkError(
            f"cannot write to a {type(target).__name__}: give a path, '-' or a binary stream "
            "with a write(bytes) method"
        )


class _Stream:
    """A caller's stream, its failures raised as one :class:`SinkError`."""

    def __init__(self, out: Writable, name: str) -> None:
        self._out = out
        self._name = name

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._out.write(data)  # type: ignore[arg-type]
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(
                f"cannot write to {self._name}: {type(exc).__name__}: {exc}; the rows before "
                "it were written"
            ) from exc
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is None:
            return
        try:
            flush()
        except Exception as exc:
            raise SinkError(f"cannot flush {self._name}: {type(exc).__name__}: {exc}") from exc


class Output:
    """The binary file encoders write into: it counts bytes and cannot be closed by them.

    Parquet and gzip writers close the file they are given; the atomic file below must stay
    open to be fsynced, and a caller's stream is the caller's to close.
    """

    def __init__(self, out: BinaryIO, *, write_behind: bool) -> None:
        self._out = out
        self.bytes = 0
        self.closed = False
        self._write_behind_at = WRITE_BEHIND_BYTES if write_behind else -1
        self._advised = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        n = len(data)
        self.bytes += n
        if 0 <= self._write_behind_at <= self.bytes - self._advised:
            self._write_behind()
        return n

    def _write_behind(self) -> None:
        # Start writing finished pages to disk now, so the final fsync has little left to do
        # (on a 584 MB CSV it took 1.2 s at the end); Linux starts write-back of dirty pages
        # on POSIX_FADV_DONTNEED without waiting for it. Pipes and other systems: no-op.
        start, self._advised = self._advised, self.bytes
        with contextlib.suppress(OSError, AttributeError, ValueError):
            self._out.flush()
            os.posix_fadvise(self._out.fileno(), start, 0, os.POSIX_FADV_DONTNEED)

    def flush(self) -> None:
        self._out.flush()

    def tell(self) -> int:
        # pyarrow asks where it is to record the row groups' offsets in the footer.
        return self.bytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Destination:
    """An open output: ``out`` for the encoder (gzip'd if asked), the bytes written so far."""

    def __init__(self, output: Output, compression: str | None) -> None:
        self._output = output
        self._zipped: gzip.GzipFile | None = None
        self.out: BinaryIO = cast(BinaryIO, output)
        if compression == "gzip":
            # mtime=0: the same rows give the same bytes.
            self._zipped = gzip.GzipFile(fileobj=self.out, mode="wb", mtime=0)
            self.out = cast(BinaryIO, self._zipped)
        #: The output's size once closed (the file's size on disk for a file).
        self.size = 0

    @property
    def bytes(self) -> int:
        """Bytes written to the destination so far (compressed, if gzip'd)."""
        return self._output.bytes

    def finish(self) -> None:
        if self._zipped is not None:
            self._zipped.close()
        self._output.flush()


@contextlib.contextmanager
def open_output(target: Target, compression: str | None = None) -> Iterator[Destination]:
    """Open ``target`` for an export; on a clean exit it is complete (a file renamed in
    place), on an error a file is removed and the target left as it was.

    >>> import io
    >>> buffer = io.BytesIO()
    >>> with open_output(buffer) as destination:
    ...     _ = destination.out.write(b"id\\n1\\n")
    >>> buffer.getvalue(), destination.size
    (b'id\\n1\\n', 5)
    """
    name = target_name(target)
    if is_stream(target):
        destination = Destination(
            Output(cast(BinaryIO, _Stream(cast(Writable, target), name)), write_behind=False),
            compression,
        )
        try:
            yield destination
            destination.finish()
        except OSError as exc:
            raise write_error(name, exc) from None
        destination.size = destination.bytes
        return
    atomic = AtomicFile(cast("str | Path", target))
    with atomic as raw:
        destination = Destination(Output(raw, write_behind=not atomic.stdout), compression)
        try:
            yield destination
            destination.finish()
        except OSError as exc:
            raise write_error(name, exc) from None
    destination.size = atomic.size or destination.bytes
