"""The apps bench_web.py serves with uvicorn: rowstream.web and the two ways people write
it by hand. ``ROWSTREAM_BENCH_WEB_URL`` is the database, ``ROWSTREAM_BENCH_WEB_ROWS`` the rows."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from starlette.responses import Response, StreamingResponse

import rowstream
import rowstream.web

URL = os.environ["ROWSTREAM_BENCH_WEB_URL"]
ROWS = int(os.environ["ROWSTREAM_BENCH_WEB_ROWS"])
engine = rowstream.create_engine(URL)
orders = sa.table(
    "bench_orders",
    *(sa.column(c) for c in ("id", "user_id", "total_cents", "status", "created_at", "note")),
)
query = sa.select(orders).where(orders.c.id <= ROWS)
app = FastAPI()


@app.get("/rowstream.{fmt}")
async def by_rowstream(fmt: str) -> Response:
    return rowstream.web.response(
        engine,
        "bench_orders",
        format="csv" if fmt == "csv" else "jsonl",
        where=f"id <= {ROWS}",
    )


@app.get("/naive.jsonl")
async def naive() -> Response:
    """What the issue measured: a StreamingResponse yielding one JSON line per row."""

    async def lines() -> AsyncIterator[str]:
        async with rowstream.stream(engine, query) as rows:
            async for row in rows:
                yield json.dumps(row._asdict(), default=str) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.get("/fastapi.jsonl")
async def fastapi_jsonl() -> AsyncIterator[dict[str, Any]]:
    """FastAPI's own JSON Lines streaming (0.134+): an async generator endpoint."""
    async with rowstream.stream(engine, query) as rows:
        async for row in rows:
            yield row._asdict()
