"""No fragment of a password shows, whatever it holds, on any error path and in any face.

The password here holds what breaks naive URL handling: ``@`` (twice), ``:``, ``/``, ``#``,
``?``, ``%``, both quotes, a space, a backslash and a non-ASCII letter, unescaped, as people
paste them. Every message, repr, stderr line and progress line is checked for every substring
of four characters or more. The errors are real: an unknown host, a refused port, a wrong
password against a private TLS + scram server, a query the server rejects.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import rowstream
import rowstream.sync
from rowstream import QueryError, RowstreamError, SourceError
from rowstream._source import mask_url, resolve_url, scrub
from tests.plugins._bringup import free_port

HOSTILE = "Xq7@Jv:/W#k?%zz'Z\" \\é@Ty"
# What make_url can parse, wrongly: the password "Kp4w" and the host "Tr9z@Qm2v@127.0.0.1".
MIS_SPLIT = "Kp4w@Tr9z@Qm2v"
ROLE = "rs_ghost"


def fragments(secret: str = HOSTILE, size: int = 4) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def assert_no_fragment(*texts: str, secret: str = HOSTILE) -> None:
    for text in texts:
        leaked = sorted(f for f in fragments(secret) if f in text)
        assert leaked == [], f"{leaked} in {text!r}"


def raw_url(url: str, *, user: str = ROLE, password: str = HOSTILE, **changes: Any) -> str:
    """``url`` with the credentials pasted in unescaped, as a person writes them."""
    rendered = make_url(url).set(**changes).render_as_string(hide_password=False)
    scheme, _, after = rendered.partition("://")
    # Rendered credentials are percent-encoded: the only raw @ is the one that ends them.
    return f"{scheme}://{user}:{password}@{after.rpartition('@')[2]}"


def error_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), *(str(v) for v in getattr(exc, "context", {}).values())]


# ---------------------------------------------------------------- parsing and masking


def test_the_last_at_ends_the_credentials() -> None:
    url = resolve_url(f"postgresql://{ROLE}:{HOSTILE}@db.example:6432/shop?ssl=require")
    assert url.username == ROLE
    assert url.password == HOSTILE
    assert (url.host, url.port, url.database) == ("db.example", 6432, "shop")
    assert dict(url.query) == {"ssl": "require"}
    # The case: make_url alone gives the password "pre" and the host "TAIL@host".
    plain = resolve_url("postgresql://ghost:pre@TAIL@host/db")
    assert (plain.password, plain.host) == ("pre@TAIL", "host")
    # A user name with an @ (Azure's user@server) and no password at all.
    azure = resolve_url("postgresql://app@srv:pw@srv.example/db")
    assert (azure.username, azure.password, azure.host) == ("app@srv", "pw", "srv.example")


def test_urls_without_credentials_keep_their_at() -> None:
    assert resolve_url("sqlite:///dir/a@b.db").database == "dir/a@b.db"
    assert resolve_url("postgresql://db/shop@2024").database == "shop@2024"
    # Already percent-encoded credentials mean what they meant.
    assert resolve_url("postgresql://u:p%40ss@db/shop").password == "p@ss"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://{ROLE}:{HOSTILE}@db:5432/shop",
        f"mysql://{ROLE}:{HOSTILE}@db/shop",
        f"postgresql://{ROLE}:{HOSTILE}@db:port/shop",  # malformed: masked by hand
    ],
)
def test_mask_hides_everything_up_to_the_last_at(url: str) -> None:
    masked = mask_url(url)
    assert_no_fragment(masked)
    assert masked.endswith("@db:5432/shop") or masked.endswith("@db/shop") or "port" in masked


def test_a_url_object_split_at_the_first_at_is_put_right() -> None:
    text = f"postgresql://ghost:{MIS_SPLIT}@host/db"
    mis = make_url(text)
    assert (mis.password, mis.host) == ("Kp4w", "Tr9z@Qm2v@host")
    assert mask_url(mis) == mask_url(text) == "postgresql://ghost:***@host/db"
    assert resolve_url(mis).password == MIS_SPLIT
    assert_no_fragment(scrub(f'could not translate host name "{mis.host}"', mis), secret=MIS_SPLIT)


def test_scrub_removes_each_form_of_the_password() -> None:
    from urllib.parse import quote, quote_plus

    url = resolve_url(f"postgresql://{ROLE}:{HOSTILE}@db/shop")
    conninfo = HOSTILE.replace("\\", "\\\\").replace("'", "\\'")
    text = (
        f"a {HOSTILE} b {quote(HOSTILE, safe='')} c {quote_plus(HOSTILE)} d {HOSTILE!r} "
        f"e password='{conninfo}'"
    )
    assert_no_fragment(scrub(text, url))
    mis = make_url("postgresql://ghost:pre@TAIL@host/db")
    assert "TAIL" not in scrub('could not translate host name "TAIL@host"', mis)


# ---------------------------------------------------------------- real errors


def _tls_role(pg_tls_url: str, role: str, password: str) -> Iterator[str]:
    """A role on the private TLS + scram server with ``password``; its raw URL."""
    literal = password.replace("'", "''")

    async def run(sql: str) -> None:
        engine = rowstream.create_engine(pg_tls_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for statement in sql.split("; "):
                    await conn.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    asyncio.run(run(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{literal}'"))
    try:
        yield raw_url(pg_tls_url, user=role, password=password)
    finally:
        asyncio.run(run(f"DROP ROLE IF EXISTS {role}"))


@pytest.fixture(scope="module")
def ghost_url(pg_tls_url: str) -> Iterator[str]:
    yield from _tls_role(pg_tls_url, ROLE, HOSTILE)


@pytest.fixture(scope="module")
def mis_split_url(pg_tls_url: str) -> Iterator[str]:
    yield from _tls_role(pg_tls_url, "rs_ghost2", MIS_SPLIT)


async def test_a_raw_url_with_any_password_connects(ghost_url: str, mis_split_url: str) -> None:
    async with rowstream.stream(ghost_url, sa.text("SELECT current_user")) as rows:
        assert [tuple(r) async for r in rows] == [(ROLE,)]
    # The sync face parses the same way (psycopg spells TLS as libpq does).
    libpq = ghost_url.replace("ssl=require", "sslmode=require")
    with rowstream.sync.stream(libpq, sa.text("SELECT current_user")) as sync_rows:
        assert [tuple(r) for r in sync_rows] == [(ROLE,)]
    # A URL object make_url split wrongly is put right before connecting.
    async with rowstream.stream(make_url(mis_split_url), sa.text("SELECT 1")) as rows:
        assert [tuple(r) async for r in rows] == [(1,)]


def _bad_urls(tls_url: str, mysql_url: str) -> dict[str, str]:
    return {
        "unknown host": raw_url(tls_url, host="no-such-host.invalid"),
        "refused port": raw_url(tls_url, port=free_port()),
        "wrong password": raw_url(tls_url, password=HOSTILE[::-1] + HOSTILE),
        "wrong user": raw_url(tls_url, user="rs_nobody"),
        "mariadb refused": raw_url(mysql_url, port=free_port()),
        "mariadb wrong password": raw_url(mysql_url, user="root"),
    }


async def test_stream_errors_show_no_fragment(pg_tls_url: str, mysql_url: str) -> None:
    for case, url in _bad_urls(pg_tls_url, mysql_url).items():
        with pytest.raises(SourceError) as caught:
            async with rowstream.stream(url, sa.text("SELECT 1")) as rows:
                [r async for r in rows]
        assert_no_fragment(case, *error_texts(caught.value))
        with (
            pytest.raises(SourceError) as sync_caught,
            rowstream.sync.stream(url, sa.text("SELECT 1")) as sync_rows,
        ):
            list(sync_rows)
        assert_no_fragment(case, *error_texts(sync_caught.value))


async def test_export_and_process_errors_show_no_fragment(
    pg_tls_url: str, mysql_url: str, tmp_path: Path
) -> None:
    async def handler(batch: list[Any]) -> None:
        pass

    for case, url in _bad_urls(pg_tls_url, mysql_url).items():
        for suffix in ("csv", "parquet"):
            with pytest.raises(RowstreamError) as caught:
                await rowstream.export(url, sa.text("SELECT 1 AS one"), tmp_path / f"x.{suffix}")
            assert_no_fragment(case, *error_texts(caught.value))
        with pytest.raises(RowstreamError) as processed:
            await rowstream.process(url, sa.text("SELECT 1"), handler)
        assert_no_fragment(case, *error_texts(processed.value))
    assert os.listdir(tmp_path) == []


async def test_a_rejected_query_echoing_the_password_is_scrubbed(ghost_url: str) -> None:
    literal = HOSTILE.replace("'", "''")
    with pytest.raises(QueryError) as caught:
        async with rowstream.stream(ghost_url, sa.text(f"SELECT CAST('{literal}' AS int)")) as r:
            [row async for row in r]
    assert "***" in str(caught.value)
    assert_no_fragment(*error_texts(caught.value))


async def test_an_engine_made_from_a_mis_split_url_is_scrubbed(mis_split_url: str) -> None:
    # The caller's own engine, from make_url's reading: password "Kp4w", host "Tr9z@...".
    engine = create_async_engine(
        make_url(mis_split_url).set(drivername="postgresql+asyncpg"), poolclass=NullPool
    )
    try:
        with pytest.raises(SourceError) as caught:
            async with rowstream.stream(engine, sa.text("SELECT 1")) as rows:
                [r async for r in rows]
        assert_no_fragment(*error_texts(caught.value), secret=MIS_SPLIT)
    finally:
        await engine.dispose()


async def test_reprs_show_no_fragment(ghost_url: str, tmp_path: Path) -> None:
    engine = rowstream.create_engine(ghost_url)
    try:
        async with rowstream.stream(engine, sa.text("SELECT 1 AS one")) as rows:
            assert_no_fragment(repr(rows), repr(rows.stats), repr(engine), str(engine.url))
            [r async for r in rows]
        report = await rowstream.export(ghost_url, sa.text("SELECT 1 AS one"), tmp_path / "a.csv")
        assert_no_fragment(repr(report), report.summary())
        # Parquet reads over ADBC's own connection, from a libpq string holding the password.
        parquet = await rowstream.export(ghost_url, "pg_class", tmp_path / "b.parquet")
        assert parquet.method == "copy" and parquet.rows > 100
        assert_no_fragment(repr(parquet))
    finally:
        await engine.dispose()
    sync_engine = rowstream.sync.create_engine(ghost_url)
    try:
        assert_no_fragment(repr(sync_engine), str(sync_engine.url))
    finally:
        sync_engine.dispose()


# ---------------------------------------------------------------- the command line


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rowstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_export_and_doctor_show_no_fragment(
    pg_tls_url: str, mysql_url: str, tmp_path: Path
) -> None:
    for case, url in _bad_urls(pg_tls_url, mysql_url).items():
        target = tmp_path / "out.csv"
        exported = _cli("export", url, "--query", "SELECT 1", "-o", str(target))
        assert exported.returncode == 1, exported.stderr
        assert len(exported.stderr.strip().splitlines()) == 1, exported.stderr
        assert_no_fragment(case, exported.stderr, exported.stdout)
        doctored = _cli("doctor", url)
        assert doctored.returncode != 0
        assert_no_fragment(case, doctored.stderr, doctored.stdout)
        assert os.listdir(tmp_path) == []


def test_cli_progress_and_doctor_on_success_show_no_fragment(
    ghost_url: str, tmp_path: Path
) -> None:
    from tests.test_export_cli import _run_on_a_terminal

    target = tmp_path / "ok.csv"
    code, drawn = _run_on_a_terminal(
        ghost_url, "--query", "SELECT generate_series(1, 200000) AS n", "-o", str(target)
    )
    assert code == 0, drawn
    assert "exported 200,000 rows" in drawn
    assert_no_fragment(drawn)
    doctored = _cli("doctor", ghost_url)
    assert doctored.returncode == 0, doctored.stderr
    assert ROLE in doctored.stdout
    assert_no_fragment(doctored.stdout, doctored.stderr)


def test_cli_rejected_query_echoing_the_password(ghost_url: str, tmp_path: Path) -> None:
    literal = HOSTILE.replace("'", "''")
    result = _cli("export", ghost_url, "--query", f"SELECT CAST('{literal}' AS int)", "-o", "-")
    assert result.returncode == 1
    assert result.stderr.startswith("rowstream: error: the server rejected the query")
    assert "***" in result.stderr
    assert_no_fragment(result.stderr, result.stdout)


async def test_a_dropped_connection_shows_no_fragment(ghost_url: str, pg_tls_url: str) -> None:
    admin = rowstream.create_engine(pg_tls_url, poolclass=NullPool)
    try:
        with pytest.raises(RowstreamError) as caught:
            async with rowstream.stream(
                ghost_url, sa.text("SELECT generate_series(1, 2000000) AS n"), batch_rows=1000
            ) as rows:
                async for batch in rows.batches():
                    assert batch
                    async with admin.connect() as conn:
                        await conn.exec_driver_sql(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE usename = '{ROLE}'"
                        )
    finally:
        await admin.dispose()
    lost = caught.value.__cause__
    assert lost is not None and "lost the connection" in str(lost)
    assert_no_fragment(*error_texts(caught.value), *error_texts(lost))
