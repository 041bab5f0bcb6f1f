"""Turn schema-valid documents into the model, checking everything a JSON Schema cannot express.

The checks here need more than one field or more than one document: unknown repos and reference targets,
duplicate names, primary keys that disagree, columns named by identities, indexes and multitenancy, resources
that define one table differently (``conflict`` names how), a global table pointing at a tenant table, types,
derived names PostgreSQL would truncate. Every check records a located Problem and carries on, so the user sees
every error at once; the model is returned only when there are none.

Building runs in two passes: tables first (each on its own), then references, which need every table.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from orchestrator import durations, indexfield, model, pgtypes
from orchestrator.errors import Problem
from orchestrator.manifests import conflict, schema
from orchestrator.manifests.loader import Document, Path_

MAX_NAME_BYTES = 63
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_NUMERIC = frozenset({"numeric", "real", "double precision"})
_SERIAL = {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}


@dataclass
class _Draft:
    """A table from pass 1, with its document and raw references for pass 2."""

    doc: Document
    table: model.Table
    references: dict[str, tuple[Path_, dict[str, Any]]] = field(default_factory=dict)


def build(documents: Iterable[Document]) -> tuple[model.Config | None, list[Problem]]:
    """Return the model of every document (None if anything is wrong) and every problem found."""
    problems: list[Problem] = []
    by_kind: dict[str, list[Document]] = {"Repo": [], "Resource": []}
    invalid: set[str] = set()  # names of documents with errors: no follow-up "unknown repo/resource"
    for doc in documents:
        found = schema.check(doc)
        problems.extend(found)
        if not found:
            by_kind[doc.data["kind"]].append(doc)
        else:
            invalid.add(_name_of(doc))
    repos = _unique(by_kind["Repo"], "repo", problems)
    resources = _unique(by_kind["Resource"], "resource", problems)
    built_repos = {name: _repo(doc, problems) for name, doc in repos.items()}
    drafts = [_TableBuilder(doc, built_repos, invalid, problems).build() for doc in resources.values()]
    tables = _References(drafts, invalid, problems).resolve()
    tables = _merge_duplicates(tables, drafts, problems)
    _check_names(tables, drafts, problems)
    if problems:
        return None, problems
    return model.Config(
        repos=tuple(sorted(built_repos.values(), key=lambda r: r.name)),
        tables=tuple(sorted(tables, key=lambda t: (t.repo, t.key))),
    ), []


def _name_of(doc: Document) -> str:
    data = doc.data if isinstance(doc.data, dict) else {}
    metadata = data.get("metadata")
    return str(metadata.get("name")) if isinstance(metadata, dict) else ""


def _unique(docs: list[Document], what: str, problems: list[Problem]) -> dict[str, Document]:
    seen: dict[str, Document] = {}
    for doc in docs:
        name = doc.data["metadata"]["name"]
        if name in seen:
            first = seen[name]
            line = first.locate(("metadata", "name"))[0]
            problems.append(
                doc.problem(
                    ("metadata", "name"),
                    f"duplicate {what} name {name!r} (first defined at {first.display}:{line})",
                )
            )
        else:
            seen[name] = doc
    return seen


def _source(doc: Document) -> model.Source:
    return model.Source(doc.display, doc.locate(())[0])


# -- Repo ----------------------------------------------------------------------------------------------------


def _repo(doc: Document, problems: list[Problem]) -> model.Repo:
    name = doc.data["metadata"]["name"]
    spec: dict[str, Any] = doc.data["spec"]
    if "url" in spec and "urlFile" in spec:
        problems.append(doc.problem(("spec", "urlFile"), "give url or urlFile, not both"))
    if isinstance(spec.get("url"), str):
        leftover = _INTERPOLATION.sub("", spec["url"])
        if "${" in leftover:
            problems.append(doc.problem(("spec", "url"), "malformed ${...}: write ${VAR} or ${VAR:-default}"))
    timeouts = spec.get("timeouts", {})
    retry = spec.get("retry", {})
    built = model.Repo(
        name=name,
        url=spec.get("url"),
        url_file=spec.get("urlFile"),
        migrations_path=spec.get("migrationsPath", f"priv/{name}/migrations"),
        tenant_migrations_path=spec.get("tenantMigrationsPath", f"priv/{name}/tenant_migrations"),
        snapshots_path=spec.get("snapshotsPath", f"priv/resource_snapshots/{name}"),
        extensions=tuple(spec.get("extensions", ())),
        tenants=_tenant_source(doc, spec.get("tenants"), problems),
        rollout=model.Rollout(
            concurrency=spec.get("rollout", {}).get("concurrency", 4),
            canary=tuple(spec.get("rollout", {}).get("canary", ())),
            max_failures=spec.get("rollout", {}).get("maxFailures"),
        ),
        timeouts=model.Timeouts(
            lock_timeout_ms=_ms(timeouts, "lockTimeout", model.Timeouts.lock_timeout_ms),
            statement_timeout_ms=_ms(timeouts, "statementTimeout", model.Timeouts.statement_timeout_ms),
            lock_wait_ms=_ms(timeouts, "lockWait", model.Timeouts.lock_wait_ms),
        ),
        retry=model.Retry(
            attempts=retry.get("attempts", model.Retry.attempts),
            initial_delay_ms=_ms(retry, "initialDelay", model.Retry.initial_delay_ms),
            max_delay_ms=_ms(retry, "maxDelay", model.Retry.max_delay_ms),
        ),
        allow_destructive=spec.get("allowDestructive", False),
        allow_blocking=spec.get("allowBlocking", False),
        online_safe=spec.get("onlineSafe", True),
        source=_source(doc),
    )
    if built.retry.initial_delay_ms > built.retry.max_delay_ms:
        problems.append(doc.problem(("spec", "retry", "maxDelay"), "maxDelay is shorter than initialDelay"))
    if built.tenants and built.tenants.kind == "static":
        for i, canary in enumerate(built.rollout.canary):
            if canary not in built.tenants.static:
                problems.append(
                    doc.problem(
                        ("spec", "rollout", "canary", i),
                        f"canary {canary!r} is not one of the static tenants",
                    )
                )
    return built


def _ms(data: dict[str, Any], key: str, default: int) -> int:
    return durations.parse_ms(data[key]) if key in data else default


def _tenant_source(doc: Document, raw: dict[str, Any] | None, problems: list[Problem]) -> model.TenantSource | None:
    if raw is None:
        return None
    given = [k for k in ("query", "static", "schemaPattern") if k in raw]
    if len(given) != 1:
        where = ("spec", "tenants", given[1]) if given else ("spec", "tenants")
        found = f"found {' and '.join(given)}" if given else "found none"
        problems.append(doc.problem(where, f"give exactly one tenant source: query, static or schemaPattern ({found})"))
        return None
    return model.TenantSource(
        kind=given[0],  # one of the three literals, checked above
        query=raw.get("query"),
        static=tuple(raw.get("static", ())),
        schema_pattern=raw.get("schemaPattern"),
        create_schemas=raw.get("createSchemas", False),
    )


# -- Table, pass 1 -------------------------------------------------------------------------------------------


class _TableBuilder:
    """Build one resource's table; every problem is located in its document."""

    def __init__(self, doc: Document, repos: dict[str, model.Repo], invalid: set[str], problems: list[Problem]) -> None:
        self.doc = doc
        self.invalid = invalid
        self.spec: dict[str, Any] = doc.data["spec"]
        self.table_name: str = self.spec["table"]
        self.repos = repos
        self.problems = problems
        self.references: dict[str, tuple[Path_, dict[str, Any]]] = {}
        self._types: dict[str, str] = {}

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.problem(("spec", *path), message))

    def build(self) -> _Draft:
        spec = self.spec
        multitenancy = self._multitenancy()
        self._check_repo(multitenancy)
        attributes = self._attributes()
        columns = {a.name for a in attributes}
        self._types = {a.name: a.type for a in attributes}
        self._check_tenant_column(multitenancy, attributes)
        primary_key = self._primary_key(attributes, columns)
        attributes = tuple(
            replace(a, allow_null=False, primary_key=True) if a.name in primary_key else a for a in attributes
        )
        # PostgreSQL makes identity columns NOT NULL; say so in the model, or the catalog would drift from it
        attributes = tuple(replace(a, allow_null=False) if a.generated else a for a in attributes)
        tenant_column = multitenancy.attribute if multitenancy.strategy == "attribute" else None
        table = model.Table(
            resource=self.doc.data["metadata"]["name"],
            repo=spec["repo"],
            name=self.table_name,
            schema=None if multitenancy.strategy == "context" else spec.get("schema", "public"),
            attributes=attributes,
            primary_key=primary_key,
            multitenancy=multitenancy,
            renamed_from=spec.get("renamedFrom"),
            identities=self._identities(columns, tenant_column),
            indexes=self._indexes(columns, tenant_column),
            check_constraints=tuple(
                model.CheckConstraint(c["name"], c["check"]) for c in spec.get("checkConstraints", ())
            ),
            statements=self._statements(),
            source=_source(self.doc),
        )
        self._unique_names("checkConstraints", "check constraint")
        return _Draft(self.doc, table, self.references)

    def _multitenancy(self) -> model.Multitenancy:
        raw = self.spec.get("multitenancy")
        if raw is None:
            return model.Multitenancy()
        strategy = raw["strategy"]
        if strategy == "attribute" and "attribute" not in raw:
            self.problem(("multitenancy",), "strategy attribute needs attribute: the tenant column")
        if strategy == "context" and "attribute" in raw:
            self.problem(("multitenancy", "attribute"), "attribute is only for strategy attribute")
        if strategy == "context" and "schema" in self.spec:
            self.problem(("schema",), "a context (per-tenant) table lives in each tenant's schema; remove schema")
        return model.Multitenancy(strategy, raw.get("attribute") if strategy == "attribute" else None)

    def _check_tenant_column(self, multitenancy: model.Multitenancy, attributes: tuple[model.Attribute, ...]) -> None:
        """Under attribute multitenancy the tenant column must be one of the table's attributes."""
        tenant = multitenancy.attribute
        if multitenancy.strategy != "attribute" or tenant is None:
            return
        names = [a.name for a in attributes]
        if tenant not in names:
            self.problem(
                ("multitenancy", "attribute"),
                f"tenant column {tenant!r} is not an attribute of this resource{_did_you_mean(tenant, names)}; "
                f"its attributes are: {', '.join(names)}",
            )

    def _check_repo(self, multitenancy: model.Multitenancy) -> None:
        name = self.spec["repo"]
        repo = self.repos.get(name)
        if repo is None and name in self.invalid:
            return  # the repo's own document has errors, reported there
        if repo is None:
            self.problem(("repo",), f"unknown repo {name!r}{_did_you_mean(name, self.repos)}")
        elif multitenancy.strategy == "context" and repo.tenants is None:
            self.problem(
                ("multitenancy", "strategy"),
                f"repo {name!r} has no tenants source, so context tables could never be rolled out",
            )

    def _attributes(self) -> tuple[model.Attribute, ...]:
        seen: dict[str, int] = {}
        built = []
        for i, raw in enumerate(self.spec["attributes"]):
            name = raw["name"]
            if name in seen:
                line = self.doc.locate(("spec", "attributes", seen[name], "name"))[0]
                self.problem(("attributes", i, "name"), f"duplicate column {name!r} (first defined on line {line})")
                continue
            seen[name] = i
            built.append(self._attribute(i, raw))
        names = set(seen)
        for i, raw in enumerate(self.spec["attributes"]):
            if raw.get("renamedFrom") in names and raw.get("renamedFrom") != raw["name"]:
                self.problem(
                    (*("attributes", i), "renamedFrom"),
                    f"renamedFrom names {raw['renamedFrom']!r}, which is still a column of this table",
                )
        return tuple(built)

    def _attribute(self, i: int, raw: dict[str, Any]) -> model.Attribute:
        path: Path_ = ("attributes", i)
        try:
            type_ = pgtypes.normalise(raw["type"])
        except ValueError as exc:
            self.problem((*path, "type"), str(exc))
            type_ = "text"
        if "default" in raw and "defaultSql" in raw:
            self.problem((*path, "defaultSql"), "give default or defaultSql, not both")
        if "default" in raw:
            self._check_default(path, type_, raw["default"])
        if "generated" in raw:
            if pgtypes.base_type(type_) not in pgtypes.INTEGER_TYPES or type_.endswith("[]"):
                self.problem((*path, "generated"), f"identity columns must be smallint, integer or bigint, not {type_}")
            if "default" in raw or "defaultSql" in raw:
                self.problem((*path, "generated"), "an identity column cannot also have a default")
        if raw.get("primaryKey") and raw.get("allowNull") is True:
            self.problem((*path, "allowNull"), "a primary-key column cannot allow NULL")
        if "references" in raw:
            self.references[raw["name"]] = (("spec", *path, "references"), raw["references"])
        return model.Attribute(
            name=raw["name"],
            type=type_,
            allow_null=raw.get("allowNull", True),
            primary_key=raw.get("primaryKey", False),
            default=raw.get("default"),
            default_sql=raw.get("defaultSql"),
            generated=raw.get("generated"),
            renamed_from=raw.get("renamedFrom"),
        )

    def _check_default(self, path: Path_, type_: str, value: Any) -> None:
        base = pgtypes.base_type(type_)
        if type_.endswith("[]"):
            return
        wrong = (
            (base in pgtypes.INTEGER_TYPES and (isinstance(value, bool) or not isinstance(value, int)))
            or (base in _NUMERIC and (isinstance(value, bool) or not isinstance(value, int | float)))
            or (base == "boolean" and not isinstance(value, bool))
        )
        if isinstance(value, float) and not math.isfinite(value):
            wrong = True
        if wrong:
            self.problem(
                (*path, "default"),
                f"default {value!r} does not fit type {type_}; use defaultSql for an SQL expression",
            )

    def _primary_key(self, attributes: tuple[model.Attribute, ...], columns: set[str]) -> tuple[str, ...]:
        flagged = tuple(a.name for a in attributes if a.primary_key)
        listed = tuple(self.spec.get("primaryKey", ()))
        for i, column in enumerate(listed):
            if column not in columns:
                self.problem(("primaryKey", i), f"unknown column {column!r}{_did_you_mean(column, columns)}")
        if listed and flagged and listed != flagged:
            self.problem(
                ("primaryKey",),
                f"primaryKey {list(listed)} disagrees with the attributes marked "
                f"primaryKey: true {list(flagged)}; keep one definition",
            )
        pk = listed or flagged
        if pk:
            self._derived(("primaryKey",) if listed else ("attributes",), self.table_name, "pkey")
        return pk

    def _identities(self, columns: set[str], tenant: str | None) -> tuple[model.Identity, ...]:
        built = []
        self._unique_names("identities", "identity")
        for i, raw in enumerate(self.spec.get("identities", ())):
            for j, key in enumerate(raw["keys"]):
                if key not in columns:
                    self.problem(("identities", i, "keys", j), f"unknown column {key!r}{_did_you_mean(key, columns)}")
            index_name = raw.get("indexName") or self._derived(
                ("identities", i, "name"), self.table_name, raw["name"], "index"
            )
            built.append(
                model.Identity(
                    name=raw["name"],
                    keys=_tenant_first(tuple(raw["keys"]), tenant),
                    index_name=index_name,
                    where=raw.get("where"),
                    nulls_distinct=raw.get("nullsDistinct", True),
                    constraint=raw.get("constraint", False),
                    deferrable=_DEFERRABLE[raw.get("deferrable", False)],
                )
            )
            self._check_constraint(("identities", i), raw)
        return tuple(built)

    def _check_constraint(self, path: Path_, raw: dict[str, Any]) -> None:
        """A UNIQUE constraint has no predicate; deferrability is a constraint's, not a bare index's."""
        if raw.get("constraint") and "where" in raw:
            self.problem((*path, "where"), "a UNIQUE constraint cannot be partial; drop where or constraint: true")
        if "deferrable" in raw and not raw.get("constraint"):
            self.problem(
                (*path, "deferrable"), "deferrable needs constraint: true (a bare unique index is never deferred)"
            )

    def _indexes(self, columns: set[str], tenant: str | None) -> tuple[model.Index, ...]:
        built = []
        for i, raw in enumerate(self.spec.get("indexes", ())):
            path: Path_ = ("indexes", i)
            parsed, readable = self._fields(path, raw, columns)
            fields = tuple(f.canonical() for f in parsed)
            for j, name in enumerate(raw.get("include", ())):
                if name not in columns:
                    self.problem((*path, "include", j), f"unknown column {name!r}{_did_you_mean(name, columns)}")
            has_expression = any(f.column is None for f in parsed)
            if has_expression and "name" not in raw and readable:
                self.problem((*path, "fields"), "an index with an expression field needs a name")
            if raw.get("nullsDistinct") is False and not raw.get("unique"):
                self.problem((*path, "nullsDistinct"), "nullsDistinct applies to unique indexes only")
            name = raw.get("name") or (
                ""
                if has_expression
                else self._derived((*path, "fields"), self.table_name, *_columns_of(parsed), "index")
            )
            built.append(
                model.Index(
                    name=name,
                    # btree only: a GIN/GiST index cannot take the uuid tenant column without btree_gin/btree_gist
                    fields=_tenant_first(fields, tenant if raw.get("using", "btree") == "btree" else None),
                    unique=raw.get("unique", False),
                    using=raw.get("using"),
                    where=raw.get("where"),
                    include=tuple(raw.get("include", ())),
                    nulls_distinct=raw.get("nullsDistinct", True),
                    concurrently=raw.get("concurrently", False),
                )
            )
        return tuple(built)

    def _fields(self, path: Path_, raw: dict[str, Any], columns: set[str]) -> tuple[list[indexfield.Field], bool]:
        """Parse an index's fields (see ``indexfield``); a field that cannot be rendered is a located problem.
        Return the fields and whether all of them could be read."""
        parsed = []
        readable = True
        using = raw.get("using", "btree")
        for j, text in enumerate(raw["fields"]):
            try:
                found = indexfield.parse(str(text), columns)
            except indexfield.FieldError as exc:
                self.problem((*path, "fields", j), str(exc))
                found, readable = indexfield.Field(expression=str(text).strip()), False
            type_ = self._types.get(str(found.column))
            if found.opclass and type_ and found.opclass == (indexfield.default_opclass(type_, using) or "",):
                found = replace(found, opclass=None)  # the default: the catalog shows no operator class
            if found.column is not None and found.column not in columns:
                name = found.column
                self.problem((*path, "fields", j), f"unknown column {name!r}{_did_you_mean(name, columns)}")
            if (found.descending or found.nulls) and using != "btree":
                self.problem((*path, "fields", j), f"ordering (DESC, NULLS) needs a btree index, not {raw['using']}")
            parsed.append(found)
        return parsed, readable

    def _statements(self) -> tuple[model.Statement, ...]:
        self._unique_names("statements", "statement")
        return tuple(model.Statement(s["name"], s["up"], s["down"]) for s in self.spec.get("statements", ()))

    def _unique_names(self, key: str, what: str) -> None:
        seen: dict[str, int] = {}
        for i, raw in enumerate(self.spec.get(key, ())):
            if raw["name"] in seen:
                self.problem((key, i, "name"), f"duplicate {what} name {raw['name']!r}")
            seen.setdefault(raw["name"], i)

    def _derived(self, path: Path_, *parts: str) -> str:
        return _derived_name(self.doc, ("spec", *path), parts, self.problems)


def _derived_name(doc: Document, path: Path_, parts: Iterable[str], problems: list[Problem]) -> str:
    """Join ``parts`` into a default name; a name over 63 bytes is an error (PostgreSQL would truncate it)."""
    name = "_".join(parts)
    if len(name.encode()) > MAX_NAME_BYTES:
        problems.append(
            doc.problem(
                path,
                f"the default name {name!r} is longer than {MAX_NAME_BYTES} bytes and "
                "PostgreSQL would truncate it; give a shorter name explicitly",
            )
        )
    return name


def _columns_of(fields: list[indexfield.Field]) -> list[str]:
    """The column names of an index's fields (the default name uses them, not the operator classes)."""
    return [str(f.column) for f in fields]


def _tenant_first(keys: tuple[str, ...], tenant: str | None) -> tuple[str, ...]:
    """Put the tenant column first (attribute multitenancy), as AshPostgres does for identities and indexes."""
    if tenant is None:
        return keys
    return (tenant, *(k for k in keys if k != tenant))


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- References, pass 2 --------------------------------------------------------------------------------------


class _References:
    """Resolve every reference now that all tables are known."""

    def __init__(self, drafts: list[_Draft], invalid: set[str], problems: list[Problem]) -> None:
        self.drafts = drafts
        self.invalid = invalid
        self.problems = problems
        self.by_resource = {d.table.resource: d.table for d in drafts}
        self.by_table = {(d.table.repo, d.table.schema, d.table.name): d.table for d in drafts}

    def resolve(self) -> list[model.Table]:
        tables = []
        for draft in self.drafts:
            attributes = []
            for attribute in draft.table.attributes:
                if attribute.name in draft.references:
                    path, raw = draft.references[attribute.name]
                    ref = self._reference(draft, attribute, path, raw)
                    attribute = replace(attribute, references=ref)
                attributes.append(attribute)
            table = replace(draft.table, attributes=tuple(attributes))
            tables.append(replace(table, foreign_keys=self._foreign_keys(draft, table)))
        return tables

    def _reference(
        self, draft: _Draft, attribute: model.Attribute, path: Path_, raw: dict[str, Any]
    ) -> model.Reference | None:
        def problem(sub: Path_, message: str) -> None:
            self.problems.append(draft.doc.problem((*path, *sub), message))

        source = draft.table
        target = self._target(source, raw, problem)
        if target is None:
            return None
        if target.repo != source.repo:
            problem((), f"{target.key} is in repo {target.repo!r}; a foreign key cannot cross databases")
            return None
        if target.is_tenant and not source.is_tenant:
            problem((), f"global table {source.name!r} cannot reference tenant (context) table {target.name!r}")
            return None
        column = self._column(source, attribute, target, raw, problem)
        if column is None:
            return None
        return model.Reference(
            table=target.name,
            schema=None if target.is_tenant else target.schema,
            column=column,
            name=raw.get("name")
            or _derived_name(draft.doc, path, (source.name, attribute.name, "fkey"), self.problems),
            on_delete=self._action(source, attribute, raw, "onDelete", problem),
            on_update=self._action(source, attribute, raw, "onUpdate", problem),
            deferrable=_DEFERRABLE[raw.get("deferrable", False)],
            match=raw.get("match", "simple"),
            index=raw.get("index", False),
            index_name=(
                _derived_name(draft.doc, (*path, "index"), (source.name, attribute.name, "index"), self.problems)
                if raw.get("index")
                else None
            ),
        )

    def _target(self, source: model.Table, raw: dict[str, Any], problem: Any) -> model.Table | None:
        if ("resource" in raw) == ("table" in raw):
            problem((), "name the target with resource (preferred) or table, exactly one of them")
            return None
        if "schema" in raw and "table" not in raw:
            problem(("schema",), "schema goes with table; a resource already knows its schema")
            return None
        if "resource" in raw:
            found = self.by_resource.get(raw["resource"])
            if found is None and raw["resource"] not in self.invalid:
                problem(
                    ("resource",),
                    f"unknown resource {raw['resource']!r}{_did_you_mean(raw['resource'], self.by_resource)}",
                )
            return found
        schema_name = raw.get("schema")
        candidates = [(source.repo, schema_name or "public", raw["table"])]
        if schema_name is None and source.is_tenant:
            candidates.insert(0, (source.repo, None, raw["table"]))
        for candidate in candidates:
            if candidate in self.by_table:
                return self.by_table[candidate]
        shown = f"{schema_name}.{raw['table']}" if schema_name else raw["table"]
        known = [t for (repo, _, t) in self.by_table if repo == source.repo]
        problem(("table",), f"unknown table {shown!r} in repo {source.repo!r}{_did_you_mean(raw['table'], known)}")
        return None

    def _column(
        self,
        source: model.Table,
        attribute: model.Attribute,
        target: model.Table,
        raw: dict[str, Any],
        problem: Any,
    ) -> str | None:
        if "column" in raw:
            column = str(raw["column"])
        elif len(target.primary_key) == 1:
            column = target.primary_key[0]
        else:
            problem((), f"{target.name!r} has no single-column primary key; name the referenced column")
            return None
        target_column = target.column(column)
        if target_column is None:
            names = [a.name for a in target.attributes]
            problem(("column",), f"unknown column {column!r} in {target.name!r}{_did_you_mean(column, names)}")
            return None
        if not _is_unique(target, column):
            problem(
                ("column",),
                f"{target.name}.{column} is neither the primary key nor a unique identity; "
                f"PostgreSQL needs one of them to reference it{_not_unique_hint(target, (column,))}",
            )
        if _comparable(attribute.type) != _comparable(target_column.type):
            problem((), f"type {attribute.type} does not match {target.name}.{column} ({target_column.type})")
        return column

    def _action(
        self, source: model.Table, attribute: model.Attribute, raw: dict[str, Any], key: str, problem: Any
    ) -> model.Action | None:
        action = _parse_action(raw, key)
        if action is None:
            return None
        for i, column in enumerate(action.columns):
            if source.column(column) is None:
                problem((key, action.kind, i), f"unknown column {column!r}")
        _check_set_null(source, action, action.columns or (attribute.name,), key, problem)
        return action

    # -- table-level (multi-column) foreign keys

    def _foreign_keys(self, draft: _Draft, source: model.Table) -> tuple[model.ForeignKey, ...]:
        built = []
        for i, raw in enumerate(draft.doc.data["spec"].get("foreignKeys", ())):
            foreign_key = self._foreign_key(draft, source, ("spec", "foreignKeys", i), raw)
            if foreign_key is not None:
                built.append(foreign_key)
        return tuple(built)

    def _foreign_key(
        self, draft: _Draft, source: model.Table, path: Path_, raw: dict[str, Any]
    ) -> model.ForeignKey | None:
        def problem(sub: Path_, message: str) -> None:
            self.problems.append(draft.doc.problem((*path, *sub), message))

        def in_references(sub: Path_, message: str) -> None:
            problem(("references", *sub), message)

        columns = tuple(str(c) for c in raw["columns"])
        known = self._local_columns(source, columns, problem)
        target = self._target(source, raw["references"], in_references)
        if target is None:
            return None
        if target.repo != source.repo:
            problem(("references",), f"{target.key} is in repo {target.repo!r}; a foreign key cannot cross databases")
            return None
        if target.is_tenant and not source.is_tenant:
            problem(
                ("references",),
                f"global table {source.name!r} cannot reference tenant (context) table {target.name!r}",
            )
            return None
        ref_columns = self._ref_columns(columns, target, raw["references"], in_references)
        if ref_columns is None or not known:
            return None
        self._check_types(source, columns, target, ref_columns, problem)
        return model.ForeignKey(
            name=raw.get("name") or _derived_name(draft.doc, path, (source.name, *columns, "fkey"), self.problems),
            columns=columns,
            table=target.name,
            schema=None if target.is_tenant else target.schema,
            ref_columns=ref_columns,
            on_delete=self._key_action(source, columns, raw, "onDelete", problem),
            on_update=self._key_action(source, columns, raw, "onUpdate", problem),
            deferrable=_DEFERRABLE[raw.get("deferrable", False)],
            match=raw.get("match", "simple"),
            index=raw.get("index", False),
            index_name=(
                _derived_name(draft.doc, (*path, "index"), (source.name, *columns, "index"), self.problems)
                if raw.get("index")
                else None
            ),
        )

    @staticmethod
    def _local_columns(source: model.Table, columns: tuple[str, ...], problem: Any) -> bool:
        names = [a.name for a in source.attributes]
        for j, column in enumerate(columns):
            if column not in names:
                problem(("columns", j), f"unknown column {column!r}{_did_you_mean(column, names)}")
        return all(c in names for c in columns)

    @staticmethod
    def _ref_columns(
        columns: tuple[str, ...], target: model.Table, raw: dict[str, Any], problem: Any
    ) -> tuple[str, ...] | None:
        """The referenced columns: as written, or the target's primary key; as many as ``columns``, and
        unique in the target (PostgreSQL needs a primary key or unique index on exactly those columns)."""
        ref_columns = tuple(str(c) for c in raw.get("columns", target.primary_key))
        where: Path_ = ("columns",) if "columns" in raw else ()
        if not ref_columns:
            problem((), f"{target.name!r} has no primary key; name the referenced columns")
            return None
        if len(ref_columns) != len(columns):
            shown = "" if "columns" in raw else f" (its primary key {', '.join(ref_columns)})"
            problem(
                where,
                f"{len(columns)} column(s) ({', '.join(columns)}) cannot reference "
                f"{len(ref_columns)} column(s) of {target.name!r}{shown}; give as many on both sides",
            )
            return None
        names = [a.name for a in target.attributes]
        unknown = [(j, c) for j, c in enumerate(ref_columns) if c not in names]
        for j, column in unknown:
            problem(
                (*where, j) if where else (),
                f"unknown column {column!r} in {target.name!r}{_did_you_mean(column, names)}",
            )
        if unknown:
            return None
        if not _is_unique_set(target, ref_columns):
            problem(
                where,
                f"{target.name} ({', '.join(ref_columns)}) is neither the primary key nor a unique identity; "
                "PostgreSQL needs a unique constraint or index on exactly these columns to reference them"
                + _not_unique_hint(target, ref_columns),
            )
            return None
        return ref_columns

    @staticmethod
    def _check_types(
        source: model.Table, columns: tuple[str, ...], target: model.Table, ref_columns: tuple[str, ...], problem: Any
    ) -> None:
        for j, (column, ref_column) in enumerate(zip(columns, ref_columns, strict=True)):
            mine, theirs = source.column(column), target.column(ref_column)
            if mine and theirs and _comparable(mine.type) != _comparable(theirs.type):
                problem(
                    ("columns", j),
                    f"type {mine.type} of {column!r} does not match {target.name}.{ref_column} ({theirs.type})",
                )

    @staticmethod
    def _key_action(
        source: model.Table, columns: tuple[str, ...], raw: dict[str, Any], key: str, problem: Any
    ) -> model.Action | None:
        action = _parse_action(raw, key)
        if action is None:
            return None
        kind = action.kind
        if isinstance(raw[key], dict) and key == "onUpdate":
            problem((key, kind), f"a column list is only allowed with onDelete; write onUpdate: {kind}")
        for i, column in enumerate(action.columns):
            if column not in columns:
                problem(
                    (key, kind, i),
                    f"{kind} column {column!r} is not one of the foreign key's columns ({', '.join(columns)})",
                )
        _check_set_null(source, action, [c for c in action.columns or columns if c in columns], key, problem)
        return action


def _parse_action(raw: dict[str, Any], key: str) -> model.Action | None:
    """``onDelete``/``onUpdate`` as written: an action word, or ``{setNull|setDefault: [columns]}``."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return model.Action(cast(Any, value))
    kind, columns = next(iter(value.items()))
    return model.Action(kind, tuple(columns))


def _check_set_null(source: model.Table, action: model.Action, nulled: Sequence[str], key: str, problem: Any) -> None:
    if action.kind == "setNull":
        for column in nulled:
            found = source.column(column)
            if found is not None and not found.allow_null:
                problem((key,), f"setNull on column {column!r}, which does not allow NULL")


_DEFERRABLE: dict[Any, model.Deferrable] = {
    False: "no",
    True: "immediate",
    "initiallyImmediate": "immediate",
    "initiallyDeferred": "deferred",
}


def _is_unique(table: model.Table, column: str) -> bool:
    return _is_unique_set(table, (column,))


def _is_unique_set(table: model.Table, columns: tuple[str, ...]) -> bool:
    """Is there a primary key, identity or unique index (not partial, not deferrable, not built concurrently
    after the migration) on exactly ``columns``, in any order? That is what PostgreSQL looks for; an index's
    ordering (DESC, NULLS) does not matter, its collation or operator class does (see ``_plain_key_columns``)."""
    wanted = set(columns)
    if set(table.primary_key) == wanted and len(table.primary_key) == len(columns):
        return True
    # a unique index or UNIQUE constraint; PostgreSQL refuses a deferrable one as a foreign key's target
    identities = any(
        set(i.keys) == wanted and len(i.keys) == len(columns) and i.where is None and i.deferrable == "no"
        for i in table.identities
    )
    indexes = any(
        (found := _plain_key_columns(i)) is not None and set(found) == wanted and len(found) == len(columns)
        for i in _unique_index_candidates(table)
    )
    return identities or indexes


def _unique_index_candidates(table: model.Table) -> list[model.Index]:
    # a CONCURRENTLY index is built after the migration that would add the foreign key, so it cannot back one
    return [i for i in table.indexes if i.unique and i.where is None and not i.concurrently]


def _plain_key_columns(index: model.Index) -> tuple[str, ...] | None:
    """The columns of an index whose fields are all columns with at most an ordering; None otherwise (an
    expression, or a collation or operator class that may not give the column type's equality)."""
    found = []
    for text in index.fields:
        try:
            field = indexfield.parse(text)
        except indexfield.FieldError:
            return None
        if field.column is None or field.collation or field.opclass:
            return None
        found.append(field.column)
    return tuple(found)


def _not_unique_hint(table: model.Table, columns: tuple[str, ...]) -> str:
    """Why a unique index on these columns does not count: it has a collation or an operator class."""
    for index in _unique_index_candidates(table):
        named = [indexfield.column_of(f) for f in index.fields]
        if set(named) == set(columns) and len(named) == len(columns) and _plain_key_columns(index) is None:
            return (
                f" (unique index {index.name!r} is on these columns but with a collation or operator class, "
                "which a foreign key cannot rely on; add an identity on the plain columns)"
            )
    return ""


def _comparable(type_: str) -> str:
    base = pgtypes.base_type(type_)
    return _SERIAL.get(base, base) + ("[]" if type_.endswith("[]") else "")


# -- Whole-config checks -------------------------------------------------------------------------------------


def _merge_duplicates(tables: list[model.Table], drafts: list[_Draft], problems: list[Problem]) -> list[model.Table]:
    """Keep one table per (repo, schema, name): resources that agree are merged, others are an error."""
    docs = {d.table.resource: d.doc for d in drafts}
    kept: dict[tuple[str, str], model.Table] = {}
    for table in tables:
        first = kept.get((table.repo, table.key))
        if first is None:
            kept[(table.repo, table.key)] = table
        elif first.canonical() != table.canonical():
            problems.append(_conflict(table, docs[table.resource], first, docs[first.resource]))
    return list(kept.values())


def _conflict(table: model.Table, doc: Document, first: model.Table, first_doc: Document) -> Problem:
    """Report ``table`` disagreeing with the ``first`` resource on it, at the first part that differs."""
    intro = f"table {table.key} is also defined by resource {first.resource!r}"
    difference = conflict.explain(table, doc, first, first_doc)
    if difference is None:
        return doc.problem(
            ("spec", "table"), f"{intro} ({first.source}), differently; two resources on one table must agree"
        )
    there = f"{first_doc.display}:{first_doc.locate(difference.path_there)[0]}"
    return doc.problem(
        conflict.written(doc, difference.path_here),
        f"{intro}, differently: {difference.describe(there)}; two resources on one table must agree",
    )


def _check_names(tables: list[model.Table], drafts: list[_Draft], problems: list[Problem]) -> None:
    """Relation names (tables, indexes) must be unique per schema; constraint names per table."""
    docs = {d.table.resource: d.doc for d in drafts}
    relations: dict[tuple[str, str | None, str], str] = {
        (t.repo, t.schema, t.name): f"table {t.name!r}" for t in tables
    }
    public = {(t.repo, t.name) for t in tables if t.schema == "public"}
    for table in tables:
        doc = docs[table.resource]
        if table.is_tenant and (table.repo, table.name) in public:
            problems.append(
                doc.problem(
                    ("spec", "table"),
                    f"tenant table {table.name!r} has the name of global table "
                    f"public.{table.name}; tenant migrations run with search_path "
                    "<tenant>, public, so the names must differ",
                )
            )
        constraints: set[str] = set()
        own: set[tuple[str, str]] = set()
        for name, what, path, is_relation in _names(table, doc):
            if not name:  # an unnamed expression index: already reported
                continue
            if is_relation:
                owner = relations.setdefault((table.repo, table.schema, name), f"{what} of table {table.name!r}")
                if (owner.startswith("table") and name == table.name) or owner != f"{what} of table {table.name!r}":
                    problems.append(doc.problem(path, f"name {name!r} is already used by {owner}"))
                elif (name, "relation") in own:
                    problems.append(doc.problem(path, f"name {name!r} is used twice in table {table.name!r}"))
                own.add((name, "relation"))
            elif name in constraints:
                problems.append(doc.problem(path, f"constraint name {name!r} is used twice in {table.name!r}"))
            else:
                constraints.add(name)


def _names(table: model.Table, doc: Document) -> list[tuple[str, str, Path_, bool]]:
    """Return (name, what, where, is_relation) for every index and constraint the table creates."""
    spec = doc.data["spec"]
    column_index = {raw["name"]: i for i, raw in reversed(list(enumerate(spec["attributes"])))}
    names: list[tuple[str, str, Path_, bool]] = []
    if table.primary_key:
        names.append((f"{table.name}_pkey", "primary key", ("spec", "table"), True))
        names.append((f"{table.name}_pkey", "primary key", ("spec", "table"), False))
    for i, identity in enumerate(table.identities):
        names.append((identity.index_name, "identity index", ("spec", "identities", i), True))
    for i, index in enumerate(table.indexes):
        names.append((index.name, "index", ("spec", "indexes", i), True))
    for attribute in table.attributes:
        ref = attribute.references
        if ref is None:
            continue
        path: Path_ = ("spec", "attributes", column_index[attribute.name], "references")
        names.append((ref.name, "foreign key", path, False))
        if ref.index_name:
            names.append((ref.index_name, "foreign-key index", (*path, "index"), True))
    for i, check in enumerate(table.check_constraints):
        names.append((check.name, "check constraint", ("spec", "checkConstraints", i, "name"), False))
    names += _foreign_key_names(table, doc)
    return names


def _foreign_key_names(table: model.Table, doc: Document) -> list[tuple[str, str, Path_, bool]]:
    """The names of table-level foreign keys and their indexes, located at their entries."""
    positions = {
        (fk.get("name"), tuple(fk["columns"])): i for i, fk in enumerate(doc.data["spec"].get("foreignKeys", ()))
    }
    names: list[tuple[str, str, Path_, bool]] = []
    for foreign_key in table.foreign_keys:
        i = positions.get((foreign_key.name, foreign_key.columns), positions.get((None, foreign_key.columns), 0))
        path: Path_ = ("spec", "foreignKeys", i)
        names.append((foreign_key.name, "foreign key", path, False))
        if foreign_key.index_name:
            names.append((foreign_key.index_name, "foreign-key index", (*path, "index"), True))
    return names
