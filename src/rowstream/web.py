"""``rowstream.web.response``: a query as a CSV, JSON Lines or Parquet download (Starlette).

Needs the ``web`` extra (``pip install 'rowstream[web]'``, which brings Starlette)::

    from fastapi import FastAPI
    import rowstream.web

    app = FastAPI()
    engine = rowstream.create_engine("postgresql://app@db/shop")

    @app.get("/orders.csv")
    async def orders() -> Response:
        return rowstream.web.response(engine, "orders", filename="orders.csv")

What the response does that a ``StreamingResponse`` around :func:`rowstream.stream` does not:

- the stream opens before the status line is sent, so a bad query or an unreachable database
  is an HTTP error (a status and one line, never a traceback or a password); an error after
  the first byte aborts the response without its last chunk, so the client sees a
  truncated download, never one that looks complete;
- rows are rendered by rowstream's own sinks, byte for byte as ``rowstream export`` writes
  them, and sent in pieces of about ``chunk_bytes``; gzip when the client accepts it;
- when the client goes away, the stream is closed at once (cursor, transaction, connection),
  whatever ASGI version the server speaks; a client that stops reading for ``send_timeout``
  seconds is cut off; memory is one batch per response whatever the client's speed;
- rows are read by keyset pages whenever the statement has a key (its table's primary key),
  so no transaction stays open while bytes wait on a slow client, and behind PgBouncer;
- at most ``DownloadLimit.max_downloads`` responses stream at once in the process; the next
  gets ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal
from urllib.parse import quote

import anyio
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ._exceptions import ConfigurationError, RowstreamError, SourceError
from ._sinks._options import FORMATS, Format, check_compression, check_edge_values
from ._sizing import DEFAULT_BATCH_BYTES
from ._source import Source
from ._values import DEFAULT_ZERO_DATES, ZeroDates, check_zero_dates
from ._watchdog import DEFAULT_READ_TIMEOUT, check_read_timeout
from ._web_rows import CopyPages, Rendered, open_rendered

__all__ = ["ClientTooSlowError", "DownloadLimit", "RowsResponse", "downloads", "response"]

logger = logging.getLogger("rowstream")

MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
SUFFIXES: dict[str, str] = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
DEFAULT_CHUNK_BYTES = 256 * 1024
DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_MAX_DOWNLOADS = 16
# zlib's level 1 keeps gzip from being the slowest step of a CSV download (level 9, the
# export's, runs at about 20 MB/s); CSV still shrinks about 4x.
DEFAULT_GZIP_LEVEL = 1


class ClientTooSlowError(RowstreamError):
    """The client read nothing for ``send_timeout`` seconds: the download was cut off."""


class DownloadLimit:
    """At most ``max_downloads`` responses streaming at once; beyond, ``503`` and
    ``Retry-After: retry_after``.

    One limit is shared by every response that gets it; :data:`downloads` is the process's
    default. Example::

        exports = rowstream.web.DownloadLimit(4, retry_after=10)
        return rowstream.web.response(engine, "orders", limit=exports)
    """

    def __init__(self, max_downloads: int = DEFAULT_MAX_DOWNLOADS, retry_after: int = 5) -> None:
        if max_downloads < 1:
            raise ConfigurationError(f"max_downloads must be at least 1, not {max_downloads}")
        if retry_after < 0:
            raise ConfigurationError(f"retry_after must not be negative, not {retry_after}")
        self.max_downloads = max_downloads
        self.retry_after = retry_after
        self.active = 0

    def try_enter(self) -> bool:
        # One event loop per process serves the responses: no lock needed between the check
        # and the count, nothing awaits in between.
        if self.active >= self.max_downloads:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


#: The process-wide limit every response uses unless given another.
downloads = DownloadLimit()


def response(
    source: Source,
    statement: Any,
    *,
    format: Format = "csv",
    filename: str | None = None,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    gzip: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    batch_rows: int | None = None,
    limit: DownloadLimit | None = None,
    compression: str = "zstd",
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
    text_columns: Sequence[str] | None = None,
    infinity: Literal["error", "null", "clamp", "text"] = "error",
    nan: Literal["error", "null", "text"] = "error",
    headers: Mapping[str, str] | None = None,
    background: BackgroundTask | None = None,
) -> RowsResponse:
    """A Starlette response that streams ``statement`` as a file download (a FastAPI endpoint
    may return it as it is).

    ``source`` and ``statement`` are what :func:`rowstream.export` takes (a URL, an engine or
    an ``AsyncSession``, whose engine lends a connection of the stream's own, so the session's
    lifetime does not matter; a table name, a ``Table``, a ``select()`` or a ``text()``);
    ``where``, ``columns``, ``zero_dates``, ``text_columns``, ``infinity``, ``nan`` and
    ``compression`` (Parquet's codec) mean what they mean there, and the bytes are those
    ``rowstream export`` writes for the same rows. ``filename`` (default: the table's name, or
    ``export``, with the format's suffix) goes into ``Content-Disposition``. CSV and JSON Lines
    are gzipped when the client accepts it and ``gzip`` is true.

    ``send_timeout`` (seconds; None: no bound) cuts off a client that reads nothing for that
    long; ``read_timeout`` bounds each wait for the database as in :func:`rowstream.stream`.
    ``limit`` caps concurrent downloads (default :data:`downloads`, shared by the process).

    Example::

        @app.get("/orders.csv")
        async def orders(session: AsyncSession = Depends(get_session)) -> Response:
            return rowstream.web.response(session, select(Order), filename="orders.csv")
    """
    if format not in FORMATS:
        raise ConfigurationError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if chunk_bytes < 1:
        raise ConfigurationError(f"chunk_bytes must be positive, not {chunk_bytes}")
    if send_timeout is not None and send_timeout <= 0:
        raise ConfigurationError(f"send_timeout must be positive or None, not {send_timeout}")
    check_edge_values(infinity, nan)
    check_compression(compression)
    check_zero_dates(zero_dates)
    check_read_timeout(read_timeout)
    if filename is None:
        stem = statement.split(".")[-1] if isinstance(statement, str) else "export"
        filename = stem + SUFFIXES[format]
    options: dict[str, Any] = {
        "where": where,
        "columns": columns,
        "batch_rows": batch_rows,
        "batch_bytes": batch_bytes,
        "compression": compression,
        "zero_dates": zero_dates,
        "text_columns": text_columns,
        "read_timeout": read_timeout,
        "infinity": infinity,
        "nan": nan,
    }
    return RowsResponse(
        source,
        statement,
        format,
        filename,
        options,
        gzip=gzip and format != "parquet",
        chunk_bytes=chunk_bytes,
        send_timeout=send_timeout,
        limit=limit or downloads,
        headers=headers,
        background=background,
    )


def _disposition(filename: str) -> str:
    """``attachment`` with the file's name, as Starlette's FileResponse writes it."""
    name = PurePath(filename).name
    quoted = quote(name)
    if quoted != name:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{name}"'


def _accepts_gzip(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key.lower() != b"accept-encoding":
            continue
        for item in value.decode("latin-1").split(","):
            coding, _, params = item.strip().partition(";")
            if coding.strip().lower() not in ("gzip", "*"):
                continue
            q = params.strip().lower().removeprefix("q=").strip()
            try:
                return not q or float(q) > 0
            except ValueError:
                return False
    return False


def _error_response(exc: BaseException) -> Response:
    """A status and one line: never a traceback, and rowstream's messages mask passwords."""
    if isinstance(exc, SourceError):
        # The database is unreachable or went away: the client may try again later.
        return PlainTextResponse(f"database unavailable: {exc}\n", status_code=503)
    if isinstance(exc, RowstreamError):
        return PlainTextResponse(f"export failed: {exc}\n", status_code=500)
    return PlainTextResponse("export failed: internal error\n", status_code=500)


class RowsResponse(StreamingResponse):
    """The response :func:`response` returns; the stream opens when the server calls it."""

    def __init__(
        self,
        source: Source,
        statement: Any,
        format: Format,
        filename: str,
        options: dict[str, Any],
        *,
        gzip: bool,
        chunk_bytes: int,
        send_timeout: float | None,
        limit: DownloadLimit,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        all_headers = {
            "content-disposition": _disposition(filename),
            # nginx would buffer the whole download before passing it on.
            "x-accel-buffering": "no",
            "cache-control": "no-store",
            **(headers or {}),
        }
        if gzip:
            all_headers["vary"] = "Accept-Encoding"
        super().__init__(
            _nothing(), headers=all_headers, media_type=MEDIA_TYPES[format], background=background
        )
        self._source = source
        self._statement = statement
        self._format = format
        self._options = options
        self._gzip = gzip
        self._chunk_bytes = chunk_bytes
        self._send_timeout = send_timeout
        self._limit = limit
        #: Set once the response has ended: rows sent, and how it ended.
        self.rows = 0
        self.outcome = "not started"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._limit.try_enter():
            self.outcome = "refused: too many downloads"
            busy = PlainTextResponse(
                "too many downloads at once: try again shortly\n",
                status_code=503,
                headers={"retry-after": str(self._limit.retry_after)},
            )
            await busy(scope, receive, send)
            return
        try:
            await self._serve(scope, receive, send)
        finally:
            self._limit.leave()
        if self.background is not None:
            await self.background()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        gzipped = self._gzip and _accepts_gzip(scope)
        try:
            rendered = await open_rendered(
                self._source,
                self._statement,
                self._format,
                gzip_level=DEFAULT_GZIP_LEVEL if gzipped else None,
                **self._options,
            )
        except Exception as exc:
            shown = exc if isinstance(exc, RowstreamError) else repr(exc)
            logger.warning("download not started: %s", shown)
            self.outcome = f"refused: {exc}"
            await _error_response(exc)(scope, receive, send)
            return
        if gzipped:
            self.headers["content-encoding"] = "gzip"
        # How the rows are read ("keyset": no transaction waits on this client).
        self.headers["x-rowstream-strategy"] = rendered.strategy
        self.body_iterator = self._pieces(rendered)
        try:
            await self._stream(receive, send)
        except ClientDisconnect:
            self.outcome = "client went away"
        finally:
            # Whatever ended the response (the end, the client leaving, an error, a
            # cancellation): the cursor is closed, the transaction rolled back, the connection
            # returned, now and not when the generator is collected.
            with anyio.CancelScope(shield=True):
                await rendered.aclose()
            self.rows = rendered.rows

    async def _pieces(self, rendered: Rendered | CopyPages) -> Any:
        size = self._chunk_bytes
        async for data in rendered.chunks():
            if len(data) <= size:
                yield data
                continue
            for start in range(0, len(data), size):
                yield data[start : start + size]
            del data

    async def _stream(self, receive: Receive, send: Send) -> None:
        """Starlette's own body loop, raced against the client's disconnect on every ASGI
        version (Starlette listens only below 2.4, and never closes the body iterator), with
        each send bounded by ``send_timeout``."""
        timeout = self._send_timeout

        async def bounded_send(message: Message) -> None:
            try:
                with anyio.fail_after(timeout):
                    await send(message)
            except TimeoutError:
                raise ClientTooSlowError(
                    f"the client read nothing for {timeout:g} s: download cut off"
                ) from None

        failure: BaseException | None = None
        gone = False
        async with anyio.create_task_group() as group:

            async def body() -> None:
                nonlocal failure
                try:
                    await self.stream_response(bounded_send)
                    self.outcome = "complete"
                except OSError:
                    self.outcome = "client went away"
                except Exception as exc:
                    failure = exc
                group.cancel_scope.cancel()

            group.start_soon(body)
            await self.listen_for_disconnect(receive)
            gone = True
            group.cancel_scope.cancel()
        if failure is not None:
            # After the first byte the only honest signal left is to drop the connection
            # before the last chunk: the server does that when the application raises.
            self.outcome = f"aborted: {failure}"
            logger.warning("download aborted after the first byte: %s", failure)
            raise failure
        if gone and self.outcome != "complete":
            self.outcome = "client went away"


async def _nothing() -> Any:
    # The body is set when the response is called (see RowsResponse._serve).
    return
    yield
