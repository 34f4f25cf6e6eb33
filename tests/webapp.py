"""The FastAPI application the web tests run under a real uvicorn (see tests/test_web.py).

Configured by the environment, since uvicorn imports it in a child process:
ROWSTREAM_WEB_URL (the database), ROWSTREAM_WEB_LIMIT (concurrent downloads),
ROWSTREAM_WEB_SEND_TIMEOUT (seconds), ROWSTREAM_WEB_SPEC (the ASGI spec version the app is
told, whatever the server speaks: Starlette listens for disconnects only below 2.4).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

import rowstream
import rowstream.web

URL = os.environ["ROWSTREAM_WEB_URL"]
LIMIT = rowstream.web.DownloadLimit(int(os.environ.get("ROWSTREAM_WEB_LIMIT", "16")), 7)
SEND_TIMEOUT = float(os.environ.get("ROWSTREAM_WEB_SEND_TIMEOUT", "30"))
# One engine for the app, as a service has; /fresh/ uses the URL (an engine per download).
engine = rowstream.create_engine(URL, pool_size=4, max_overflow=200, connect_args={})

app = FastAPI()

_FORMATS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}


@app.get("/")
async def page() -> Response:
    """A page with a link to a download, for the browser test."""
    html = '<html><body><a id="get" href="/table/orders.csv" download>orders</a></body></html>'
    return Response(html, media_type="text/html")


@app.get("/table/{name}.{fmt}")
async def table(name: str, fmt: str, where: str | None = None) -> Response:
    return rowstream.web.response(
        engine,
        name,
        format=_FORMATS[fmt],  # type: ignore[arg-type]
        where=where,
        limit=LIMIT,
        send_timeout=SEND_TIMEOUT,
    )


@app.get("/fresh/{name}.{fmt}")
async def fresh(name: str, fmt: str) -> Response:
    return rowstream.web.response(
        URL,
        name,
        format=_FORMATS[fmt],  # type: ignore[arg-type]
        limit=LIMIT,
        send_timeout=SEND_TIMEOUT,
    )


@app.get("/query.{fmt}")
async def query(sql: str, fmt: str) -> Response:
    return rowstream.web.response(
        engine,
        sa.text(sql),
        format=_FORMATS[fmt],  # type: ignore[arg-type]
        limit=LIMIT,
        send_timeout=SEND_TIMEOUT,
    )


_fastapi = app
SPEC = os.environ.get("ROWSTREAM_WEB_SPEC")


async def _told_spec(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and SPEC:
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": SPEC}}
    await _fastapi(scope, receive, send)


if SPEC:
    app = _told_spec  # type: ignore[assignment]
