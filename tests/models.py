"""The seeds' ORM models, shared by the tests: users, their orders, invoices.

Shaped like the examples in ``shared/seeds`` (``Order`` with ``user_id``, ``total_cents``,
``status``; ``User`` with ``email`` and ``orders``; ``Invoice`` with ``amount_cents`` and
``issued_at``), plus the columns of the benchmark's orders table. :func:`seed` fills them with
deterministic data whose expected values the tests compute from the same constants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

USERS = 20
ORDERS = 1_500
INVOICES = 600
STATUSES = ("pending", "completed", "shipped", "cancelled")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(sa.String(100))
    orders: Mapped[list[Order]] = relationship(back_populates="user", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    total_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(20))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(sa.Text)
    user: Mapped[User] = relationship(back_populates="orders")


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(20))
    issued_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


def user_row(i: int) -> dict[str, object]:
    return {"id": i, "email": f"user{i}@example.com"}


def order_row(i: int) -> dict[str, object]:
    return {
        "id": i,
        "user_id": 1 + i % USERS,
        "total_cents": 100 + (i * 7919) % 100_000,
        "status": STATUSES[i % len(STATUSES)],
        "created_at": EPOCH + timedelta(minutes=i),
        "note": None if i % 10 == 0 else f"order note {i}",
    }


def invoice_row(i: int) -> dict[str, object]:
    return {
        "id": i,
        "user_id": 1 + i % USERS,
        "amount_cents": 500 + (i * 104_729) % 50_000,
        "status": "ready_to_send" if i % 3 else "sent",
        "issued_at": EPOCH + timedelta(hours=i),
    }


async def seed(engine: AsyncEngine) -> None:
    """Create the tables afresh and fill them with the rows above."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(sa.insert(User), [user_row(i) for i in range(1, USERS + 1)])
        await conn.execute(sa.insert(Order), [order_row(i) for i in range(1, ORDERS + 1)])
        await conn.execute(sa.insert(Invoice), [invoice_row(i) for i in range(1, INVOICES + 1)])
