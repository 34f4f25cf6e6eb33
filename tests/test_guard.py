"""rowstream._guard without a database: what is a single read, on each dialect.

Each refusal must name what was found (and where); each accepted statement must come back
without its trailing ``;`` and comments, ready to be wrapped in a subquery.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from rowstream import UnsupportedQueryError
from rowstream._guard import check_read_only, check_statement, check_where

PG, MY, MARIA, LITE = "postgresql", "mysql", "mariadb", "sqlite"
ALL = (PG, MY, MARIA, LITE)

# (dialects, sql, what the check returns)
ACCEPTED = [
    (ALL, "SELECT 1", "SELECT 1"),
    (ALL, "SELECT 1;", "SELECT 1"),
    (ALL, "SELECT 1 ;  \n", "SELECT 1"),
    (ALL, "SELECT 1; -- done", "SELECT 1"),
    (ALL, "SELECT 1; /* done */", "SELECT 1"),
    (ALL, "SELECT 1 -- no newline at the end", "SELECT 1"),
    (ALL, "-- a header\nSELECT 1", "-- a header\nSELECT 1"),
    (ALL, "/* header */ select id from t", "/* header */ select id from t"),
    (ALL, "SELECT 'a;b', 'DELETE FROM t; DROP TABLE t' FROM t", None),
    (ALL, "SELECT 'it''s; DELETE' FROM t", None),
    (ALL, "SELECT id FROM t -- ; DELETE FROM t\nWHERE id > 1", None),
    (ALL, "SELECT id FROM t /* ; DROP TABLE t */ WHERE id > 1", None),
    (ALL, "WITH x AS (SELECT 1 AS a) SELECT * FROM x", None),
    (ALL, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", None),
    (ALL, "VALUES (1), (2)", None),
    (ALL, "(SELECT 1) UNION (SELECT 2)", None),
    (ALL, "((SELECT 1))", None),
    (ALL, "SELECT t.delete, t.update, t.insert FROM t", None),
    (ALL, "SELECT delete.id FROM t AS delete", None),
    (ALL, "SELECT (delete IS NULL), (update + 1) FROM t", None),
    (ALL, "SELECT substring(note FROM 1 FOR 3) FROM t", None),
    (ALL, "WITH update AS (SELECT 1 AS a) SELECT a FROM update", None),
    (ALL, "SELECT id FROM t WHERE note = 'FOR UPDATE' AND x = 'INTO'", None),
    ((MY, MARIA), "SELECT replace(note, 'a', 'b'), insert(note, 1, 2, 'x') FROM t", None),
    ((MY, MARIA), "SELECT REPLACE (note, 'a', 'b') FROM t", None),
    ((MY, MARIA), "SELECT 'it\\'s' FROM t", None),
    ((MY, MARIA), "SELECT `de;lete` FROM `t;DROP`", None),
    ((MY, MARIA), 'SELECT "a;b" FROM t', None),
    ((MY, MARIA), "SELECT 1 # ; DELETE FROM t", "SELECT 1"),
    ((MY, MARIA), "SELECT 1--1", "SELECT 1--1"),
    ((MY, MARIA), "SELECT 1 -- ; DELETE FROM t", "SELECT 1"),
    ((MY, MARIA), "SELECT /*! STRAIGHT_JOIN */ a FROM t", None),
    (
        (MY, MARIA),
        "SELECT 1 FROM t /*!50001 WHERE id > 1 */;",
        "SELECT 1 FROM t /*!50001 WHERE id > 1 */",
    ),
    ((MY, MARIA), "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t", None),
    ((MY, MARIA), "SELECT @x := 1", None),
    ((MY, MARIA), "TABLE t", None),
    ((PG,), "TABLE t;", "TABLE t"),
    ((PG,), "SELECT $$; DELETE FROM t$$, $tag$ '; DROP $tag$ FROM t", None),
    ((PG,), "SELECT E'it\\'s; DELETE' FROM t", None),
    ((PG,), 'SELECT "de;lete", U&"d\\0061t" FROM t', None),
    ((PG,), "SELECT 1 /* outer /* inner ; */ DELETE */", "SELECT 1"),
    ((PG,), "SELECT a$b, x FROM t WHERE id = $1", None),
    ((PG,), "SELECT * FROM t, LATERAL (SELECT 1) AS l", None),
    ((PG,), "SELECT '#'; -- # is an operator here", "SELECT '#'"),
    ((PG,), "SELECT 1 /*! ; DELETE FROM t */", "SELECT 1"),  # a plain comment outside MySQL
    ((PG,), "SELECT a FROM t WHERE b = %(delete)s", None),  # psycopg's placeholder
    ((LITE,), "SELECT [de;lete], `x;y` FROM t", None),
    ((LITE,), "SELECT :name, @v, $w, ?1 FROM t", None),
]

# (dialects, sql, a part of the message that names what was found)
REFUSED = [
    (
        ALL,
        "SELECT 1; DELETE FROM t; COMMIT",
        "found a second statement (DELETE) at line 1, column 11",
    ),
    (ALL, "SELECT 1;\nDROP TABLE t", "found a second statement (DROP) at line 2, column 1"),
    (ALL, "SELECT 1; SELECT 2", "a second statement (SELECT)"),
    (ALL, "DELETE FROM t", "found DELETE at line 1, column 1"),
    (ALL, "delete from t returning *", "found DELETE"),
    (ALL, "UPDATE t SET a = 1", "found UPDATE"),
    (ALL, "INSERT INTO t VALUES (1)", "found INSERT"),
    (ALL, "REPLACE INTO t VALUES (1)", "found REPLACE"),
    (ALL, "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "found MERGE"),
    (ALL, "TRUNCATE t", "found TRUNCATE"),
    (ALL, "DROP TABLE t", "found DROP"),
    (ALL, "CREATE TABLE t2 (x int)", "found CREATE"),
    (ALL, "ALTER TABLE t ADD c int", "found ALTER"),
    (ALL, "GRANT ALL ON t TO bob", "found GRANT"),
    (ALL, "COPY t FROM '/tmp/x'", "found COPY"),
    (ALL, "CALL p()", "found CALL"),
    (ALL, "DO 1", "found DO"),
    (ALL, "SET x = 1", "found SET"),
    (ALL, "LOCK TABLE t", "found LOCK"),
    (ALL, "EXPLAIN ANALYZE DELETE FROM t", "found EXPLAIN"),
    (ALL, "(DELETE FROM t)", "found DELETE"),
    (ALL, "", "found nothing but blanks and comments"),
    (ALL, "  -- only a comment\n", "found nothing but blanks and comments"),
    (ALL, "; SELECT 1", "an empty statement before it"),
    (
        ALL,
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "found DELETE at line 1, column 12",
    ),
    (ALL, "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT 1", "data-modifying"),
    (ALL, "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1", "found INSERT"),
    (ALL, "WITH x AS MATERIALIZED (DELETE FROM t RETURNING *) SELECT 1", "found DELETE"),
    (ALL, "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING 1) SELECT 1", "found DELETE"),
    (ALL, "WITH x AS (SELECT 1 AS a) DELETE FROM t", "WITH ... DELETE is a data-modifying"),
    (ALL, "WITH x AS (SELECT 1 AS a) UPDATE t SET a = 2", "WITH ... UPDATE"),
    (ALL, "SELECT * FROM (WITH x AS (SELECT 1) DELETE FROM t) AS s", "found DELETE"),
    (ALL, "SELECT * FROM t FOR UPDATE", "found FOR UPDATE at line 1, column 17"),
    (ALL, "SELECT * FROM t FOR NO KEY UPDATE", "found FOR NO KEY UPDATE"),
    (ALL, "SELECT * FROM t FOR SHARE", "found FOR SHARE"),
    (ALL, "SELECT * FROM t FOR KEY SHARE SKIP LOCKED", "found FOR KEY SHARE"),
    (ALL, "SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "found FOR UPDATE"),
    (ALL, "SELECT * FROM t LOCK IN SHARE MODE", "found LOCK IN SHARE MODE"),
    (ALL, "SELECT * INTO t2 FROM t", "found INTO at line 1, column 10"),
    (ALL, "SELECT * FROM t INTO OUTFILE '/tmp/x'", "SELECT ... INTO writes"),
    (ALL, "SELECT * FROM t INTO DUMPFILE '/tmp/x'", "found INTO"),
    (ALL, "SELECT id INTO @v FROM t", "found INTO"),
    (ALL, "SELECT 'unterminated", "'string' that opens at line 1, column 8 never closes"),
    (ALL, "SELECT 1 /* unterminated", "comment */ that opens at line 1, column 10 never closes"),
    ((PG, LITE), 'SELECT "unterminated', 'quoted name" that opens'),
    ((MY, MARIA), "SELECT 1 /*! ; DELETE FROM t */", "found a second statement (DELETE)"),
    ((MY, MARIA), "SELECT 1 /*M! ; DROP TABLE t */", "found a second statement (DROP)"),
    ((MY, MARIA), "/*!DELETE FROM t*/", "found DELETE"),
    ((MY, MARIA), "SELECT * FROM t /*!50000 FOR UPDATE */", "found FOR UPDATE"),
    ((MY, MARIA), "SELECT id FROM t /*!INTO OUTFILE '/tmp/x'*/", "found INTO"),
    ((MY, MARIA), "SELECT 1 /*! unterminated", "executable comment"),
    ((MY, MARIA), "SELECT 1 /*! /* x */ ; DELETE FROM t */", "a comment inside an executable"),
    ((MY, MARIA), "SELECT 1 /*! ; */", "found an executable comment after ';'"),
    ((MY, MARIA), "SELECT 1 --; DELETE FROM t", "a second statement (DELETE)"),
    ((MY, MARIA), "SELECT 'a\\'; DELETE FROM t; -- '", "as the server reads it with sql_mode"),
    ((MY, MARIA), 'SELECT "a\\"; DELETE FROM t; -- "', "a second statement (DELETE)"),
    ((MY, MARIA), "SELECT `a` FROM t; `", "quoted name` that opens"),
    ((PG,), "SELECT 'a\\' , $$ ' ; DELETE FROM t; -- $$", "standard_conforming_strings off"),
    ((PG,), "SELECT $x$ unterminated", "dollar-quoted string"),
    ((PG,), "SELECT 1 /* /* nested */ still a comment", "never closes"),
    ((PG,), "SELECT 1 # 2; DELETE FROM t", "a second statement (DELETE)"),
    ((PG,), "SELECT 1 --x\n; DELETE FROM t", "a second statement (DELETE)"),
    ((LITE,), "SELECT [unterminated", "[quoted name] that opens"),
    ((LITE,), "WITH x AS (SELECT 1) INSERT OR REPLACE INTO t SELECT * FROM x", "found INSERT"),
    ((LITE,), "SELECT 1; ATTACH DATABASE 'x.db' AS x", "a second statement (ATTACH)"),
    ((LITE,), "PRAGMA query_only = OFF", "found PRAGMA"),
]


def _cases(table: list[tuple[tuple[str, ...], str, str | None]]) -> list[object]:
    return [
        pytest.param(dialect, sql, expected, id=f"{dialect}-{sql[:40]}")
        for dialects, sql, expected in table
        for dialect in dialects
    ]


@pytest.mark.parametrize(("dialect", "sql", "expected"), _cases(ACCEPTED))
def test_a_single_read_is_accepted(dialect: str, sql: str, expected: str | None) -> None:
    assert check_read_only(sql, dialect) == (sql if expected is None else expected)


@pytest.mark.parametrize(("dialect", "sql", "found"), _cases(REFUSED))
def test_anything_else_is_refused_naming_what_was_found(dialect: str, sql: str, found: str) -> None:
    with pytest.raises(UnsupportedQueryError) as caught:
        check_read_only(sql, dialect)
    message = str(caught.value)
    assert found in message
    assert "\n" not in message
    assert message.startswith("refusing to run the statement: ")


@pytest.mark.parametrize("dialect", ALL)
def test_a_keyword_in_a_name_position_says_to_quote_it(dialect: str) -> None:
    # A (rare) column named like a verb, where a statement could start: refused, with the fix.
    quoted = "`delete`" if dialect in (MY, MARIA) else '"delete"'
    with pytest.raises(UnsupportedQueryError, match=f"quote it: {quoted}"):
        check_read_only("SELECT * FROM t WHERE (delete FROM_UNIXTIME)", dialect)
    assert check_read_only(f"SELECT * FROM t WHERE ({quoted} > 1)", dialect)


def test_refusals_say_what_to_do() -> None:
    with pytest.raises(UnsupportedQueryError) as caught:
        check_read_only("SELECT 1; DELETE FROM t", PG)
    assert str(caught.value).endswith(
        "rowstream only reads: pass one SELECT, without another statement after its ';'"
    )
    with pytest.raises(UnsupportedQueryError, match=r"drop the locking clause$"):
        check_read_only("SELECT 1 FROM t FOR UPDATE", PG)
    with pytest.raises(UnsupportedQueryError, match="double the quote"):
        check_read_only("SELECT 'a\\'; DELETE FROM t; -- '", MARIA)


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(UnsupportedQueryError, match="cannot check statements for 'oracle'"):
        check_read_only("SELECT 1", "oracle")


# ---------------------------------------------------------------------------- --where

WHERE_ACCEPTED = [
    "status = 'paid'",
    "note <> 'a;b' AND note <> 'x -- y'",
    "(id > 2) AND (id < 5)",
    "id IN (SELECT id FROM t WHERE (a = 1))",
    "note = 'it''s (open'",
    "x = 1 -1",
]

WHERE_REFUSED = [
    ("1=1); DELETE FROM t; COMMIT; --", "found a ')' that closes a parenthesis it did not open"),
    ("1=1) OR (1=1", "a ')' that closes"),
    ("1=1 --", "found a comment"),
    ("1=1 /* x */", "found a comment"),
    ("id = 1; DROP TABLE t", "found ';' at line 1, column 7"),
    ("(id = 1", "found a '(' that is not closed at line 1, column 1"),
    ("note = 'open", "never closes"),
]


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("where", WHERE_ACCEPTED)
def test_a_where_condition_is_accepted(dialect: str, where: str) -> None:
    check_where(where, dialect)


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize(("where", "found"), WHERE_REFUSED)
def test_a_where_that_could_escape_is_refused(dialect: str, where: str, found: str) -> None:
    with pytest.raises(UnsupportedQueryError) as caught:
        check_where(where, dialect)
    message = str(caught.value)
    assert found in message and "\n" not in message
    assert message.startswith("refusing the where condition: it must be one boolean expression")


def test_mysql_comments_in_a_where() -> None:
    for where in ("id = 1 # x", "id = 1 /*! OR 1=1 */"):
        with pytest.raises(UnsupportedQueryError, match="found a comment"):
            check_where(where, MARIA)
    check_where("id = 1 --1", MARIA)  # minus minus one on MySQL


def test_an_empty_where_is_refused() -> None:
    with pytest.raises(UnsupportedQueryError, match="empty"):
        check_where("  ", PG)


# ------------------------------------------------------------------- compiled statements

_t = sa.table("t", sa.column("id"), sa.column("note"))
DIALECTS = {PG: postgresql.dialect(), MARIA: mysql.dialect(), LITE: sqlite.dialect()}


@pytest.mark.parametrize("name", DIALECTS)
def test_core_statements_are_checked_as_compiled(name: str) -> None:
    dialect = DIALECTS[name]
    select = sa.select(_t).where(_t.c.id > 5)
    assert check_statement(select, dialect).startswith("SELECT t.id, t.note")
    assert check_statement(sa.text("SELECT id FROM t WHERE id = :id;"), dialect)
    assert check_statement("SELECT 1", dialect) == "SELECT 1"
    if name == LITE:
        # SQLite has no row locks: SQLAlchemy renders no locking clause, nothing to refuse.
        assert "FOR" not in check_statement(select.with_for_update(), dialect)
    else:
        with pytest.raises(UnsupportedQueryError, match="FOR UPDATE"):
            check_statement(select.with_for_update(), dialect)
    with pytest.raises(UnsupportedQueryError, match="a second statement"):
        check_statement(select.where(sa.text("1=1; DELETE FROM t")), dialect)


def test_a_data_modifying_cte_in_a_core_select_is_refused() -> None:
    gone = sa.delete(_t).returning(_t.c.id).cte("gone")
    with pytest.raises(UnsupportedQueryError, match="found DELETE"):
        check_statement(sa.select(gone.c.id), DIALECTS[PG])


def test_a_statement_that_does_not_compile_says_why() -> None:
    class Unknown(sa.sql.expression.ColumnElement[int]):
        pass

    with pytest.raises(UnsupportedQueryError, match="cannot render the statement for sqlite"):
        check_statement(sa.select(Unknown()), DIALECTS[LITE])
