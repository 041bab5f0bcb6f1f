"""Put operations in an order PostgreSQL accepts (``online`` then splits them into migrations).

Two steps, as Django's autodetector does: a fixed phase per operation type (drop foreign keys first, then
statements being removed, indexes and checks, primary keys; renames; creates and column changes; drops of
columns and tables; then new keys, indexes, checks and foreign keys last), then a stable topological sort
inside the phases where tables depend on each other: a referenced table is created before the tables that
reference it and dropped after them. Because every foreign key is added after every table exists, tables that
reference each other in a cycle are fine. The sort is stable (ties keep emission order), so output is
deterministic.

The down migration needs no ordering of its own: it is the ordered up list reversed, each operation reversed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from orchestrator.generator import operations as ops

T = TypeVar("T")


def stable_toposort(
    items: Sequence[T], depends_on: Callable[[T], set[Hashable]], key: Callable[[T], Hashable]
) -> list[T]:
    """Kahn's algorithm; among items that are ready, the earliest in ``items`` goes first.

    ``depends_on(item)`` names keys of items that must come before ``item``; keys that name no item in the
    list (existing tables) and an item's own key are ignored. A cycle keeps the remaining items in input order.
    """
    keys = {key(item) for item in items}
    waiting = {i: {d for d in depends_on(item) if d in keys and d != key(item)} for i, item in enumerate(items)}
    done: set[Hashable] = set()
    result: list[T] = []
    while waiting:
        ready = next((i for i in sorted(waiting) if waiting[i] <= done), min(waiting))
        result.append(items[ready])
        done.add(key(items[ready]))
        del waiting[ready]
    return result


def _references(op: ops.Operation) -> set[Hashable]:
    table = getattr(op, "definition", None)
    if table is None:
        return set()
    targets = {str(ops.Ref(a.references.schema, a.references.table)) for a in table.attributes if a.references}
    return targets | {str(ops.Ref(f.schema, f.table)) for f in table.foreign_keys}


def order(operations: Sequence[ops.Operation]) -> list[ops.Operation]:
    """Return ``operations`` in phase order, tables topologically sorted where they depend on each other."""
    taken = _names_taken(operations)
    by_phase: dict[float, list[ops.Operation]] = {}
    for op in operations:
        early = isinstance(op, ops.DropTable) and op.table in taken
        by_phase.setdefault(_BEFORE_RENAMES if early else ops.phase(op), []).append(op)
    result: list[ops.Operation] = []
    for phase in sorted(by_phase):
        group = by_phase[phase]
        if any(isinstance(op, ops.CreateTable | ops.DropTable) for op in group):
            group = stable_toposort(group, _references, lambda op: op.table)
            if isinstance(group[0], ops.DropTable):
                group.reverse()  # referencing tables go first
        result += group
    return result


_BEFORE_RENAMES = ops.RenameTable.PHASE - 0.5
"""Where a dropped table goes whose name a renamed or moved table takes: before the rename, or it collides."""


def _names_taken(operations: Sequence[ops.Operation]) -> set[str]:
    """The tables names renames and moves give to tables (as ``Operation.table`` spells them)."""
    names = {str(ops.Ref(op.ref.schema, op.new_name)) for op in operations if isinstance(op, ops.RenameTable)}
    return names | {str(ops.Ref(op.new_schema, op.ref.name)) for op in operations if isinstance(op, ops.MoveTable)}


def down(operations: Sequence[ops.Operation]) -> list[ops.Operation]:
    """The down migration: the up list reversed, each operation reversed (irreversible ones dropped)."""
    return [reverse for op in reversed(operations) if (reverse := op.reverse()) is not None]
