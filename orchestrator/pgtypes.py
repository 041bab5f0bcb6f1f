"""Normalise PostgreSQL type names so that aliases never show up as changes.

``int``, ``int4`` and ``integer`` are one type to PostgreSQL; if the snapshot said ``int4`` and the manifest now
says ``integer`` the generator must see no change. Every type a manifest names goes through ``normalise``,
which returns the one spelling we store and render (``varchar(20)``, ``numeric(10,2)``, ``timestamptz``,
``text[]``), or raises ``ValueError`` with a message for the user.

Known types are PostgreSQL's built-ins plus the common extension types (citext, hstore, ltree, pgvector,
PostGIS). A schema-qualified name (``public.mood``) is taken as a user-defined type (enum, domain) as written.
"""

from __future__ import annotations

import difflib
import re

_ALIASES: dict[str, str] = {
    "int": "integer",
    "int4": "integer",
    "integer": "integer",
    "int2": "smallint",
    "smallint": "smallint",
    "int8": "bigint",
    "bigint": "bigint",
    "serial": "serial",
    "serial4": "serial",
    "bigserial": "bigserial",
    "serial8": "bigserial",
    "smallserial": "smallserial",
    "serial2": "smallserial",
    "bool": "boolean",
    "boolean": "boolean",
    "float8": "double precision",
    "double precision": "double precision",
    "float4": "real",
    "real": "real",
    "float": "float",
    "numeric": "numeric",
    "decimal": "numeric",
    "text": "text",
    "varchar": "varchar",
    "character varying": "varchar",
    "char": "char",
    "character": "char",
    "bpchar": "char",
    "bit": "bit",
    "varbit": "varbit",
    "bit varying": "varbit",
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "time": "time",
    "time without time zone": "time",
    "timetz": "timetz",
    "time with time zone": "timetz",
    "interval": "interval",
    "vector": "vector",
    "halfvec": "halfvec",
    "sparsevec": "sparsevec",
}
_PLAIN = (
    "uuid",
    "json",
    "jsonb",
    "jsonpath",
    "bytea",
    "date",
    "money",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "xml",
    "tsvector",
    "tsquery",
    "oid",
    "pg_lsn",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "int4multirange",
    "int8multirange",
    "nummultirange",
    "tsmultirange",
    "tstzmultirange",
    "datemultirange",
    "citext",
    "hstore",
    "ltree",
    "lquery",
    "ltxtquery",
    "cube",
    "geometry",
    "geography",
)
_ALIASES.update({name: name for name in _PLAIN})

# canonical name -> (fewest, most) modifiers, and the range each may take
_MODIFIERS: dict[str, tuple[int, int, tuple[int, int]]] = {
    "varchar": (0, 1, (1, 10_485_760)),
    "char": (0, 1, (1, 10_485_760)),
    "bit": (0, 1, (1, 83_886_080)),
    "varbit": (0, 1, (1, 83_886_080)),
    "numeric": (0, 2, (-1000, 1000)),
    "float": (0, 1, (1, 53)),
    "timestamp": (0, 1, (0, 6)),
    "timestamptz": (0, 1, (0, 6)),
    "time": (0, 1, (0, 6)),
    "timetz": (0, 1, (0, 6)),
    "interval": (0, 1, (0, 6)),
    "vector": (0, 1, (1, 16_000)),
    "halfvec": (0, 1, (1, 16_000)),
    "sparsevec": (0, 1, (1, 1_000_000_000)),
}

_ARRAY = re.compile(r"^(?P<base>.*?)(?P<dims>(\s*\[\s*\d*\s*\])+|\s+array(\s*\[\s*\d*\s*\])?)$")
_TYPE = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*(\s+[a-z_][a-z0-9_]*)*?)"
    r"\s*(\((?P<args>[^()]*)\))?"
    r"(?P<zone>\s+(with|without)\s+time\s+zone)?$"
)
_QUALIFIED = re.compile(r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


def normalise(written: str) -> str:
    """Return the canonical spelling of a type, or raise ``ValueError`` saying what is wrong."""
    text = " ".join(written.strip().lower().split())
    array = _ARRAY.match(text)
    if array:
        return normalise(array.group("base")).removesuffix("[]") + "[]"
    if _QUALIFIED.match(text):
        return text
    match = _TYPE.match(text)
    if not match:
        raise ValueError(f"malformed type {written!r}")
    name = match.group("name") + (" " + " ".join(match.group("zone").split()) if match.group("zone") else "")
    canonical = _ALIASES.get(name)
    if canonical is None:
        raise ValueError(f"unknown type {written!r}" + _hint(name))
    args = _parse_args(written, canonical, match.group("args"))
    return _spell(canonical, args)


def base_type(canonical: str) -> str:
    """Return the type without modifiers or array brackets: ``numeric(10,2)`` -> ``numeric``."""
    return canonical.split("(")[0].removesuffix("[]")


def _parse_args(written: str, canonical: str, raw: str | None) -> tuple[int, ...]:
    if raw is None:
        return ()
    fewest, most, (low, high) = _MODIFIERS.get(canonical, (0, 0, (0, 0)))
    parts = [p.strip() for p in raw.split(",")]
    if not all(re.fullmatch(r"-?\d{1,10}", p) for p in parts):
        raise ValueError(f"malformed type {written!r}: modifiers must be whole numbers")
    if not fewest <= len(parts) <= most:
        allowed = "no modifiers" if most == 0 else f"at most {most} modifier{'s' if most > 1 else ''}"
        raise ValueError(f"malformed type {written!r}: {canonical} takes {allowed}")
    values = tuple(int(p) for p in parts)
    first_low = max(low, 1) if canonical == "numeric" else low
    if not first_low <= values[0] <= (high if canonical != "numeric" else 1000):
        raise ValueError(f"malformed type {written!r}: {values[0]} is outside {first_low}..{high}")
    if len(values) == 2 and not low <= values[1] <= high:
        raise ValueError(f"malformed type {written!r}: scale {values[1]} is outside {low}..{high}")
    return values


def _spell(canonical: str, args: tuple[int, ...]) -> str:
    if canonical == "float":
        return "real" if args and args[0] <= 24 else "double precision"
    if canonical == "numeric" and len(args) == 1:
        args = (args[0], 0)  # PostgreSQL stores numeric(p) as numeric(p,0)
    if canonical in ("char", "bit") and not args:
        args = (1,)  # char and bit without a length mean length 1
    return f"{canonical}({','.join(str(a) for a in args)})" if args else canonical


_MISTAKES = {
    "string": "text",
    "str": "text",
    "datetime": "timestamptz",
    "utc_datetime": "timestamptz",
    "long": "bigint",
    "int64": "bigint",
    "int32": "integer",
    "double": "double precision",
    "number": "numeric",
    "blob": "bytea",
    "binary": "bytea",
    "map": "jsonb",
    "dict": "jsonb",
}


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, [*_MISTAKES, *_ALIASES], n=1, cutoff=0.75)
    return f" (did you mean {_MISTAKES.get(close[0], close[0])!r}?)" if close else ""
