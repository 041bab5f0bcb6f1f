"""The model: type normalisation, derived names, canonical form, and the example config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import config, model, pgtypes
from orchestrator.errors import ConfigError
from tests.conftest import REPO_ROOT, write

REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  tenants: {static: [t1]}\n---\n"
ID = "    - {name: id, type: bigint, primaryKey: true}\n"
AGREE = "; two resources on one table must agree"


def resource(body: str, extra: str = "", name: str = "thing", table: str = "things") -> str:
    return (
        f"apiVersion: orchestrator/v1\nkind: Resource\nmetadata: {{name: {name}}}\nspec:\n  repo: app\n"
        f"  table: {table}\n{extra}  attributes:\n{body}"
    )


def load(tmp_path: Path, *texts: str) -> model.Config:
    for i, text in enumerate(texts):
        write(tmp_path / f"{i}.yaml", text)
    return config.load(tmp_path, base=tmp_path)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("int", "integer"),
        ("int4", "integer"),
        ("INTEGER", "integer"),
        ("int2", "smallint"),
        ("int8", "bigint"),
        ("bool", "boolean"),
        ("float8", "double precision"),
        ("float", "double precision"),
        ("float(24)", "real"),
        ("float4", "real"),
        ("double  precision", "double precision"),
        ("character varying(20)", "varchar(20)"),
        ("varchar( 20 )", "varchar(20)"),
        ("varchar", "varchar"),
        ("decimal(10, 2)", "numeric(10,2)"),
        ("numeric(5)", "numeric(5,0)"),
        ("numeric", "numeric"),
        ("char", "char(1)"),
        ("character(3)", "char(3)"),
        ("bpchar(2)", "char(2)"),
        ("timestamp with time zone", "timestamptz"),
        ("timestamp(3) with time zone", "timestamptz(3)"),
        ("timestamp without time zone", "timestamp"),
        ("time with time zone", "timetz"),
        ("text[]", "text[]"),
        ("int[][]", "integer[]"),
        ("integer ARRAY", "integer[]"),
        ("int4[3]", "integer[]"),
        ("serial8", "bigserial"),
        ("uuid", "uuid"),
        ("jsonb", "jsonb"),
        ("citext", "citext"),
        ("vector(3)", "vector(3)"),
        ("public.mood", "public.mood"),
    ],
)
def test_type_aliases_normalise(written: str, canonical: str) -> None:
    assert pgtypes.normalise(written) == canonical


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("strng", "unknown type 'strng' (did you mean 'text'?)"),
        ("varchar(0)", "malformed type 'varchar(0)': 0 is outside 1..10485760"),
        ("text(5)", "malformed type 'text(5)': text takes no modifiers"),
        ("numeric(1,2,3)", "malformed type 'numeric(1,2,3)': numeric takes at most 2 modifiers"),
        ("timestamp(7)", "malformed type 'timestamp(7)': 7 is outside 0..6"),
        ("int); DROP TABLE x; --", "malformed type 'int); DROP TABLE x; --'"),
    ],
)
def test_bad_types_are_explained(written: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        pgtypes.normalise(written)
    assert str(raised.value) == message


def test_aliases_give_the_same_canonical_form_and_hash(tmp_path: Path) -> None:
    a = load(
        tmp_path / "a",
        REPO,
        resource(
            "    - {name: id, type: int8, primaryKey: true}\n    - {name: ok, type: bool, default: true}\n"
            "    - {name: price, type: 'decimal(10, 2)'}\n"
        ),
    )
    b = load(
        tmp_path / "b",
        REPO,
        resource(
            "    - {name: id, type: bigint, allowNull: false}\n    - {name: ok, type: boolean, default: true}\n"
            "    - {name: price, type: 'numeric(10,2)'}\n",
            extra="  primaryKey: [id]\n",
            name="other",
        ),
    )
    assert a.tables[0].canonical_json() == b.tables[0].canonical_json()
    assert a.tables[0].content_hash() == b.tables[0].content_hash()


def test_renames_do_not_change_the_essence(tmp_path: Path) -> None:
    a = load(tmp_path / "a", REPO, resource("    - {name: id, type: bigint, primaryKey: true}\n"))
    b = load(
        tmp_path / "b",
        REPO,
        resource(
            "    - {name: id, type: bigint, primaryKey: true, renamedFrom: key}\n",
            extra="  renamedFrom: old_things\n",
        ),
    )
    assert a.tables[0].content_hash() == b.tables[0].content_hash()


def test_canonical_json_is_sorted_and_stable(tmp_path: Path) -> None:
    cfg = load(tmp_path, REPO, resource("    - {name: id, type: bigint, primaryKey: true}\n"))
    text = cfg.tables[0].canonical_json()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["primary_key"] == ["id"] and data["schema"] == "public" and data["name"] == "things"


def test_derived_names_and_tenant_first(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        REPO,
        resource(
            "    - {name: org_id, type: uuid, allowNull: false}\n    - {name: id, type: bigint, primaryKey: true}\n"
            "    - {name: parent_id, type: bigint, references: {resource: thing, index: true}}\n"
            "    - {name: code, type: text}\n",
            extra="  multitenancy: {strategy: attribute, attribute: org_id}\n"
            "  identities:\n    - {name: unique_code, keys: [code]}\n  indexes:\n    - {fields: [code, id]}\n",
        ),
    )
    table = cfg.tables[0]
    column = table.column("parent_id")
    ref = column.references if column else None
    assert ref is not None
    assert (ref.name, ref.index_name, ref.table, ref.schema, ref.column) == (
        "things_parent_id_fkey",
        "things_parent_id_index",
        "things",
        "public",
        "id",
    )
    assert table.identities[0].index_name == "things_unique_code_index"
    assert table.identities[0].keys == ("org_id", "code")
    assert table.indexes[0].name == "things_code_id_index"
    assert table.indexes[0].fields == ("org_id", "code", "id")


def test_tenant_table_references_global_qualified_and_tenant_unqualified(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        REPO,
        resource("    - {name: id, type: uuid, primaryKey: true}\n", name="user", table="users"),
        resource(
            "    - {name: id, type: bigint, primaryKey: true}\n"
            "    - {name: owner_id, type: uuid, references: {resource: user}}\n",
            extra="  multitenancy: {strategy: context}\n",
            name="project",
            table="projects",
        ),
        resource(
            "    - {name: id, type: bigint, primaryKey: true}\n"
            "    - {name: project_id, type: bigint, references: {table: projects}}\n",
            extra="  multitenancy: {strategy: context}\n",
            name="task",
            table="tasks",
        ),
    )
    tables = {t.name: t for t in cfg.tables}
    owner = tables["projects"].column("owner_id")
    project = tables["tasks"].column("project_id")
    assert owner is not None and owner.references is not None and owner.references.schema == "public"
    assert project is not None and project.references is not None and project.references.schema is None
    assert tables["projects"].schema is None and tables["projects"].is_tenant


def test_two_resources_that_agree_on_a_table_are_merged(tmp_path: Path) -> None:
    body = "    - {name: id, type: bigint, primaryKey: true}\n"
    cfg = load(tmp_path, REPO, resource(body), resource(body, name="thing_alias"))
    assert len(cfg.tables) == 1


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        pytest.param(
            (ID + "    - {name: email, type: 'varchar(255)'}\n", ""),
            (ID + "    - {name: email, type: text}\n", ""),
            "2.yaml:9:27: spec.attributes[1].type: table public.things is also defined by resource 'thing', "
            "differently: column email: type text here, varchar(255) in 1.yaml:9",
            id="column-type",
        ),
        pytest.param(
            (ID + "    - {name: email, type: text}\n", ""),
            (ID + "    - {name: email, type: int8}\n    - {name: extra, type: text}\n", ""),
            "2.yaml:9:27: spec.attributes[1].type: table public.things is also defined by resource 'thing', "
            "differently: column email: type bigint here, text in 1.yaml:9",
            id="first-difference-only",
        ),
        pytest.param(
            (ID + "    - {name: email, type: text}\n", ""),
            (ID, ""),
            "2.yaml:8:5: spec.attributes: table public.things is also defined by resource 'thing', "
            "differently: column email: missing here, defined in 1.yaml:9",
            id="column-missing",
        ),
        pytest.param(
            (ID + "    - {name: a, type: text}\n    - {name: b, type: text}\n", ""),
            (ID + "    - {name: b, type: text}\n    - {name: a, type: text}\n", ""),
            "2.yaml:8:5: spec.attributes: table public.things is also defined by resource 'thing', "
            "differently: column order: (id, b, a) here, (id, a, b) in 1.yaml:8",
            id="column-order",
        ),
        pytest.param(
            (ID + "    - {name: code, type: text, allowNull: false}\n", ""),
            (
                "    - {name: id, type: bigint}\n    - {name: code, type: text, allowNull: false}\n",
                "  primaryKey: [id, code]\n",
            ),
            "2.yaml:7:15: spec.primaryKey: table public.things is also defined by resource 'thing', "
            "differently: primary key: (id, code) here, (id) in 1.yaml:8",
            id="primary-key",
        ),
        pytest.param(
            (ID + "    - {name: parent_id, type: bigint, references: {resource: thing, onDelete: cascade}}\n", ""),
            (ID + "    - {name: parent_id, type: bigint, references: {resource: thing}}\n", ""),
            "2.yaml:9:51: spec.attributes[1].references: table public.things is also defined by resource 'thing', "
            "differently: column parent_id: references.onDelete none here, cascade in 1.yaml:9",
            id="reference",
        ),
        pytest.param(
            (ID, "  identities:\n    - {name: unique_id, keys: [id]}\n"),
            (ID, "  identities:\n    - {name: unique_id, keys: [id], where: id > 0}\n"),
            "2.yaml:8:44: spec.identities[0].where: table public.things is also defined by resource 'thing', "
            "differently: identity unique_id: where 'id > 0' here, none in 1.yaml:8",
            id="identity",
        ),
        pytest.param(
            (ID, "  checkConstraints:\n    - {name: positive, check: id > 0}\n"),
            (ID, "  checkConstraints:\n    - {name: positive, check: id >= 0}\n"),
            "2.yaml:8:31: spec.checkConstraints[0].check: table public.things is also defined by resource 'thing', "
            "differently: check constraint positive: check 'id >= 0' here, 'id > 0' in 1.yaml:8",
            id="check-constraint",
        ),
        pytest.param(
            (ID, "  indexes:\n    - {fields: [id], name: things_by_id}\n"),
            (ID, ""),
            "2.yaml:6:10: spec.table: table public.things is also defined by resource 'thing', "
            "differently: index things_by_id: missing here, defined in 1.yaml:8",
            id="index-missing",
        ),
        pytest.param(
            ("    - {name: org_id, type: uuid}\n" + ID, ""),
            ("    - {name: org_id, type: uuid}\n" + ID, "  multitenancy: {strategy: attribute, attribute: org_id}\n"),
            "2.yaml:7:17: spec.multitenancy: table public.things is also defined by resource 'thing', "
            "differently: multitenancy: strategy attribute (org_id) here, none in 1.yaml:6",
            id="multitenancy",
        ),
    ],
)
def test_two_resources_that_disagree_name_the_first_difference(
    tmp_path: Path, first: tuple[str, str], second: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, REPO, resource(*first), resource(*second, name="thing2"))
    assert [str(p) for p in raised.value.problems] == [message + AGREE]


def test_tenant_column_must_be_an_attribute(tmp_path: Path) -> None:
    body = ID + "    - {name: code, type: text}\n"
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, REPO, resource(body, extra="  multitenancy: {strategy: attribute, attribute: org_id}\n"))
    assert [str(p) for p in raised.value.problems] == [
        "1.yaml:7:50: spec.multitenancy.attribute: tenant column 'org_id' is not an attribute of this resource; "
        "its attributes are: id, code"
    ]


def test_example_config_is_valid_and_looks_like_a_saas() -> None:
    cfg = config.load(REPO_ROOT / "config", base=REPO_ROOT)
    assert [r.name for r in cfg.repos] == ["analytics", "app"]
    app = cfg.repo("app")
    assert app is not None and app.tenants is not None and app.tenants.kind == "query"
    assert app.embedded or app.url
    keys = {t.key for t in cfg.tables}
    assert {
        "public.organizations",
        "public.users",
        "tenants.projects",
        "tenants.tasks",
        "tenants.comments",
        "public.events",
    } <= keys
    events = next(t for t in cfg.tables if t.name == "events")
    assert events.multitenancy.strategy == "attribute" and events.primary_key == ("org_id", "id")
    assert any(i.where for t in cfg.tables for i in t.indexes)
    assert any(t.check_constraints for t in cfg.tables)


def test_missing_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load(tmp_path / "nope", base=tmp_path)
    assert [str(p) for p in raised.value.problems] == ["nope:1:1: config directory not found"]
