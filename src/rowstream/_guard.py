"""rowstream only reads: every statement is checked before anything is sent.

A SQL string that looks like a query can hold a second statement (``SELECT 1; DELETE FROM t``),
a statement that writes (``WITH x AS (DELETE ... RETURNING *) SELECT ...``), a lock
(``FOR UPDATE``) or a new table or file (``SELECT ... INTO``). Read-only transactions catch
much of that, but not all of it (MariaDB commits DDL even in ``START TRANSACTION READ ONLY``,
and ``INTO OUTFILE`` writes no table), so the statement itself is read first, by a small lexer
per dialect that knows where strings, quoted identifiers and comments begin and end:

- PostgreSQL: ``'...'`` (``''``), ``E'...'`` (backslash escapes), ``$tag$...$tag$``,
  ``"..."``, ``--`` and nested ``/* */`` comments, ``$1`` parameters;
- MySQL/MariaDB: ``'...'`` and ``"..."`` (``''`` and backslash escapes), `````...`````, ``#``
  and ``-- `` (with a space) comments, ``/* */``; ``/*! ... */`` and ``/*M! ... */`` are
  executable comments that the server runs, so their content is read as code;
- SQLite: ``'...'``, ``"..."``, `````...`````, ``[...]``, ``--`` and ``/* */``.

Some servers read strings differently under some settings (PostgreSQL with
``standard_conforming_strings`` off, MySQL with ``NO_BACKSLASH_ESCAPES`` or ``ANSI_QUOTES``): a
statement is read under those too, and refused when one of the readings is not a single read.

What is accepted: one statement that starts with SELECT, WITH, VALUES, TABLE or a parenthesis,
then at most trailing ``;``, comments and blanks. The rules are lexical on purpose (no parser
per server version): a word is a keyword unless it is quoted, qualified (``t.delete``) or
called (``replace(...)``); the rare column named like a keyword in the wrong place is refused
with a message that says to quote it. Everything here is pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import InvalidRequestError

from ._exceptions import UnsupportedQueryError

__all__ = ["check_read_only", "check_statement", "check_where"]

Kind = Literal["word", "string", "ident", "punct", "param", "comment", "exec"]

_READ_HEADS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
# Statements that write, when they stand where a statement starts.
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"})
# Words that follow an operand, never a DML verb: `(delete IS NULL)` is a column named delete.
_AFTER_OPERAND = frozenset(
    {"AND", "OR", "IS", "ISNULL", "NOTNULL", "NOT", "IN", "LIKE", "ILIKE", "GLOB", "MATCH",
     "REGEXP", "RLIKE", "SIMILAR", "BETWEEN", "AS", "ASC", "DESC", "NULLS", "COLLATE", "DIV",
     "MOD", "XOR", "ESCAPE", "OVER", "FILTER"}
)  # fmt: skip
# SQLite's `INSERT OR REPLACE`, `UPDATE OR IGNORE`, ...
_SQLITE_CONFLICT = frozenset({"ROLLBACK", "ABORT", "REPLACE", "FAIL", "IGNORE"})
_LOCKS = (
    ("FOR", "UPDATE"),
    ("FOR", "NO", "KEY", "UPDATE"),
    ("FOR", "SHARE"),
    ("FOR", "KEY", "SHARE"),
    ("LOCK", "IN", "SHARE", "MODE"),
)
_PG = "postgresql"
_MYSQL = frozenset({"mysql", "mariadb"})
_SQLITE = "sqlite"


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical token: ``text`` is upper-cased for words; ``start``/``end`` are offsets."""

    kind: Kind
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class _Mode:
    """How one server reads the text: its dialect and the settings that change its strings."""

    dialect: str
    #: A backslash escapes the next character in '...' (MySQL's default; PostgreSQL with
    #: standard_conforming_strings off).
    backslash: bool = False
    #: MySQL's ANSI_QUOTES: "..." is an identifier, not a string.
    ansi_quotes: bool = False
    #: Said in messages when this is not the server's default reading.
    setting: str = ""


_MODES: dict[str, tuple[_Mode, ...]] = {
    _PG: (
        _Mode(_PG),
        _Mode(_PG, backslash=True, setting="with standard_conforming_strings off"),
    ),
    "mysql": (
        _Mode("mysql", backslash=True),
        _Mode("mysql", setting="with sql_mode NO_BACKSLASH_ESCAPES"),
        _Mode("mysql", backslash=True, ansi_quotes=True, setting="with sql_mode ANSI_QUOTES"),
        _Mode("mysql", ansi_quotes=True, setting="with sql_mode ANSI_QUOTES"),
    ),
    _SQLITE: (_Mode(_SQLITE),),
}
_MODES["mariadb"] = _MODES["mysql"]


class _Unreadable(Exception):
    """The text ends inside a string, identifier or comment, or nests comments in a way the
    servers do not agree on (``nested``)."""

    def __init__(self, what: str, start: int, *, nested: bool = False) -> None:
        super().__init__(what)
        self.what = what
        self.start = start
        self.nested = nested

    def describe(self, sql: str) -> str:
        where = _position(sql, self.start)
        if self.nested:
            return f"{self.what} at {where}: where the server ends it is unclear; remove it"
        return f"{self.what} that opens at {where} never closes; close it"


# ---------------------------------------------------------------------------------- lexer


# Runs of blanks and of word characters are matched by regular expressions, not char by char:
# the check runs before every stream, and a statement can be long (literal IN lists).
_SPACE = re.compile(r"\s+")
# `$` belongs to identifiers on every dialect (a$b); at the start of a token PostgreSQL reads
# it as a parameter or a dollar quote instead, which the lexer checks first.
# Word characters: ASCII letters, digits, `_` and `$`, and every non-ASCII character. Written as
# the ASCII punctuation it excludes: `[\w$\u0080-\U0010ffff]` matches the same characters
# (checked over all of Unicode) but took 5-12 ms to compile, on every start of the CLI.
_WORD = re.compile(r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]+")


# Characters that may start a comment, a quoted token or a dollar quote: the lexer looks at
# those one by one.
_SPECIAL = {
    _PG: frozenset("-/'\"$"),
    "mysql": frozenset("-/*#'\"`"),
    "mariadb": frozenset("-/*#'\"`"),
    _SQLITE: frozenset("-/'\"`["),
}


@functools.cache
def _quoted(quote: str, backslash: bool) -> re.Pattern[str]:
    """Quoted text: doubled quotes stay inside and, with ``backslash``, escaped characters."""
    q = re.escape(quote)
    body = rf"[^{q}\\]++|\\.|{q}{q}" if backslash else rf"[^{q}]++|{q}{q}"
    return re.compile(rf"{q}(?:{body})*+{q}", re.S)


def _tokens(sql: str, mode: _Mode, *, lenient: bool = False) -> list[Token]:
    """Split ``sql`` into tokens as ``mode``'s server would.

    Comments and executable-comment markers are tokens too (kinds ``comment`` and ``exec``).
    Text that never ends (a string, a quoted name, a comment) raises :class:`_Unreadable`,
    unless ``lenient``: the server then fails on a syntax error, so what came before is all
    it could run, and the tokens so far are returned.
    """
    dialect = mode.dialect
    mysql = dialect in _MYSQL
    special = _SPECIAL[dialect]
    out: list[Token] = []
    n = len(sql)
    i = 0
    in_exec = False  # inside a MySQL /*! ... */: code until */
    exec_start = 0
    try:
        while i < n:
            ch = sql[i]
            if ch not in special:
                # Most of a statement: words, blanks and operators.
                word = _WORD.match(sql, i)
                if word is not None:
                    j = word.end()
                    if dialect == _PG and j == i + 1 and ch in "Ee" and sql[j : j + 1] == "'":
                        end = _quoted_end(sql, j, "'", backslash=True)  # E'...'
                        out.append(Token("string", sql[i:end], i, end))
                        i = end
                    else:
                        out.append(Token("word", sql[i:j].upper(), i, j))
                        i = j
                elif ch.isspace():
                    i = _SPACE.match(sql, i).end()  # type: ignore[union-attr]
                else:
                    out.append(Token("punct", ch, i, i + 1))
                    i += 1
                continue
            nxt = sql[i + 1] if i + 1 < n else ""
            if (ch == "-" and nxt == "-" and (not mysql or _mysql_dash_comment(sql, i + 2))) or (
                ch == "#" and mysql
            ):
                end = sql.find("\n", i)
                end = n if end < 0 else end
                out.append(Token("comment", sql[i:end], i, end))
                i = end
            elif ch == "/" and nxt == "*":
                if mysql and (sql.startswith("/*!", i) or sql.startswith("/*M!", i)):
                    if in_exec:
                        raise _Unreadable("an executable comment inside another", i, nested=True)
                    j = i + (3 if sql[i + 2] == "!" else 4)
                    while j < n and sql[j].isdigit():  # the server version it runs on
                        j += 1
                    out.append(Token("exec", sql[i:j], i, j))
                    in_exec, exec_start = True, i
                    i = j
                else:
                    if in_exec:
                        # Where MySQL ends the outer one is not worth guessing.
                        raise _Unreadable("a comment inside an executable comment", i, nested=True)
                    end = _block_comment_end(sql, i, nested=dialect == _PG)
                    out.append(Token("comment", sql[i:end], i, end))
                    i = end
            elif ch == "*" and nxt == "/" and in_exec:
                out.append(Token("exec", "*/", i, i + 2))
                in_exec = False
                i += 2
            elif ch == "'":
                end = _quoted_end(sql, i, "'", backslash=mode.backslash)
                out.append(Token("string", sql[i:end], i, end))
                i = end
            elif ch == '"':
                if mysql and not mode.ansi_quotes:
                    end = _quoted_end(sql, i, '"', backslash=mode.backslash)
                    out.append(Token("string", sql[i:end], i, end))
                else:
                    end = _quoted_end(sql, i, '"', backslash=False)
                    out.append(Token("ident", sql[i:end], i, end))
                i = end
            elif ch == "`" and dialect != _PG:
                end = _quoted_end(sql, i, "`", backslash=False)
                out.append(Token("ident", sql[i:end], i, end))
                i = end
            elif ch == "[" and dialect == _SQLITE:
                end = sql.find("]", i + 1)
                if end < 0:
                    raise _Unreadable("a [quoted name]", i)
                out.append(Token("ident", sql[i : end + 1], i, end + 1))
                i = end + 1
            elif ch == "$" and dialect == _PG:
                i = _pg_dollar(sql, i, out)
            elif ch == "$":
                j = _WORD.match(sql, i).end()  # type: ignore[union-attr]
                out.append(Token("word", sql[i:j].upper(), i, j))
                i = j
            else:
                out.append(Token("punct", ch, i, i + 1))
                i += 1
        if in_exec:
            raise _Unreadable("an executable comment /*! ... */", exec_start)
    except _Unreadable:
        if lenient:
            return out
        raise
    return out


def _mysql_dash_comment(sql: str, after: int) -> bool:
    # MySQL: `--` starts a comment only when a blank or control character (or the end)
    # follows; `1--1` is one minus minus one.
    return after >= len(sql) or sql[after].isspace() or ord(sql[after]) < 32


def _block_comment_end(sql: str, start: int, *, nested: bool) -> int:
    depth = 0
    i = start
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth = depth + 1 if nested or depth == 0 else depth
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise _Unreadable("a /* comment */", start)


def _quoted_end(sql: str, start: int, quote: str, *, backslash: bool) -> int:
    """The offset just past the quoted text that opens at ``start`` (doubled quotes and, if
    ``backslash``, backslash escapes stay inside)."""
    found = _quoted(quote, backslash).match(sql, start)
    if found is not None:
        return found.end()
    what = {"'": "a 'string'", '"': 'a "quoted name"', "`": "a `quoted name`"}[quote]
    if quote == '"' and backslash:
        what = 'a "string"'
    raise _Unreadable(what, start)


def _pg_dollar(sql: str, start: int, out: list[Token]) -> int:
    """PostgreSQL at a `$`: a parameter ($1), a dollar-quoted string ($tag$...$tag$) or an
    operator character."""
    n = len(sql)
    j = start + 1
    if j < n and sql[j].isdigit():
        while j < n and sql[j].isdigit():
            j += 1
        out.append(Token("param", sql[start:j], start, j))
        return j
    while j < n and (sql[j].isalnum() or sql[j] == "_" or ord(sql[j]) >= 128):
        j += 1
    if j < n and sql[j] == "$":
        tag = sql[start : j + 1]
        close = sql.find(tag, j + 1)
        if close < 0:
            raise _Unreadable(f"a {tag}dollar-quoted string{tag}", start)
        end = close + len(tag)
        out.append(Token("string", sql[start:end], start, end))
        return end
    out.append(Token("punct", "$", start, start + 1))
    return start + 1


# ------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class _Finding:
    """Why a statement is not a single read."""

    found: str  # what the message shows: "DELETE", "a second statement (DROP)", ...
    at: int
    why: str = ""
    fix: str = "pass one SELECT"
    #: The keyword may be a column or table name the writer meant: say to quote it.
    word: str | None = None


def _code(tokens: list[Token]) -> list[Token]:
    return [t for t in tokens if t.kind not in ("comment", "exec")]


def _is(tokens: list[Token], i: int, *words: str) -> bool:
    return all(
        i + k < len(tokens) and tokens[i + k].kind == "word" and tokens[i + k].text == w
        for k, w in enumerate(words)
    )


def _qualified(tokens: list[Token], i: int) -> bool:
    """``t.delete`` or ``delete.x``: a name, not a keyword."""
    before = tokens[i - 1] if i > 0 else None
    after = tokens[i + 1] if i + 1 < len(tokens) else None
    return (before is not None and before.kind == "punct" and before.text == ".") or (
        after is not None and after.kind == "punct" and after.text == "."
    )


def _starts_dml(tokens: list[Token], i: int, dialect: str) -> bool:
    """True when the word at ``i`` is INSERT, UPDATE, ... used as a statement: followed by a
    name or a clause word (``DELETE FROM``), not called (``replace(...)``) or compared."""
    if not (tokens[i].kind == "word" and tokens[i].text in _DML) or _qualified(tokens, i):
        return False
    if i + 1 >= len(tokens):
        return False
    after = tokens[i + 1]
    if after.kind == "ident":
        return True
    if after.kind != "word":
        return False
    if after.text == "OR" and dialect == _SQLITE:
        return _is(tokens, i + 2, "ROLLBACK") or any(
            _is(tokens, i + 2, w) for w in _SQLITE_CONFLICT
        )
    return after.text not in _AFTER_OPERAND


def _statements(tokens: list[Token]) -> list[list[Token]]:
    parts: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind == "punct" and token.text == ";":
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _first_word(tokens: list[Token], i: int) -> int:
    """The index of the first token after the opening parentheses at ``i``."""
    while i < len(tokens) and tokens[i].kind == "punct" and tokens[i].text == "(":
        i += 1
    return i


def _analyse(tokens: list[Token], dialect: str) -> _Finding | None:
    code = _code(tokens)
    statements = _statements(code)
    if not statements[0]:
        first = next((t for t in code if t.kind != "punct" or t.text != ";"), None)
        if first is None:
            return _Finding("nothing but blanks and comments", 0)
        return _Finding(_show(first), first.start, why="an empty statement before it")
    for extra in statements[1:]:
        if extra:
            return _Finding(
                f"a second statement ({_show(extra[0])})",
                extra[0].start,
                fix="pass one SELECT, without another statement after its ';'",
            )
    return _analyse_statement(statements[0], dialect)


def _analyse_statement(tokens: list[Token], dialect: str) -> _Finding | None:
    head = _first_word(tokens, 0)
    if head >= len(tokens):
        return _Finding("only parentheses", tokens[0].start)
    first = tokens[head]
    if first.kind != "word" or first.text not in _READ_HEADS:
        return _Finding(_show(first), first.start)
    depth = 0
    for i, token in enumerate(tokens):
        if token.kind == "punct":
            if token.text == "(":
                depth += 1
                if i + 1 < len(tokens) and _starts_dml(tokens, i + 1, dialect):
                    word = tokens[i + 1].text
                    return _Finding(
                        word,
                        tokens[i + 1].start,
                        why=f"a data-modifying statement in parentheses ({word} ...)",
                        word=word,
                    )
            elif token.text == ")":
                depth -= 1
            continue
        if token.kind != "word" or _qualified(tokens, i):
            continue
        if token.text == "WITH":
            found = _after_with(tokens, i, dialect)
            if found is not None:
                return found
        elif token.text == "INTO":
            return _Finding(
                "INTO",
                token.start,
                why="SELECT ... INTO writes a new table, a file or a variable",
                fix="drop INTO and its target",
                word="INTO",
            )
        elif token.text in ("FOR", "LOCK"):
            for lock in _LOCKS:
                if _is(tokens, i, *lock):
                    return _Finding(
                        " ".join(lock),
                        token.start,
                        why="a locking clause takes locks on the rows it reads",
                        fix="drop the locking clause",
                    )
    return None


def _after_with(tokens: list[Token], start: int, dialect: str) -> _Finding | None:
    """The statement a WITH leads to (at the WITH's own depth) must read, not write."""
    depth = 0
    for i in range(start + 1, len(tokens)):
        token = tokens[i]
        if token.kind == "punct" and token.text in "()":
            depth += 1 if token.text == "(" else -1
            if depth < 0:
                return None
            continue
        if depth or token.kind != "word" or _qualified(tokens, i):
            continue
        if token.text in ("SELECT", "VALUES", "TABLE"):
            return None
        # `WITH update AS (...)`: a query named like a verb.
        if _is(tokens, i + 1, "AS"):
            continue
        if _starts_dml(tokens, i, dialect):
            return _Finding(
                token.text,
                token.start,
                why=f"WITH ... {token.text} is a data-modifying statement",
                word=token.text,
            )
    return None


def _show(token: Token) -> str:
    text = token.text if len(token.text) <= 30 else token.text[:27] + "..."
    return text if token.kind == "word" else repr(text)


# ------------------------------------------------------------------------------- the checks


def _position(sql: str, offset: int) -> str:
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _quote(word: str, dialect: str) -> str:
    name = word.lower()
    return f"`{name}`" if dialect in _MYSQL else f'"{name}"'


def _refusal(sql: str, finding: _Finding, dialect: str, mode: _Mode) -> UnsupportedQueryError:
    why = f": {finding.why}" if finding.why else ""
    setting = f", as the server reads it {mode.setting}" if mode.setting else ""
    message = (
        "refusing to run the statement: it is not a single read "
        f"(found {finding.found} at {_position(sql, finding.at)}{why}{setting}); "
        f"rowstream only reads: {finding.fix}"
    )
    if mode.setting:
        message += "; inside strings, double the quote ('') instead of escaping it with a backslash"
    if finding.word is not None and finding.word != "INTO":
        message += f"; if {finding.word} names a column or table, quote it: " + _quote(
            finding.word, dialect
        )
    return UnsupportedQueryError(message)


def _modes(dialect: str) -> tuple[_Mode, ...]:
    try:
        return _MODES[dialect]
    except KeyError:
        raise UnsupportedQueryError(
            f"rowstream cannot check statements for {dialect!r}: it reads PostgreSQL, "
            "MySQL/MariaDB and SQLite"
        ) from None


def _reads_differently(sql: str, primary: _Mode, other: _Mode) -> bool:
    """Whether ``other`` can split ``sql`` otherwise than ``primary`` (they differ only on
    backslashes and double quotes)."""
    return (other.backslash != primary.backslash and "\\" in sql) or (
        other.ansi_quotes != primary.ansi_quotes and '"' in sql
    )


def check_read_only(sql: str, dialect: str) -> str:
    """Refuse ``sql`` unless it is a single read; return it without its trailing ``;``,
    comments and blanks (ready to be wrapped in a subquery).

    ``dialect`` is SQLAlchemy's name: ``postgresql``, ``mysql``, ``mariadb`` or ``sqlite``.
    Raises :class:`UnsupportedQueryError` with one line naming what was found and where.

    >>> check_read_only("SELECT 1; -- done", "postgresql")
    'SELECT 1'
    """
    primary, *others = _modes(dialect)
    try:
        tokens = _tokens(sql, primary)
    except _Unreadable as exc:
        raise UnsupportedQueryError(f"refusing to run the statement: {exc.describe(sql)}") from None
    finding = _analyse(tokens, dialect)
    if finding is not None:
        raise _refusal(sql, finding, dialect, primary)
    for mode in others:
        if not _reads_differently(sql, primary, mode):
            continue
        finding = _analyse(_tokens(sql, mode, lenient=True), dialect)
        if finding is not None:
            raise _refusal(sql, finding, dialect, mode)
    first, *rest = _statements(tokens)
    hidden = next((t for part in rest for t in part if t.kind == "exec"), None)
    if hidden is not None:
        # `SELECT 1 /*! ; ... */`: the server reads one statement, but cut at the ';' this
        # one would not be whole again.
        raise _refusal(
            sql, _Finding("an executable comment after ';'", hidden.start), dialect, primary
        )
    body = [t for t in first if t.kind != "comment"]
    return sql[: body[-1].end]


def check_where(where: str, dialect: str) -> None:
    """Refuse a ``where=`` / ``--where`` that is not one boolean expression.

    rowstream pastes it as ``WHERE (<where>)``: a ``;``, a parenthesis that closes what it did
    not open, or a comment (which would hide the closing parenthesis) could turn it into
    something else. The statement it ends up in is checked again with :func:`check_read_only`.
    """
    if not where.strip():
        raise UnsupportedQueryError("the where condition is empty: give one, or leave it out")
    primary = _modes(dialect)[0]

    def refuse(what: str, at: int) -> UnsupportedQueryError:
        return UnsupportedQueryError(
            f"refusing the where condition: it must be one boolean expression (found {what} "
            f"at {_position(where, at)}); rowstream only reads: write a condition such as "
            "status = 'paid', without ';' or comments"
        )

    try:
        tokens = _tokens(where, primary)
    except _Unreadable as exc:
        what = exc.what if exc.nested else f"{exc.what} that never closes"
        raise refuse(what, exc.start) from None
    opened: list[int] = []
    for token in tokens:
        if token.kind in ("comment", "exec"):
            raise refuse("a comment, which would hide the closing parenthesis", token.start)
        if token.kind != "punct":
            continue
        if token.text == ";":
            raise refuse("';'", token.start)
        if token.text == "(":
            opened.append(token.start)
        elif token.text == ")":
            if not opened:
                raise refuse("a ')' that closes a parenthesis it did not open", token.start)
            opened.pop()
    if opened:
        raise refuse("a '(' that is not closed", opened[-1])


def check_statement(statement: Any, dialect: Any) -> str:
    """Compile ``statement`` (a select, text() or SQL string) for ``dialect`` (SQLAlchemy's
    Dialect object) and :func:`check_read_only` what the server would get; returns the SQL.

    ORM and Core selects are checked too: ``with_for_update()``, a ``text()`` fragment or a
    data-modifying CTE are as much a statement's as anything typed by hand.
    """
    if isinstance(statement, str):
        sql = statement
    else:
        try:
            sql = str(statement.compile(dialect=dialect))
        except InvalidRequestError as exc:
            # What executing it would have raised (collection joinedload, ...), said the same way.
            from ._translate import translate

            raise translate(exc, url=None) from exc
        except Exception as exc:
            # Nothing can be sent that does not compile; say why now.
            text = str(exc).strip().splitlines()
            raise UnsupportedQueryError(
                f"cannot render the statement for {dialect.name}: "
                f"{text[0] if text else type(exc).__name__}"
            ) from exc
    return check_read_only(sql, dialect.name)


# -- the database's own refusal (rowstream._readonly) ----------------------------------------


@dataclass(frozen=True)
class Steps:
    """What makes one transaction read-only on one database."""

    #: Statements right after BEGIN.
    after_begin: tuple[str, ...] = ()
    #: SQLite: (read the setting, turn it on, turn it off): when it is off, it is turned on
    #: for the transaction and off again before it ends.
    switch: tuple[str, str, str] | None = None


def read_only_steps(dialect: str) -> Steps:
    """The one place that knows how each database makes a transaction read-only."""
    if dialect == "postgresql":
        return Steps(after_begin=("SET TRANSACTION READ ONLY",))
    if dialect in ("mysql", "mariadb"):
        return Steps(after_begin=("START TRANSACTION READ ONLY",))
    if dialect == "sqlite":
        return Steps(
            switch=("PRAGMA query_only", "PRAGMA query_only = ON", "PRAGMA query_only = OFF")
        )
    return Steps()
