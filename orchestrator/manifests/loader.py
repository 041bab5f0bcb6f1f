"""Read manifest YAML into plain data, remembering where every key and value came from.

We build Python values from PyYAML's *event* stream instead of using ``safe_load``, for four reasons:

* every value is recorded under its JSON path with its line and column, so any later check (JSON Schema or
  semantic) can point at ``file:line:column``;
* a duplicate key is an error, not "the last one wins";
* only the tags of YAML's core schema are accepted: no ``!!python/...``, no custom tags, no merge keys;
* the work a hostile file can cause is bounded: file size, nesting depth (libyaml's composer recurses and
  crashes on very deep documents, the event parser does not) and the number of values a document expands to
  through aliases (the "billion laughs" bomb).

libyaml (``CParser``) is used when PyYAML was built with it; the pure-Python parser behaves the same.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml import events, nodes

from orchestrator.errors import Problem, display_path

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Manifests are hand-written; a file this large is a mistake or an attack."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences; real manifests need about 6."""
MAX_VALUES = 200_000
"""Values one document may expand to, aliases counted each time they are used."""

Path_ = tuple[str | int, ...]
Mark = tuple[int, int]

_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_PLAIN: dict[str, Any] = {}
"""Plain scalars already constructed, by their text (shared by all files: the values are immutable)."""
_SKIP = "\0skip"  # the key of a value that is dropped (its key was not a string; already reported)
_Parser: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """One YAML document: its data and where each part of it was written."""

    file: Path
    display: str
    index: int
    data: Any
    marks: dict[Path_, Mark] = field(default_factory=dict)
    key_marks: dict[Path_, Mark] = field(default_factory=dict)

    def locate(self, path: Path_, *, key: bool = False) -> Mark:
        """Return (line, column) of ``path``: its key's position when ``key``, else its value's.

        A path that was never written (a missing field, a value reached through an alias) is located at the
        nearest ancestor that was.
        """
        for depth in range(len(path), -1, -1):
            prefix = path[:depth]
            found = (key and self.key_marks.get(prefix)) or self.marks.get(prefix)
            if found:
                return found
        return (1, 1)

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        line, column = self.locate(path, key=key)
        return Problem(self.display, line, column, format_path(path), message)


def format_path(path: Path_) -> str:
    """Render a JSON path as users write it: ``spec.attributes[2].type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if part.isprintable() else repr(part)[1:-1]  # a key with NUL or escapes stays one line
            out += f".{shown}" if out else shown
    return out if len(out) <= 120 else out[:117] + "..."


def find_files(config_dir: Path) -> list[Path]:
    """Return every ``*.yaml``/``*.yml`` below ``config_dir``, sorted, following symlinks.

    Names starting with ``.`` are skipped: that covers a ConfigMap's ``..data`` and ``..<timestamp>``
    directories (the visible names are symlinks into them, so each file is read once) and ``.git``.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for current, dirs, files in os.walk(config_dir, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(current, name) for name in files if not name.startswith(".") and name.endswith((".yaml", ".yml"))
        )
    return sorted(found)


def load_file(path: Path, base: Path | None = None) -> tuple[list[Document], list[Problem]]:
    """Parse every document of one file; return the documents and the problems found."""
    display = display_path(path, base)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [Problem(display, 1, 1, "", f"cannot read file: {exc.strerror}")]
    if len(raw) > MAX_FILE_BYTES:
        size = f"{len(raw) // 1024} KiB"
        return [], [Problem(display, 1, 1, "", f"file is {size}; manifests are limited to 4 MiB")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return [], [Problem(display, line, column, "", "file is not valid UTF-8")]
    return _Builder(path, display).run(text)


def load_text(text: str, name: str = "<text>") -> tuple[list[Document], list[Problem]]:
    """Parse YAML given as a string (tests, stdin)."""
    return _Builder(Path(name), name).run(text)


class _Abort(Exception):
    """Stop reading a file: what follows cannot be trusted."""


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    path: Path_
    anchor: str | None
    size: int = 1
    key: str | None = None
    key_mark: Mark = (1, 1)


class _Builder:
    """Turn an event stream into ``Document``s; one instance per file."""

    def __init__(self, path: Path, display: str) -> None:
        self.path = path
        self.display = display
        self.documents: list[Document] = []
        self.problems: list[Problem] = []
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.doc = Document(path, display, 0, None)
        self.total = 0
        self.lines = _Lines("")

    def run(self, text: str) -> tuple[list[Document], list[Problem]]:
        self.lines = _Lines(text)
        try:
            for event in self._events(text):
                self._handle(event)
        except _Abort:
            pass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = self.lines.position(mark) if mark else (1, 1)
            last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
            if where[0] > max(last_line, 1):  # "unexpected end of file": point at the last line
                where = (max(last_line, 1), 1)
            message = f"YAML syntax error: {exc.problem or exc.context}"
            if exc.problem and exc.context and exc.context_mark:
                message += f" ({exc.context} that starts at line {self.lines.position(exc.context_mark)[0]})"
            self.problems.append(Problem(self.display, *where, "", message))
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.display, 1, 1, "", f"YAML error: {exc}"))
        return self.documents, self.problems

    def _events(self, text: str) -> Iterator[events.Event]:
        parser = _Parser(text)
        try:
            while parser.check_event():
                yield parser.get_event()
        finally:
            parser.dispose()

    # -- event handlers -------------------------------------------------------------------------------------

    def _handle(self, event: events.Event) -> None:
        if type(event) is events.ScalarEvent:  # the common case first
            self._add(self._scalar(event), self._mark(event), 1, event.anchor)
        elif isinstance(event, events.DocumentStartEvent):
            self.stack = []
            self.anchors = {}
            self.doc = Document(self.path, self.display, len(self.documents), None)
            self.total = 0
        elif isinstance(event, events.DocumentEndEvent):
            if self.doc.data is not None:
                self.documents.append(self.doc)
        elif isinstance(event, events.MappingStartEvent | events.SequenceStartEvent):
            self._open(event)
        elif isinstance(event, events.MappingEndEvent | events.SequenceEndEvent):
            frame = self.stack.pop()
            self._add(frame.container, self.doc.marks.get(frame.path), frame.size, frame.anchor)
        elif isinstance(event, events.AliasEvent):
            if event.anchor not in self.anchors:
                self._fail(event, f"unknown alias *{event.anchor} (no &{event.anchor} before it in this document)")
            value, size = self.anchors[str(event.anchor)]
            self._add(value, self._mark(event), size, None)

    def _open(self, event: events.CollectionStartEvent) -> None:
        is_map = isinstance(event, events.MappingStartEvent)
        self._check_tag(event, _CORE + ("map" if is_map else "seq"))
        if len(self.stack) >= MAX_DEPTH:
            self._fail(event, f"nesting deeper than {MAX_DEPTH} levels")
        path = self._child_path(event)
        self.doc.marks[path] = self._mark(event)
        container: dict[str, Any] | list[Any] = {} if is_map else []
        self.stack.append(_Frame(container, path, event.anchor))

    def _child_path(self, event: events.Event) -> Path_:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        if top.key is None:
            self._fail(event, "a mapping key must be a plain string, not a mapping or a sequence")
        return (*top.path, str(top.key))

    def _scalar(self, event: events.ScalarEvent) -> Any:
        if event.tag is None and event.implicit[0]:  # a plain scalar: most of a manifest, and very repetitive
            key = event.value
            if key not in _PLAIN:
                if len(_PLAIN) > 50_000:
                    _PLAIN.clear()
                _PLAIN[key] = self._construct(event)
            return _PLAIN[key]
        return self._construct(event)

    def _construct(self, event: events.ScalarEvent) -> Any:
        tag = event.tag
        if tag in (None, "!"):
            tag = self.resolver.resolve(nodes.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _CORE + "merge":
            self._fail(event, "YAML merge keys (<<) are not supported; write the fields out")
        if tag == _CORE + "timestamp":
            return event.value  # dates stay text: no manifest field is a date
        self._check_tag(event, str(tag))
        try:
            return self.constructor.construct_object(nodes.ScalarNode(tag, event.value))
        except (ValueError, yaml.YAMLError) as exc:
            self._fail(event, f"cannot read scalar {event.value[:40]!r}: {exc}")
        return None  # unreachable: _fail raises

    def _check_tag(self, event: events.NodeEvent, default: str) -> None:
        tag = getattr(event, "tag", None)
        if tag in (None, "!"):
            return
        collection = default.endswith(("map", "seq"))
        if tag not in _ALLOWED_TAGS or (collection and tag != default):
            self._fail(event, f"YAML tag {tag!r} is not allowed in manifests")

    def _add(self, value: Any, mark: Mark | None, size: int, anchor: str | None) -> None:
        self.total += size
        if self.total > MAX_VALUES:
            where = mark or self.doc.locate(self.stack[-1].path if self.stack else ())
            self.problems.append(
                Problem(
                    self.display,
                    *where,
                    "",
                    f"document expands to more than {MAX_VALUES} values (aliases are counted each time they are used)",
                )
            )
            raise _Abort
        if anchor:
            self.anchors[anchor] = (value, size)
        if not self.stack:
            self.doc.data = value
            return
        top = self.stack[-1]
        top.size += size
        if isinstance(top.container, list):
            if mark:
                self.doc.marks[(*top.path, len(top.container))] = mark
            top.container.append(value)
        elif top.key is None:
            self._take_key(top, value, mark)
        elif top.key is _SKIP:
            top.key = None
        else:
            path = (*top.path, top.key)
            self.doc.key_marks[path] = top.key_mark
            if mark:
                self.doc.marks[path] = mark
            top.container[top.key] = value
            top.key = None

    def _take_key(self, top: _Frame, value: Any, mark: Mark | None) -> None:
        where = mark or (1, 1)
        if not isinstance(value, str):
            self.problems.append(
                Problem(self.display, *where, _fmt(top.path), f"mapping key {value!r} must be a string")
            )
            top.key, top.key_mark = _SKIP, where
            return
        assert isinstance(top.container, dict)
        if value in top.container:
            first = self.doc.key_marks.get((*top.path, value), where)
            self.problems.append(
                Problem(
                    self.display,
                    *where,
                    _fmt((*top.path, value)),
                    f"duplicate key {value!r} (first given on line {first[0]})",
                )
            )
        top.key, top.key_mark = value, where

    def _mark(self, event: events.Event) -> Mark:
        mark = event.start_mark
        return self.lines.position(mark) if mark is not None else (1, 1)

    def _fail(self, event: events.Event, message: str) -> None:
        self.problems.append(Problem(self.display, *self._mark(event), _fmt(self._path_here()), message))
        raise _Abort

    def _path_here(self) -> Path_:
        if not self.stack:
            return ()
        top = self.stack[-1]
        return (*top.path, top.key) if isinstance(top.container, dict) and top.key else top.path


class _Lines:
    """Line and column as editors, grep and git count them (lines end at ``\n``): YAML also breaks lines at
    NEL, LS, PS and a lone CR, which would point past the file's last line. Marks count characters; the line
    starts are found once, so a position costs a bisection, not a scan."""

    def __init__(self, text: str) -> None:
        self.length = len(text)
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def position(self, mark: Any) -> Mark:
        index = min(max(int(mark.index), 0), self.length)
        line = bisect.bisect_right(self.starts, index)
        return (line, index - self.starts[line - 1] + 1)


def _fmt(path: Path_) -> str:
    return format_path(path)
