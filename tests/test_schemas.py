"""The JSON Schemas are good enough for editors: every property described, no unknown fields accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import REPO_ROOT

SCHEMAS = sorted((REPO_ROOT / "schemas").glob("*.schema.json"))
FREE_FORM = {"labels", "annotations"}


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return resolve(schema, schema["$defs"][ref.removeprefix("#/$defs/")])
    return node


def objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += objects(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_property_is_described_and_objects_are_closed(path: Path) -> None:
    schema = json.loads(path.read_text())
    for where, obj in objects(schema):
        assert obj.get("additionalProperties") is False, f"{path.name}{where} accepts unknown fields"
        for name, prop in obj["properties"].items():
            if name in FREE_FORM:
                continue
            described = prop.get("description") or resolve(schema, prop).get("description")
            assert described, f"{path.name}{where}/properties/{name} has no description"
