"""Files that appear whole or not at all.

Output goes to a temporary file beside the target (same directory, so the final rename stays on
one file system and is atomic), is flushed and fsynced, and only then renamed over the target.
On any error, or on cancellation (Ctrl-C), the temporary file is removed and the target is left
as it was. ``-`` means standard output, which cannot be atomic: it is written as it goes, and a
reader that closes it (``| head``) ends the export with :class:`StdoutClosed`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from ._exceptions import SinkError

__all__ = ["STDOUT", "AtomicFile", "StdoutClosed", "check_writable", "write_error"]

STDOUT = "-"
TEMP_SUFFIX = ".rowstream-tmp"


class StdoutClosed(SinkError):
    """Standard output was closed by its reader before the export ended (``| head``).

    A ``SinkError`` like any other for the API; the CLI ends quietly on it, as Unix tools do.
    It is raised in place of ``BrokenPipeError``, which is a ``ConnectionError`` and would
    otherwise read as a lost database connection.
    """

    def __init__(self, message: str = "", **context: object) -> None:
        super().__init__(
            message
            or "standard output was closed before the export ended (its reader, such as head, "
            "stopped reading)",
            **context,
        )


def write_error(target: str, exc: OSError) -> SinkError:
    """The :class:`SinkError` for an ``OSError`` met while writing ``target``.

    ``BrokenPipeError`` and ``ENOSPC`` are ``OSError`` too, and ``BrokenPipeError`` a
    ``ConnectionError``: met inside a driver's COPY callback they would read as a database
    failure, so they are named for what they are here, where the file is known.
    """
    if target == STDOUT:
        if isinstance(exc, BrokenPipeError):
            return StdoutClosed()
        return SinkError(f"cannot write to standard output: {exc.strerror or exc}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = str(Path(target).parent.resolve())
        return SinkError(
            f"cannot write {target!r}: no space left on device (the disk or quota that holds "
            f"{where!r} is full); free some space or write elsewhere; nothing was written and "
            "the target is as it was"
        )
    return SinkError(f"cannot write {target!r}: {exc.strerror or exc}")


class _Output:
    """The file an export writes (the temporary file, or standard output), with its
    ``OSError`` raised as a :class:`SinkError` about that file (see :func:`write_error`)."""

    def __init__(self, out: BinaryIO, target: str) -> None:
        self._out = out
        self._target = target

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            raise write_error(self._target, exc) from None

    def flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise write_error(self._target, exc) from None

    def fileno(self) -> int:
        return self._out.fileno()

    def close(self) -> None:
        self._out.close()


def check_writable(target: Path) -> None:
    """Refuse early, before any query, when ``target`` cannot be written."""
    directory = target.parent
    if target.is_dir():
        raise SinkError(f"cannot write {str(target)!r}: it is a directory; give a file name")
    if not directory.is_dir():
        raise SinkError(
            f"cannot write {str(target)!r}: the directory {str(directory)!r} does not exist; "
            "create it first"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SinkError(
            f"cannot write {str(target)!r}: no permission to create files in {str(directory)!r}"
        )


class AtomicFile:
    """A binary file that becomes ``target`` on a clean exit and vanishes otherwise.

    Example::

        with AtomicFile(Path("orders.csv")) as out:
            out.write(b"id\\n1\\n")
        # orders.csv now exists, complete; had the block raised, it would not.
    """

    def __init__(self, target: Path | str) -> None:
        self.stdout = str(target) == STDOUT
        self.target = Path(target)
        self.temp: Path | None = None
        self._file: BinaryIO | None = None
        #: Bytes in the finished file (0 for standard output until closed).
        self.size = 0

    def __enter__(self) -> BinaryIO:
        if self.stdout:
            out = cast(BinaryIO, _Output(sys.stdout.buffer, STDOUT))
            self._file = out
            return out
        check_writable(self.target)
        try:
            fd, name = tempfile.mkstemp(
                dir=self.target.parent, prefix=f".{self.target.name}.", suffix=TEMP_SUFFIX
            )
        except OSError as exc:
            raise write_error(str(self.target), exc) from None
        self.temp = Path(name)
        # mkstemp creates 0600; a finished export should have the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        raw = os.fdopen(fd, "wb", buffering=1024 * 1024)
        out = cast(BinaryIO, _Output(raw, str(self.target)))
        self._file = out
        return out

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        """Flush, fsync and rename the temporary file over the target."""
        file = self._file
        self._file = None
        if file is None:
            return
        if self.stdout:
            file.flush()
            return
        assert self.temp is not None
        try:
            file.flush()
            os.fsync(file.fileno())
            self.size = os.fstat(file.fileno()).st_size
            file.close()
            os.replace(self.temp, self.target)
        except (OSError, SinkError) as exc:
            self._remove(file)
            if isinstance(exc, SinkError):
                raise
            raise write_error(str(self.target), exc) from None
        self.temp = None
        # The rename is durable only once the directory entry is on disk too.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def discard(self) -> None:
        """Close and remove the temporary file; the target is untouched."""
        file = self._file
        self._file = None
        if file is None or self.stdout:
            return
        self._remove(file)

    def _remove(self, file: BinaryIO) -> None:
        with contextlib.suppress(OSError):
            file.close()
        if self.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()
            self.temp = None
