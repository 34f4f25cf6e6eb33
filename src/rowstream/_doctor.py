"""Explain a database setup and say whether streaming will work through it.

:func:`doctor` connects the way a stream does, and reports: server and driver versions, whether
a pooler sits in between and how it pools, the server's timeouts, whether a server-side cursor
and a named prepared statement survive, and the settings to use. The command that prints it,
``rowstream doctor URL``, is :mod:`rowstream._cli_doctor`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from importlib.metadata import version

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ._exceptions import RowstreamError
from ._pooler import PathInfo, inspect_path
from ._source import create_engine, mask_url
from ._stream import stream
from ._translate import raise_translated

_PG_SETTINGS = ("statement_timeout", "idle_in_transaction_session_timeout", "temp_file_limit")
_MYSQL_SETTINGS = (
    "max_execution_time",  # MySQL
    "max_statement_time",  # MariaDB
    "wait_timeout",
    "net_write_timeout",
    "net_read_timeout",
)
_PROBE_ROWS = 5000


@dataclass
class Diagnosis:
    """What doctor found: ``facts`` to show, ``advice`` to follow, ``problems`` that break."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def doctor(url: str) -> Diagnosis:
    """Examine the database at ``url``.

    Example::

        diagnosis = await rowstream.doctor("postgresql://app@pgbouncer:6432/shop")
        for line in diagnosis.advice:
            print(line)
    """
    engine = create_engine(url, pool_size=2, max_overflow=2)
    found = Diagnosis()
    try:
        try:
            async with engine.connect() as conn:
                server = (await conn.execute(sa.text(_version_query(engine)))).scalar()
        except Exception as exc:
            raise_translated(exc, url=engine.url, connecting=True)
        dialect = engine.dialect
        found.facts.append(("database", mask_url(engine.url)))
        found.facts.append(("server", str(server).split(" on ")[0]))
        driver = dialect.driver
        found.facts.append(("driver", f"{driver} {_package_version(driver)}"))
        found.facts.append(("sqlalchemy", sa.__version__))
        if dialect.name == "postgresql":
            await _postgresql(engine, url, found)
        elif dialect.name in {"mysql", "mariadb"}:
            await _mysql(engine, found)
        await _stream_probe(engine, found)
    finally:
        await engine.dispose()
    return found


def _version_query(engine: AsyncEngine) -> str:
    return "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SELECT version()"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "(version unknown)"


async def _settings(engine: AsyncEngine, query: str) -> dict[str, str]:
    async with engine.connect() as conn:
        return {str(k): str(v) for k, v in (await conn.execute(sa.text(query))).all()}


async def _postgresql(engine: AsyncEngine, url: str, found: Diagnosis) -> None:
    path: PathInfo = await inspect_path(engine)
    if path.transaction_pooling:
        pooling = "yes, pooling by transaction (PgBouncer pool_mode=transaction or statement)"
        found.advice.append(
            "a transaction-pooling pooler is in the path: rowstream reads by keyset pages "
            "(strategy='auto' does this) and keeps statement caches off; a server-side cursor "
            "works only inside one transaction and holds a server connection meanwhile"
        )
    elif path.pooler:
        pooling = (
            f"yes: a pooler or proxy answers on port {path.dialled_port} for a server on port "
            f"{path.server_port}; it did not hand out backends per transaction in the probe "
            "(session pooling, or a transaction pool busy elsewhere)"
        )
        found.advice.append(
            "a pooler or proxy is in the path: strategy='auto' reads by keyset pages, which work "
            "through any pool mode"
        )
    else:
        pooling = "no (direct connection)"
    found.facts.append(("pooler", pooling))
    names = ", ".join(f"'{name}'" for name in _PG_SETTINGS)
    settings = await _settings(
        engine,
        f"SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name IN ({names})",
    )
    for name in _PG_SETTINGS:
        found.facts.append((name, settings.get(name, "?")))
    if settings.get("statement_timeout", "0ms") not in {"0", "0ms"}:
        found.advice.append(
            "statement_timeout is set: a long cursor stream may be cancelled; use "
            "strategy='keyset' (each page is a short statement) or raise it for the streaming role"
        )
    if settings.get("idle_in_transaction_session_timeout", "0ms") not in {"0", "0ms"}:
        found.advice.append(
            "idle_in_transaction_session_timeout is set: a slow consumer of a cursor stream gets "
            "its session ended; strategy='auto' reads by keyset pages here"
        )
    found.facts.append(("prepared statements", await _prepared_statements_survive(engine, url)))


async def _prepared_statements_survive(engine: AsyncEngine, url: str) -> str:
    """Prepare a named statement, end the transaction, and use it again in the next one."""
    if engine.dialect.driver != "asyncpg":
        return "not checked (driver is not asyncpg)"
    import asyncpg

    # Plain asyncpg connections (the engine's own cache nothing), from the dialect's reading
    # of the URL: TLS (ssl=require) and any password reach asyncpg as the streams' do, where a
    # DSN string would need its own escaping.
    _, params = engine.dialect.create_connect_args(engine.url)
    for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        params.pop(adapter_only, None)  # SQLAlchemy's adapter takes these, asyncpg does not
    first = await asyncpg.connect(**params)
    try:
        second = await asyncpg.connect(**params)
    except BaseException:
        await first.close()
        raise
    try:
        statement = await first.prepare("SELECT 1")
        await statement.fetchval()
        # Hold a transaction on a second client: a transaction pooler hands it the backend
        # the first client prepared on, and the first must then run elsewhere.
        async with second.transaction():
            await second.fetchval("SELECT 1")
            try:
                await statement.fetchval()
            except asyncpg.PostgresError as exc:
                return (
                    f"named ones do not survive ({type(exc).__name__}): keep statement caches "
                    "off (statement_cache_size=0, prepared_statement_cache_size=0; "
                    "rowstream.create_engine() does)"
                )
        return "survive"
    finally:
        for connection in (first, second):
            with contextlib.suppress(Exception):
                await connection.close()


async def _mysql(engine: AsyncEngine, found: Diagnosis) -> None:
    names = ", ".join(f"'{name}'" for name in _MYSQL_SETTINGS)
    settings = await _settings(
        engine,
        "SELECT variable_name, variable_value FROM information_schema.session_variables "
        f"WHERE variable_name IN ({names.upper()})",
    )
    for name in _MYSQL_SETTINGS:
        if name.upper() in settings:
            found.facts.append((name, settings[name.upper()]))
    found.advice.append(
        "MySQL/MariaDB stream through an unbuffered cursor: a consumer slower than "
        "net_write_timeout seconds between batches loses the connection (rowstream resumes by "
        "key); selectinload() needs strategy='keyset'"
    )


async def _stream_probe(engine: AsyncEngine, found: Diagnosis) -> None:
    """Stream a generated series through a cursor with a pause between batches, as a slow
    consumer would."""
    digits = "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {i}" for i in range(1, 10))
    query = {
        "postgresql": f"SELECT g FROM generate_series(1, {_PROBE_ROWS}) AS g",
        "sqlite": f"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
        f"WHERE g < {_PROBE_ROWS}) SELECT g FROM s",
    }.get(
        engine.dialect.name,
        # MySQL/MariaDB cap recursive CTEs at 1000 levels: count with digits instead.
        f"SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d AS g FROM {digits}) a, {digits}) b, "
        f"{digits}) c, {digits}) e WHERE 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d "
        f"<= {_PROBE_ROWS}",
    )
    try:
        seen = 0
        async with stream(engine, query, batch_rows=500, strategy="cursor") as rows:
            async for batch in rows.batches():
                seen += len(batch)
        if seen != _PROBE_ROWS:
            found.problems.append(
                f"a server-side cursor lost rows: {seen} of {_PROBE_ROWS} arrived; stream with "
                "strategy='keyset'"
            )
            found.facts.append(("server-side cursor", "LOSES ROWS"))
        else:
            found.facts.append(
                ("server-side cursor", f"works ({seen} rows in {rows.stats.batches} batches)")
            )
    except RowstreamError as exc:
        found.problems.append(f"a server-side cursor failed: {exc}")
        found.facts.append(("server-side cursor", "FAILS"))
