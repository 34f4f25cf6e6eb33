"""A FastAPI service whose users download their orders as CSV, JSON Lines or Parquet.

    pip install 'rowstream[web]' fastapi uvicorn
    DATABASE_URL=postgresql://app@db/shop uvicorn examples.fastapi_download:app

    curl -OJ --compressed 'http://127.0.0.1:8000/users/7/orders.csv'
    curl -OJ 'http://127.0.0.1:8000/users/7/orders.parquet'

The session comes from a per-request dependency, as in the seeds' cheatsheet; rowstream
borrows only its engine, so the download does not depend on when FastAPI closes the session.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI
from sqlalchemy import BigInteger, DateTime, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.responses import Response

import rowstream
import rowstream.web


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)


engine = rowstream.create_engine(os.environ.get("DATABASE_URL", "postgresql://app@db/shop"))
Session = async_sessionmaker(engine, expire_on_commit=False)
# At most 8 downloads at once in this process; the 9th client gets 503 and Retry-After: 10.
downloads = rowstream.web.DownloadLimit(8, retry_after=10)
app = FastAPI()


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


@app.get("/users/{user_id}/orders.{fmt}")
async def user_orders(
    user_id: int,
    fmt: Literal["csv", "jsonl", "parquet"],
    session: Annotated[AsyncSession, Depends(get_session)],
) -> Response:
    query = select(Order).where(Order.user_id == user_id)
    return rowstream.web.response(
        session, query, format=fmt, filename=f"orders-{user_id}.{fmt}", limit=downloads
    )
