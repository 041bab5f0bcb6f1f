"""Check documents against the JSON Schemas in ``schemas/`` and turn each failure into a located Problem.

The schemas are the single description of the manifest format: editors use them for completion, and we use
them for the structural checks (types, required and unknown fields, enums, identifier and duration patterns).
jsonschema's messages are written for programmers; ``_message`` rewrites the common ones for users, and a
schema may carry ``x-error`` with the wording for its pattern (identifiers, durations).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import marshal
import os
import sys
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import fastjsonschema

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError

from orchestrator.errors import Problem
from orchestrator.manifests.loader import Document

API_VERSION = "orchestrator/v1"
_DRAFT7 = "http://json-schema.org/draft-07/schema#"
KINDS = {"Repo": "repo.schema.json", "Resource": "resource.schema.json"}


def schemas_dir() -> Path:
    """Return the directory of the JSON Schemas: inside the installed package, else the source tree's."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "schemas"
    return packaged if packaged.is_dir() else here.parent / "schemas"


@cache
def _schema(kind: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((schemas_dir() / KINDS[kind]).read_text()))


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """The reference validator: slow, but it reports every error with its path.

    Imported on first use: a valid configuration never needs it.
    """
    import jsonschema

    schema = _schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@cache
def _fast(kind: str) -> Callable[[Any], Any]:
    """A compiled validator for the common case, a valid document (about 20 times faster).

    Our schemas use only keywords that mean the same in draft 7, which fastjsonschema compiles; it stops at the
    first error, so an invalid document is checked again by ``validator`` for the full, located list.
    """
    from fastjsonschema.ref_resolver import RefResolver

    definition = {**_without_defaults(_schema(kind)), "$schema": _DRAFT7}
    namespace: dict[str, Any] = {}
    exec(_validator_code(kind, definition), namespace)
    return cast(Callable[[Any], Any], namespace[RefResolver.from_schema(definition).get_scope_name()])


def _validator_code(kind: str, definition: dict[str, Any]) -> types.CodeType:
    """The validator module fastjsonschema writes for ``definition``, compiled, and cached on disk by content
    (schema, fastjsonschema and Python versions): writing and compiling it took 0.05-0.25 s of every CLI run,
    a third of a no-op. Without a writable cache directory it is made in every process, as before."""
    text = json.dumps(definition, sort_keys=True)
    key = hashlib.sha256(f"{fastjsonschema.VERSION}\0{sys.version}\0{text}".encode()).hexdigest()[:32]
    path = _cache_dir() / f"{kind.lower()}-validator-{key}.marshal"
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        code = marshal.loads(path.read_bytes())
        if isinstance(code, types.CodeType):
            return code
    code = compile(fastjsonschema.compile_to_code(definition), f"<{kind} schema validator>", "exec")
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # renamed into place: whole or not at all
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(marshal.dumps(code))
        os.replace(partial, path)
    except OSError:  # no cache then; a half-written file is not left behind
        with contextlib.suppress(OSError):
            partial.unlink()
    return code


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/orchestrator``, else ``~/.cache/orchestrator``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "orchestrator"


def _without_defaults(node: Any) -> Any:
    """Drop the ``default`` keywords: fastjsonschema would write them into the data it checks."""
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):  # maps of names to schemas: a property may be called "default"
            result[key] = {name: _without_defaults(sub) for name, sub in value.items()}
        elif key != "default":
            result[key] = _without_defaults(value)
    return result


def _valid(kind: str, data: Any) -> bool:
    try:
        _fast(kind)(data)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def check(doc: Document) -> list[Problem]:
    """Return the problems of one document; an empty list means it matches its kind's schema."""
    data = doc.data
    if not isinstance(data, dict):
        return [
            doc.problem(
                (),
                f"a manifest must be a mapping with apiVersion, kind, metadata and spec, not {_json_type(data)}",
            )
        ]
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        known = " or ".join(KINDS)
        if kind is None:
            return [doc.problem((), f"missing required field 'kind' ({known})")]
        return [doc.problem(("kind",), f"unknown kind {kind!r}; expected {known}")]
    if _valid(kind, data):
        return []
    errors = sorted(validator(kind).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [problem for error in errors for problem in _problems(doc, error)]


def _problems(doc: Document, error: ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    schema = cast(dict[str, Any], error.schema)
    rule_value: Any = error.validator_value
    if error.validator in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match

        return _problems(doc, best_match(error.context))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        return [
            doc.problem((*path, extra), _unknown_field(extra, allowed), key=True)
            for extra in error.instance
            if extra not in allowed
        ]
    if error.validator == "required":
        missing = [name for name in rule_value if name not in cast(dict[str, Any], error.instance)]
        return [doc.problem(path, f"missing required field {name!r}") for name in missing]
    return [doc.problem(path, _message(error))]


def _message(error: ValidationError) -> str:
    value, rule = error.instance, error.validator
    schema = cast(dict[str, Any], error.schema)
    rule_value: Any = error.validator_value
    if "x-error" in schema and rule in ("pattern", "minLength", "maxLength"):
        return f"{value!r} {schema['x-error']}"
    if rule == "type":
        names = " or ".join(rule_value) if isinstance(rule_value, list) else rule_value
        return f"expected {_article(str(names))}, got {_json_type(value)} {_short(value)}"
    if rule == "enum":
        choices = ", ".join(json.dumps(c) if not isinstance(c, str) else c for c in rule_value)
        return f"{_short(value)} is not one of: {choices}{_suggest(value, rule_value)}"
    if rule == "const":
        return f"must be {rule_value!r}, not {_short(value)}"
    if rule == "minItems":
        return f"needs at least {rule_value} item{'s' if rule_value != 1 else ''}"
    if rule == "maxItems":
        count = len(value) if isinstance(value, list) else "too many"
        return f"has {count} items; {schema.get('x-error', f'at most {rule_value} are allowed')}"
    if rule == "uniqueItems":
        return "lists the same item more than once"
    if rule in ("minimum", "maximum"):
        side = "at least" if rule == "minimum" else "at most"
        return f"must be {side} {rule_value}, not {_short(value)}"
    if rule == "minLength" and rule_value == 1:
        return "must not be empty"
    return error.message


def _unknown_field(name: str, allowed: list[str]) -> str:
    if name.endswith(")"):
        return (
            f"unknown field {name!r}: a comma inside {{...}} ends a value; quote values that contain "
            "commas, e.g. type: 'numeric(10,2)'"
        )
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
    return f"unknown field {name!r} ({hint})"


def _suggest(value: Any, choices: list[Any]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "sequence" if isinstance(value, list) else "mapping"


def _article(names: str) -> str:
    renamed = {"object": "mapping", "array": "sequence"}
    names = " or ".join(renamed.get(n, n) for n in names.split(" or "))
    return ("an " if names[0] in "aeiou" else "a ") + names


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
