"""Which generated operations make PostgreSQL rewrite a whole table, so ``generate-migrations`` can refuse them.

A rewrite copies every row into a new file while holding ACCESS EXCLUSIVE on the table: reads and writes wait
for the whole copy, which on a big table is an outage, not a migration. Two generated operations can cause it:

* ``ALTER COLUMN ... TYPE`` (``ops.AlterType``), unless PostgreSQL sees that the stored bytes stay valid. It
  decides in ``ATColumnChangeRequiresRewrite`` after simplifying the ``USING`` expression: a binary-coercible
  cast (``pg_cast.castmethod = 'b'``) becomes a relabel, and the length-coercion functions of varchar,
  numeric, bit varying and the temporal types have "support functions" that turn a widening (or removed)
  type modifier into a relabel too. Anything left (a real cast function, an array coercion, a shortened
  modifier) rewrites. timestamp <-> timestamptz is in place only when the session's TimeZone is UTC: we
  cannot know where the migration runs, so it counts as a rewrite.
* ``ADD COLUMN`` on an existing table whose new value differs per row: an identity or serial column (each row
  draws from a sequence) or a volatile default (``gen_random_uuid()``). A non-volatile default is stored once
  in the catalog (PostgreSQL 11+) and costs nothing. We cannot ask the database whether a function is
  volatile, so a small allowlist of stable and immutable functions is accepted and any other call is treated
  as volatile.

A table created by the same migration is empty: nothing about it counts. ``tests/test_rewrites.py`` checks
these rules against PostgreSQL itself (``pg_class.relfilenode`` changes exactly when the table is rewritten).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from orchestrator import model, pgtypes
from orchestrator.generator import operations as ops

LOCK = "holding ACCESS EXCLUSIVE (reads and writes wait) for the whole rewrite"

SERIAL_STORAGE = {"smallserial": "smallint", "serial": "integer", "bigserial": "bigint"}
"""serial is a CREATE TABLE shorthand: the column's type is the integer type (``render._SERIAL_STORAGE``)."""

BINARY_COERCIBLE = frozenset(
    {
        ("varchar", "text"),
        ("text", "varchar"),
        ("varchar", "char"),
        ("text", "char"),
        ("bit", "varbit"),
        ("varbit", "bit"),
        ("cidr", "inet"),
        ("integer", "oid"),
        ("oid", "integer"),
        ("xml", "text"),
        ("xml", "varchar"),
        ("xml", "char"),
        ("citext", "text"),
        ("text", "citext"),
        ("citext", "varchar"),
        ("varchar", "citext"),
        ("citext", "char"),
    }
)
"""Casts PostgreSQL does without a function (``pg_cast.castmethod = 'b'``, citext's ``WITHOUT FUNCTION``
casts): the bytes are kept, only the type changes. A type modifier on the new type is then checked against
an unknown one, which only the temporal types' maximum precision passes (none of them is in this list)."""

_WIDENS = frozenset({"varchar", "varbit"})
"""Types whose length coercion keeps every value when the new length is at least the old one."""

_TEMPORAL = frozenset({"timestamp", "timestamptz", "time", "timetz", "interval"})
_MAX_PRECISION = 6
"""Temporal types: a precision at least the old one (no precision means 6) keeps every value."""

VOLATILE = frozenset(
    {
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "gen_random_bytes",
        "random",
        "random_normal",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "setval",
    }
)
"""Functions known to be volatile: a new value on every call, so on every row."""

NOT_VOLATILE = frozenset(
    {
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "current_setting",
        "current_schema",
        "current_database",
        "lower",
        "upper",
        "initcap",
        "btrim",
        "ltrim",
        "rtrim",
        "length",
        "substr",
        "replace",
        "concat",
        "concat_ws",
        "format",
        "md5",
        "abs",
        "round",
        "date_trunc",
        "date_part",
        "make_date",
        "make_interval",
        "to_char",
        "to_timestamp",
        "timezone",
        "to_json",
        "to_jsonb",
        "json_build_object",
        "json_build_array",
        "jsonb_build_object",
        "jsonb_build_array",
        "array_fill",
    }
)
"""Functions that are stable or immutable in ``pg_proc`` (every overload): one value for the whole statement."""

SYNTAX = frozenset(
    {
        "cast",
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "extract",
        "substring",
        "trim",
        "position",
        "overlay",
        "row",
        "array",
        "and",
        "or",
        "not",
        "in",
        "is",
        "current_timestamp",
        "current_time",
        "current_date",
        "localtimestamp",
        "localtime",
    }
)
"""Words PostgreSQL's grammar reads before a parenthesis that are not volatile function calls."""

_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\$\$.*?\$\$|\$(?P<tag>[A-Za-z_]\w*)\$.*?\$(?P=tag)\$)
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<cast>::)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_TYPE_WORDS = frozenset({"varying", "precision", "with", "without", "time", "zone"})
"""Words that continue a type name after its first word (``double precision``, ``character varying``)."""


# -- operations ----------------------------------------------------------------------------------------------


def rewrites(operations: Sequence[ops.Operation]) -> list[str]:
    """One line per operation that rewrites a table that exists already (not created in ``operations``)."""
    created = {op.table for op in operations if isinstance(op, ops.CreateTable)}
    lines = []
    for op in operations:
        reason = None if op.table in created else why(op)
        if reason is not None:
            lines.append(f"{op.describe()} — {reason}")
    return lines


def why(op: ops.Operation) -> str | None:
    """Why ``op`` rewrites its table, or None when it does not (whether the table is new is not asked here)."""
    if isinstance(op, ops.AlterType) and type_change_rewrites(op.old, op.new):
        return _rewrites_table(op.ref)
    if isinstance(op, ops.AddColumn):
        reason = added_column_rewrites(op.attribute)
        return f"{reason}; {_rewrites_table(op.ref)}" if reason else None
    return None


def _rewrites_table(ref: ops.Ref) -> str:
    where = "" if ref.schema else " in every tenant schema"
    return f"rewrites table {ref}{where} {LOCK}"


# -- ALTER COLUMN TYPE ---------------------------------------------------------------------------------------


def type_change_rewrites(old: str, new: str) -> bool:
    """True when ``ALTER COLUMN c TYPE new USING c::new`` rewrites the table (canonical type names)."""
    old, new = SERIAL_STORAGE.get(old, old), SERIAL_STORAGE.get(new, new)
    if old == new:
        return False
    old_base, new_base = pgtypes.base_type(old), pgtypes.base_type(new)
    new_mods = _modifiers(new)
    if old.endswith("[]") or new.endswith("[]"):
        # an array coercion always rewrites; only dropping the element's modifier is a relabel
        return not (old.endswith("[]") and new.endswith("[]") and old_base == new_base and new_mods is None)
    if old_base == new_base:
        return not _keeps_values(old_base, _modifiers(old), new_mods)
    return (old_base, new_base) not in BINARY_COERCIBLE or new_mods is not None


def _keeps_values(base: str, old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> bool:
    """Same type, other modifiers: True when PostgreSQL's length coercion reduces to a relabel."""
    if new is None:
        return True  # no modifier to apply: a relabel, for every type
    if base in _WIDENS:
        return old is not None and new[0] >= old[0]
    if base == "numeric":
        return old is not None and new[1] == old[1] and new[0] >= old[0]
    if base in _TEMPORAL:
        return new[0] >= (old[0] if old is not None else _MAX_PRECISION)
    return False  # char(n), bit(n), vector(n), ...: their length coercion always runs


def _modifiers(type_: str) -> tuple[int, ...] | None:
    """``numeric(10,2)`` -> (10, 2); None without modifiers."""
    inside = type_.removesuffix("[]").partition("(")[2].partition(")")[0]
    return tuple(int(x) for x in inside.split(",")) if inside else None


# -- ADD COLUMN ----------------------------------------------------------------------------------------------


def added_column_rewrites(attribute: model.Attribute) -> str | None:
    """Why adding ``attribute`` to a table with rows rewrites it, or None."""
    if attribute.generated:
        return "identity: every row gets its own value from the sequence"
    if attribute.type in SERIAL_STORAGE:
        return f"{attribute.type}: every row gets its own value from the sequence"
    default = attribute.default_expression()
    return volatility(default) if default is not None else None


def volatility(expression: str) -> str | None:
    """Why the SQL ``expression`` is (taken as) volatile, or None when it is stable or immutable."""
    for name in calls(expression):
        short = name.removeprefix("pg_catalog.")
        if short in VOLATILE:
            return f"volatile default {expression}: every row gets its own value"
        if short not in NOT_VOLATILE and short not in SYNTAX:
            return f"default {expression} (unknown function {name}(): treated as volatile)"
    return None


def calls(expression: str) -> list[str]:
    """The (lower-cased, maybe schema-qualified) names called in ``expression``, outside literals and casts."""
    tokens = list(_tokens(expression))
    names = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "cast" or (kind == "word" and text == "as"):
            i = _skip_type(tokens, i + 1)
            continue
        if kind in ("word", "quoted"):
            name, i = _qualified(tokens, i)
            if i < len(tokens) and tokens[i] == ("other", "("):
                names.append(name)
            continue
        i += 1
    return names


def _tokens(expression: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of every token but spaces and comments; words lower-cased, quoted names unquoted."""
    for match in _TOKEN.finditer(expression):
        kind = match.lastgroup or "other"  # the outermost group: "string", never its inner "tag"
        text = match.group(kind)
        if kind in ("space", "comment"):
            continue
        if kind == "word":
            text = text.lower()
        elif kind == "quoted":
            text = text[1:-1].replace('""', '"')
        yield kind, text


def _qualified(tokens: list[tuple[str, str]], i: int) -> tuple[str, int]:
    """Read ``name`` or ``schema.name`` from ``tokens[i]``; return it and the index after it."""
    parts = [tokens[i][1]]
    i += 1
    while i + 1 < len(tokens) and tokens[i] == ("other", ".") and tokens[i + 1][0] in ("word", "quoted"):
        parts.append(tokens[i + 1][1])
        i += 2
    return ".".join(parts), i


def _skip_type(tokens: list[tuple[str, str]], i: int) -> int:
    """Skip a type name after ``::`` or ``AS`` (``varchar(10)``, ``double precision``, ``public.mood``)."""
    if i < len(tokens) and tokens[i][0] in ("word", "quoted"):
        _, i = _qualified(tokens, i)
        while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1] in _TYPE_WORDS:
            i += 1
        if i < len(tokens) and tokens[i] == ("other", "("):
            i = _after_parenthesis(tokens, i)
    return i


def _after_parenthesis(tokens: list[tuple[str, str]], i: int) -> int:
    """The index after the parenthesis that closes the one at ``tokens[i]``."""
    depth = 0
    for j in range(i, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[j][1], 0) if tokens[j][0] == "other" else 0
        if depth == 0:
            return j + 1
    return len(tokens)
