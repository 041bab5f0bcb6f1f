"""The YAML loader: files found, documents split, every value located, hostile YAML refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.manifests import loader
from tests.conftest import write


def test_finds_yaml_recursively_sorted_and_skips_hidden(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", "a: 1\n")
    write(tmp_path / "sub" / "deeper" / "a.yml", "a: 1\n")
    write(tmp_path / "notes.txt", "a: 1\n")
    write(tmp_path / ".git" / "config.yaml", "a: 1\n")
    write(tmp_path / ".editor.yaml", "a: 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in loader.find_files(tmp_path)]
    assert found == ["b.yaml", "sub/deeper/a.yml"]


def test_configmap_layout_reads_each_file_once(tmp_path: Path) -> None:
    """A mounted ConfigMap: files are symlinks into ..data, which points at a timestamped directory."""
    write(tmp_path / "..2026_11_27_10_00_00.1" / "app.yaml", "a: 1\n")
    os.symlink("..2026_11_27_10_00_00.1", tmp_path / "..data")
    os.symlink("..data/app.yaml", tmp_path / "app.yaml")
    assert [p.name for p in loader.find_files(tmp_path)] == ["app.yaml"]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "a.yaml", "a: 1\n")
    os.symlink("..", tmp_path / "sub" / "loop")
    assert [p.name for p in loader.find_files(tmp_path)] == ["a.yaml"]


def test_several_documents_and_empty_ones(tmp_path: Path) -> None:
    docs, problems = loader.load_text("a: 1\n---\n---\nb: [x, y]\n...\n")
    assert problems == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": ["x", "y"]}]


def test_every_key_and_value_is_located() -> None:
    text = "spec:\n  attributes:\n    - name: id\n      type: uuid\n    - {name: title, type: text}\n"
    (doc,), _ = loader.load_text(text)
    assert doc.locate(("spec", "attributes", 0, "type")) == (4, 13)
    assert doc.locate(("spec", "attributes", 1, "type")) == (5, 27)
    assert doc.locate(("spec", "attributes", 1, "type"), key=True) == (5, 21)
    # a missing field is located at its nearest written ancestor
    assert doc.locate(("spec", "attributes", 1, "references", "column")) == (5, 7)
    assert doc.problem(("spec", "attributes", 0, "type"), "bad").field == "spec.attributes[0].type"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a' (first given on line 1)"),
        (
            "a: !!python/name:os.system x\n",
            "YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed",
        ),
        ("a: !!binary aGVsbG8=\n", "YAML tag 'tag:yaml.org,2002:binary' is not allowed"),
        ("a: !!set {x}\n", "YAML tag 'tag:yaml.org,2002:set' is not allowed"),
        ("x: &x {a: 1}\ny:\n  <<: *x\n", "YAML merge keys (<<) are not supported"),
        ("? [a, b]\n: c\n", "a mapping key must be a plain string"),
        ("a: [1, 2\n", "YAML syntax error"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nesting deeper than 64 levels"),
        ("n: " + "9" * 5000 + "\n", "cannot read scalar"),
    ],
)
def test_hostile_yaml_is_refused_with_a_location(text: str, message: str) -> None:
    _, problems = loader.load_text(text, "x.yaml")
    assert problems, text[:40]
    assert message in problems[0].message
    assert problems[0].file == "x.yaml" and problems[0].line >= 1


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    _, problems = loader.load_text("\n".join(lines) + "\n")
    assert [p.message for p in problems] == [
        "document expands to more than 200000 values (aliases are counted each time they are used)"
    ]


def test_small_aliases_are_fine() -> None:
    (doc,), problems = loader.load_text("base: &b {repo: app}\nother: *b\n")
    assert problems == [] and doc.data["other"] == {"repo": "app"}


def test_dates_stay_text_and_scalars_resolve() -> None:
    (doc,), _ = loader.load_text("d: 2024-01-01\nn: 3\nf: 1.5\nb: true\nz: null\ns: '3'\n")
    assert doc.data == {"d": "2024-01-01", "n": 3, "f": 1.5, "b": True, "z": None, "s": "3"}


def test_non_utf8_and_oversized_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    _, problems = loader.load_file(bad, tmp_path)
    assert [str(p) for p in problems] == ["bad.yaml:2:7: file is not valid UTF-8"]
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * (loader.MAX_FILE_BYTES + 1) + b"\n")
    _, problems = loader.load_file(big, tmp_path)
    assert "manifests are limited to 4 MiB" in problems[0].message


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    docs, problems = loader.load_file(path, tmp_path)
    assert problems == [] and docs[0].data == {"a": 1}
