"""The grammar of an index field: ``<column> [opclass] [ASC|DESC] [NULLS FIRST|LAST]``, or an SQL expression.

A field is written once in a manifest and read by three parties that must agree: the model (its canonical
spelling is what snapshots store), the renderer (a column is quoted, an expression parenthesised, an operator
class quoted) and the catalog comparison (``catalog.read`` prints a key the same canonical way). So the field is
parsed here, once, into a ``Field``, and written back canonically: keywords upper-case, ``ASC`` and the
direction's default ``NULLS`` left out, one space between parts, the operator class lower-case (PostgreSQL folds
an unquoted name) and without ``pg_catalog.``.

An expression takes the suffixes only when it ends in ``)`` (a call or a parenthesised expression), as the format
says: ``lower(title) text_pattern_ops``, ``(a || b) DESC``. There is no SQL parser here, so ``parse`` rejects what
the renderer could not turn into a valid key: unbalanced parentheses or quotes, ``;``, words after a column that
are not a suffix, a suffix after an expression that does not end in ``)``, and two plain words in a row at the
top level of an expression (``name varchar_pattern_ops`` where ``name`` is not a column). It does not prove an
expression valid: PostgreSQL still judges the SQL inside.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPCLASS = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"""\s+|'(?:[^']|'')*'|"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*|.""")
_DIRECTIONS = {"ASC", "DESC"}
_NULLS = {"FIRST", "LAST"}
_SUFFIX_WORDS = _DIRECTIONS | {"NULLS"}

# Words that may stand next to another word in an expression (``a IS NOT NULL``, ``x::character varying``,
# ``CASE WHEN a THEN b END``, ``ts AT TIME ZONE 'UTC'``): two words in a row are an error only when neither is one.
_SQL_WORDS = frozenset(
    [
        "AND",
        "OR",
        "NOT",
        "IS",
        "NULL",
        "TRUE",
        "FALSE",
        "UNKNOWN",
        "IN",
        "LIKE",
        "ILIKE",
        "SIMILAR",
        "TO",
        "BETWEEN",
        "SYMMETRIC",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "AT",
        "TIME",
        "ZONE",
        "COLLATE",
        "DISTINCT",
        "FROM",
        "ESCAPE",
        "ISNULL",
        "NOTNULL",
        "ANY",
        "ALL",
        "SOME",
        "ARRAY",
        "INTERVAL",
        "OVERLAPS",
        "CHARACTER",
        "VARYING",
        "DOUBLE",
        "PRECISION",
        "WITH",
        "WITHOUT",
        "TIMESTAMP",
        "DATE",
        "VARCHAR",
        "CHAR",
        "BIT",
        "OPERATOR",
    ]
)


class FieldError(ValueError):
    """The field cannot be rendered as an index key; the message says why and what to write."""


@dataclass(frozen=True)
class Field:
    """A parsed index field: ``column`` or ``expression`` (exactly one), then the optional suffixes."""

    column: str | None = None
    expression: str | None = None
    opclass: str | None = None
    descending: bool = False
    nulls: str | None = None
    """"FIRST" or "LAST", only when not the direction's default (ASC: LAST, DESC: FIRST)."""

    @property
    def suffix(self) -> str:
        """The canonical suffix: ``[opclass][ DESC][ NULLS FIRST|LAST]`` without a leading space."""
        parts = [self.opclass or "", "DESC" if self.descending else "", f"NULLS {self.nulls}" if self.nulls else ""]
        return " ".join(p for p in parts if p)

    def canonical(self) -> str:
        head = self.column if self.column is not None else str(self.expression)
        return f"{head} {self.suffix}" if self.suffix else head


def parse(text: str, columns: Collection[str] | None = None) -> Field:
    """Parse an index field; ``columns`` are the table's (None: any identifier followed by words is a column).

    Raise ``FieldError`` for a field the renderer could not turn into a valid index key.
    """
    text = text.strip()
    if not text:
        raise FieldError("an index field cannot be empty")
    tokens = _tokens(text)
    words = [t for t in tokens if not t.isspace()]
    first = words[0]
    if len(words) == 1 and _IDENTIFIER.fullmatch(first):
        return Field(column=first)
    if _IDENTIFIER.fullmatch(first) and _is_word(words[1]) and words[1].upper() not in _SQL_WORDS:
        if columns is None or first in columns:
            return replace(_suffix(words[1:], f"column {first!r}"), column=first)
        close = difflib.get_close_matches(first, list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FieldError(
            f"{first!r} is not a column of this table{hint}, and {text!r} is not an expression: a field is "
            "'<column> [opclass] [ASC|DESC] [NULLS FIRST|LAST]' or an SQL expression"
        )
    return _expression(text, tokens)


def canonical(text: str, columns: Collection[str] | None = None) -> str:
    return parse(text, columns).canonical()


def column_of(text: str) -> str | None:
    """The column a (canonical) field indexes, or None for an expression."""
    try:
        return parse(text).column
    except FieldError:
        return None


def rename(text: str, renames: Mapping[str, str]) -> str:
    """The field with its column renamed (PostgreSQL renames columns inside indexes); expressions as they are."""
    found = column_of(text)
    if found is None or found not in renames:
        return text
    return replace(parse(text), column=renames[found]).canonical()


def same(want: str, got: str) -> bool | None:
    """Compare two column keys exactly (the column by name, the suffix case-insensitively); None when either
    is not a column key (the caller compares expressions its own way)."""
    try:
        a, b = parse(want), parse(got)
    except FieldError:
        return None
    if a.column is None or b.column is None:
        return None
    return a.column == b.column and a.suffix.lower() == b.suffix.lower()


def _tokens(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    depth = 0
    for token in tokens:
        if token[0] in "'\"" and (len(token) < 2 or token[-1] != token[0]):
            raise FieldError(f"unbalanced quote {token[0]} in {text!r}")
        if token == ";":
            raise FieldError(f"{text!r} contains ';': an index field is one key, not a statement")
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            raise FieldError(f"unbalanced parentheses in {text!r}: a ')' closes nothing")
    if depth:
        raise FieldError(f"unbalanced parentheses in {text!r}: {depth} '(' left open")
    return tokens


def _plain_words(*tokens: str) -> bool:
    """True when every token is a word that is not an SQL keyword (two of them in a row are not SQL)."""
    return all(_is_word(t) and t.upper() not in _SQL_WORDS for t in tokens)


def _is_word(token: str) -> bool:
    return bool(_IDENTIFIER.match(token))


def _suffix(words: list[str], after: str) -> Field:
    """Parse ``[opclass] [ASC|DESC] [NULLS FIRST|LAST]``; anything else is an error naming ``after``."""
    rest = list(words)
    opclass = None
    if rest and rest[0].upper() not in _SUFFIX_WORDS:
        if not _OPCLASS.fullmatch(rest[0]):
            raise _bad_suffix(words, after)
        opclass = rest.pop(0).lower().removeprefix("pg_catalog.")
    descending = False
    if rest and rest[0].upper() in _DIRECTIONS:
        descending = rest.pop(0).upper() == "DESC"
    nulls = None
    if len(rest) >= 2 and rest[0].upper() == "NULLS" and rest[1].upper() in _NULLS:
        nulls = rest[1].upper()
        rest = rest[2:]
    if rest:
        raise _bad_suffix(words, after)
    if nulls == ("FIRST" if descending else "LAST"):
        nulls = None
    return Field(opclass=opclass, descending=descending, nulls=nulls)


def _bad_suffix(words: list[str], after: str) -> FieldError:
    return FieldError(f"after {after}, expected [opclass] [ASC|DESC] [NULLS FIRST|LAST], found {' '.join(words)!r}")


def _expression(text: str, tokens: list[str]) -> Field:
    """An expression, with suffixes only after its closing ``)``."""
    depth, close = 0, -1
    for i, token in enumerate(tokens):
        depth += {"(": 1, ")": -1}.get(token, 0)
        if token == ")" and depth == 0:
            close = i
    tail = [t for t in tokens[close + 1 :] if not t.isspace()] if close >= 0 else []
    if close >= 0 and tail and all(_is_word(t) for t in tail) and tail[0].upper() not in _SQL_WORDS:
        head = "".join(tokens[: close + 1]).strip()
        return replace(_suffix(tail, f"the expression {head!r}"), expression=head)
    _check_top_level(text, tokens)
    return Field(expression=text)


def _check_top_level(text: str, tokens: list[str]) -> None:
    """Outside parentheses, no suffix word after the expression and no two plain words in a row."""
    depth = 0
    previous: str | None = None
    for i, token in enumerate(tokens):
        if token.isspace():
            continue
        if depth == 0 and previous is not None and token.upper() in _SUFFIX_WORDS:
            head, rest = "".join(tokens[:i]).strip(), "".join(tokens[i:]).strip()
            raise FieldError(
                f"{text!r}: an ordering after an expression needs the expression in parentheses: '({head}) {rest}'"
            )
        if depth == 0 and previous is not None and _plain_words(previous, token):
            raise FieldError(
                f"{text!r}: {previous!r} followed by {token!r} is not an expression; an operator class or "
                "ordering goes after a column or after an expression in parentheses, e.g. '(a || b) DESC'"
            )
        depth += {"(": 1, ")": -1}.get(token, 0)
        previous = token if depth == 0 else None
