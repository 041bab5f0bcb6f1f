"""The grammar of an index field: ``<column> [COLLATE collation] [opclass] [ASC|DESC] [NULLS FIRST|LAST]``, or an
SQL expression with the same suffixes.

A field is written once in a manifest and read by three parties that must agree: the model (its canonical
spelling is what snapshots store), the renderer (a column is quoted, an expression parenthesised, a collation and
an operator class quoted) and the catalog comparison (``catalog.read`` prints a key the same canonical way). So the
field is parsed here, once, into a ``Field``, and written back canonically: keywords upper-case, ``ASC`` and the
direction's default ``NULLS`` left out, one space between parts, a quoted column name unquoted (names in the format
are exact), the collation always double-quoted (``note COLLATE "C"``: collation names are case-sensitive), the
operator class lower-case when it was written unquoted (PostgreSQL folds an unquoted name), quoted only when it
needs to be, and both without ``pg_catalog.``.

An expression takes the suffixes only when it ends in ``)`` (a call or a parenthesised expression), as the format
says: ``lower(title) text_pattern_ops``, ``(a || b) DESC``. There is no SQL parser here, so ``parse`` rejects what
the renderer could not turn into a valid key: unbalanced parentheses or quotes, ``;``, a top-level ``,``, anything
after a column that is not the suffix grammar or an operator (``a 1``, ``a $x``, ``a "x" y``), a suffix after an
expression that does not end in ``)``, and two operands in a row at the top level of an expression (``b || a c``).
It does not prove an expression valid, nor that a collation or operator class exists: PostgreSQL still judges those.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from orchestrator import pgtypes

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_PLAIN_LOWER = re.compile(r"[a-z_][a-z0-9_]*")
_TOKEN = re.compile(
    r"""\s+|'(?:[^']|'')*'|"(?:[^"]|"")*"|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+"""
    r"""|[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*|."""
)
_DIRECTIONS = {"ASC", "DESC"}
_NULLS = {"FIRST", "LAST"}
_SUFFIX_WORDS = _DIRECTIONS | {"NULLS", "COLLATE"}

# pg_opclass WHERE opcdefault for btree (hash has the same names) by the model's base type names.
_DEFAULT_OPCLASSES = {
    "smallint": "int2_ops",
    "smallserial": "int2_ops",
    "integer": "int4_ops",
    "serial": "int4_ops",
    "bigint": "int8_ops",
    "bigserial": "int8_ops",
    "text": "text_ops",
    "varchar": "text_ops",
    "character varying": "text_ops",
    "char": "bpchar_ops",
    "character": "bpchar_ops",
    "boolean": "bool_ops",
    "uuid": "uuid_ops",
    "date": "date_ops",
    "timestamptz": "timestamptz_ops",
    "timestamp with time zone": "timestamptz_ops",
    "timestamp": "timestamp_ops",
    "timestamp without time zone": "timestamp_ops",
    "time": "time_ops",
    "time without time zone": "time_ops",
    "timetz": "timetz_ops",
    "time with time zone": "timetz_ops",
    "interval": "interval_ops",
    "numeric": "numeric_ops",
    "real": "float4_ops",
    "double precision": "float8_ops",
    "bytea": "bytea_ops",
    "jsonb": "jsonb_ops",
    "inet": "inet_ops",
    "money": "money_ops",
}

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
    """A parsed index field: ``column`` or ``expression`` (exactly one), then the optional suffixes.

    ``collation`` and ``opclass`` are the real (unquoted) name parts, schema first when qualified."""

    column: str | None = None
    expression: str | None = None
    opclass: tuple[str, ...] | None = None
    descending: bool = False
    nulls: str | None = None
    """"FIRST" or "LAST", only when not the direction's default (ASC: LAST, DESC: FIRST)."""
    collation: tuple[str, ...] | None = None

    @property
    def suffix(self) -> str:
        """The canonical suffix: ``[COLLATE "x"] [opclass][ DESC][ NULLS FIRST|LAST]`` without a leading space."""
        parts = [
            "COLLATE " + ".".join(_double_quoted(p) for p in self.collation) if self.collation else "",
            ".".join(_quoted_if_needed(p) for p in self.opclass) if self.opclass else "",
            "DESC" if self.descending else "",
            f"NULLS {self.nulls}" if self.nulls else "",
        ]
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
    column = _column_head(words)
    if column is None:
        return _expression(text, tokens)
    if columns is not None and column not in columns and len(words) > 1 and _is_plain(words[0]):
        close = difflib.get_close_matches(column, list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FieldError(
            f"{column!r} is not a column of this table{hint}, and {text!r} is not an expression: a field is "
            "'<column> [COLLATE collation] [opclass] [ASC|DESC] [NULLS FIRST|LAST]' or an SQL expression"
        )
    found = _suffix(words[1:], f"column {column!r}")
    # the format gives no column a collation of its own, so COLLATE "default" on a column changes nothing
    collation = None if found.collation == ("default",) else found.collation
    return replace(found, column=column, collation=collation)


def default_opclass(type_: str, using: str) -> str | None:
    """The operator class PostgreSQL picks for a column of canonical type ``type_`` in a btree or hash index
    (the catalog reader leaves it out, so the model does too), when this module knows it."""
    if using not in ("btree", "hash") or type_.endswith("]"):
        return None
    return _DEFAULT_OPCLASSES.get(pgtypes.base_type(type_))


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
    """Compare two keys' suffixes exactly, and column keys by name; None when both are expressions with the same
    suffix or either cannot be parsed (the caller compares expressions its own way)."""
    try:
        a, b = parse(want), parse(got)
    except FieldError:
        return None
    if (a.column is None) != (b.column is None) or a.suffix != b.suffix:
        return False
    if a.column is None:
        return None
    return a.column == b.column


def _column_head(words: list[str]) -> str | None:
    """The column when the field starts with one (a plain or quoted name that is not a call, a qualified name or
    an operand of an SQL keyword operator such as ``IS``), else None: the field is an expression."""
    first = words[0]
    after = words[1] if len(words) > 1 else None
    if after in ("(", "."):
        return None
    if _is_plain(first) and "." not in first:
        name = first
    elif first.startswith('"'):
        name = _unquote(first)
    else:
        return None
    if after is None or _is_quoted(after) or after[0].isdigit() or after[0] in "'$,":
        return name
    if _is_plain(after) and (after.upper() in _SUFFIX_WORDS or after.upper() not in _SQL_WORDS):
        return name
    return None


def _tokens(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    depth = 0
    for token in tokens:
        if token[0] in "'\"" and (len(token) < 2 or token[-1] != token[0]):
            raise FieldError(f"unbalanced quote {token[0]} in {text!r}")
        if token == ";":
            raise FieldError(f"{text!r} contains ';': an index field is one key, not a statement")
        if token == "," and depth == 0:
            raise FieldError(f"{text!r} contains ',': an index field is one key; list each key as its own field")
        if token == "$" and depth == 0:
            raise FieldError(f"{text!r} contains '$': an index key has no parameters")
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            raise FieldError(f"unbalanced parentheses in {text!r}: a ')' closes nothing")
    if depth:
        raise FieldError(f"unbalanced parentheses in {text!r}: {depth} '(' left open")
    return tokens


def _is_plain(token: str) -> bool:
    """A plain word (possibly dotted), keyword or not."""
    return bool(_IDENTIFIER.match(token))


def _is_quoted(token: str) -> bool:
    return token.startswith('"')


def _is_operand(token: str) -> bool:
    """A value on its own: a name that is not an SQL keyword, a quoted name, a number or a string literal."""
    if _is_plain(token):
        return token.upper() not in _SQL_WORDS
    return token[0] in "\"'" or token[0].isdigit() or (token[0] == "." and len(token) > 1)


def _unquote(token: str) -> str:
    return token[1:-1].replace('""', '"')


def _double_quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quoted_if_needed(name: str) -> str:
    return name if _PLAIN_LOWER.fullmatch(name) else _double_quoted(name)


def _name(words: list[str], at: int, what: str) -> tuple[tuple[str, ...], int]:
    """Read a possibly schema-qualified name (plain or "quoted" parts) starting at ``words[at]``; return its real
    parts (unquoted parts folded to lower case, as PostgreSQL does) and the index after it."""
    parts: list[str] = []
    while at < len(words):
        token = words[at]
        if _is_quoted(token):
            parts.append(_unquote(token))
        elif _is_plain(token) and token.upper() not in _SUFFIX_WORDS:
            if what == "a collation" and token != token.lower():
                raise FieldError(
                    f"collation {token!r} is unquoted and PostgreSQL would fold it to {token.lower()!r}; collation "
                    f'names are case-sensitive: write COLLATE "{token}"'
                )
            parts.extend(part.lower() for part in token.split("."))
        else:
            break
        at += 1
        if at + 1 < len(words) and words[at] == "." and (_is_quoted(words[at + 1]) or _is_plain(words[at + 1])):
            at += 1
            continue
        break
    if not parts or len(parts) > 2:
        raise FieldError(f"expected {what} name (optionally schema-qualified), found {' '.join(words[at:])!r}")
    if parts[0] == "pg_catalog" and len(parts) == 2:
        parts = parts[1:]
    return tuple(parts), at


def _suffix(words: list[str], after: str) -> Field:
    """Parse ``[COLLATE name] [opclass] [ASC|DESC] [NULLS FIRST|LAST]``; anything else is an error naming ``after``."""
    at, collation, opclass = 0, None, None
    try:
        if at < len(words) and words[at].upper() == "COLLATE":
            collation, at = _name(words, at + 1, "a collation")
        if at < len(words) and (_is_quoted(words[at]) or words[at].upper() not in _SUFFIX_WORDS):
            opclass, at = _name(words, at, "an operator class")
    except FieldError as exc:
        raise _bad_suffix(words, after, str(exc)) from None
    descending = False
    if at < len(words) and words[at].upper() in _DIRECTIONS:
        descending = words[at].upper() == "DESC"
        at += 1
    nulls = None
    if at + 1 < len(words) and words[at].upper() == "NULLS" and words[at + 1].upper() in _NULLS:
        nulls = words[at + 1].upper()
        at += 2
    if at < len(words):
        raise _bad_suffix(words, after)
    if nulls == ("FIRST" if descending else "LAST"):
        nulls = None
    return Field(opclass=opclass, descending=descending, nulls=nulls, collation=collation)


def _bad_suffix(words: list[str], after: str, why: str = "") -> FieldError:
    return FieldError(
        f"after {after}, expected [COLLATE collation] [opclass] [ASC|DESC] [NULLS FIRST|LAST], "
        f"found {' '.join(words)!r}" + (f" ({why})" if why else "")
    )


def _expression(text: str, tokens: list[str]) -> Field:
    """An expression, with suffixes only after its closing ``)``."""
    depth, close = 0, -1
    for i, token in enumerate(tokens):
        depth += {"(": 1, ")": -1}.get(token, 0)
        if token == ")" and depth == 0:
            close = i
    tail = [t for t in tokens[close + 1 :] if not t.isspace()] if close >= 0 else []
    if close >= 0 and tail and _suffix_like(tail):
        head = "".join(tokens[: close + 1]).strip()
        found = _suffix(tail, f"the expression {head!r}")
        if found.collation == ("default",):
            raise FieldError(
                f'{text!r}: COLLATE "default" after an expression is what PostgreSQL derives for it unless the '
                "expression has a COLLATE inside; leave it out, or write the collation inside the expression"
            )
        return replace(found, expression=head)
    _check_top_level(text, tokens)
    return Field(expression=text)


def _suffix_like(tail: list[str]) -> bool:
    """Names and keywords only, starting with a suffix word or a name that is no SQL keyword (``IS NULL`` is not)."""
    names = all(_is_plain(t) or _is_quoted(t) or t == "." for t in tail)
    first = tail[0].upper()
    return names and (first in _SUFFIX_WORDS or _is_quoted(tail[0]) or first not in _SQL_WORDS)


def _check_top_level(text: str, tokens: list[str]) -> None:
    """Outside parentheses, no ordering word after the expression and no two operands in a row (a typed literal
    such as ``text 'x'`` aside)."""
    depth = 0
    previous: str | None = None
    for i, token in enumerate(tokens):
        if token.isspace():
            continue
        if depth == 0 and previous is not None and token.upper() in _SUFFIX_WORDS - {"COLLATE"}:
            head, rest = "".join(tokens[:i]).strip(), "".join(tokens[i:]).strip()
            raise FieldError(
                f"{text!r}: an ordering after an expression needs the expression in parentheses: '({head}) {rest}'"
            )
        if depth == 0 and previous is not None and _two_operands(previous, token):
            raise FieldError(
                f"{text!r}: {previous!r} followed by {token!r} is not an expression; a collation, operator class "
                "or ordering goes after a column or after an expression in parentheses, e.g. '(a || b) DESC'"
            )
        depth += {"(": 1, ")": -1}.get(token, 0)
        previous = token if depth == 0 else None


def _two_operands(previous: str, token: str) -> bool:
    if not (_is_operand(previous) or previous == ")") or not _is_operand(token):
        return False
    typed_literal = _is_plain(previous) and token.startswith("'")
    return not typed_literal
