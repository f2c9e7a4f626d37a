"""Hostile or broken files are refused quickly, with a location, and nothing runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cnnspec.spec.diagnostics import SpecError
from cnnspec.spec.marks import MarkedDict, MarkedList, load_yaml


def refusal(text: str | bytes) -> str:
    with pytest.raises(SpecError) as info:
        load_yaml(text, "x.yaml")
    (diagnostic,) = info.value.diagnostics
    return f"{diagnostic.location.line}:{diagnostic.location.col}: {diagnostic.message}"


def test_locations_of_keys_values_and_items() -> None:
    data = load_yaml("a: 1\nlist:\n  - {b: 2}\n  - c\n", "x.yaml")
    assert isinstance(data, MarkedDict)
    assert (data.key_locations["list"].line, data.value_locations["a"].col) == (2, 4)
    items = data["list"]
    assert isinstance(items, MarkedList)
    assert [(loc.line, loc.col) for loc in items.item_locations] == [(3, 5), (4, 5)]
    assert items[0].value_locations["b"].col == 9


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'name: !!python/object/apply:os.system ["touch {marker}"]\n'
    assert refusal(text) == "1:7: unsupported YAML tag '!!python/object/apply:os.system'; specs hold plain data only"
    assert not marker.exists()
    assert "python/name" in refusal("x: !!python/name:os.system\n")


def test_alias_bomb_is_refused_fast() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.perf_counter()
    message = refusal("\n".join(lines) + "\n")
    assert "alias bomb" in message
    assert time.perf_counter() - start < 5  # a generous bound: expanding it would take hours


def test_a_huge_file_without_aliases_is_not_called_an_alias_bomb() -> None:
    from cnnspec.spec.marks import MAX_EXPANDED_NODES

    text = "".join(f"k{i}: {i}\n" for i in range(MAX_EXPANDED_NODES // 2 + 1))
    assert refusal(text).endswith(f"YAML has more than {MAX_EXPANDED_NODES} nodes; refusing to load")


def test_aliases_and_merge_keys_that_stay_small_work() -> None:
    data = load_yaml("base: &b {kernel: 3, padding: 1}\nconv: {<<: *b, filters: 8}\n", "x.yaml")
    assert data["conv"] == {"kernel": 3, "padding": 1, "filters": 8}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1:1: file is empty"),
        ("# only a comment\n", "1:1: file is empty"),
        (b"\x7fELF\x02\x01\x00\x00", "1:1: file is binary (contains NUL bytes), not YAML"),
        (b"name: \xff\xfe\n", "1:1: file is not UTF-8 text"),
        ("name: x\n  bad: [\n", "2:6: invalid YAML: mapping values are not allowed"),
        ("a: 1\na: 2\n", "2:1: duplicate key 'a' (first given at line 1)"),
        ("when: 2024-01-01\n", "1:7: unsupported YAML tag '!!timestamp'"),
        ("x: !custom {}\n", "1:4: unsupported YAML tag '!custom'"),
        ("a: *nowhere\n", "1:4: alias '*nowhere' names no anchor"),
        ("a: 1\n---\nb: 2\n", "2:1: expected one YAML document"),
        ({1: 2}.__class__.__name__ + ": {[1]: 2}\n", "1:8: mapping keys must be plain scalars"),
        ("a: " + "[" * 5000 + "]" * 5000, "1:103: YAML is nested too deeply (more than 100 levels)"),
    ],
)
def test_broken_files(text: str | bytes, expected: str) -> None:
    assert refusal(text).startswith(expected)


def test_documents_that_are_not_a_mapping(spec_errors: object) -> None:
    from cnnspec import parse_spec

    for text, kind in (("- a\n", "a list"), ("42\n", "a int scalar")):
        with pytest.raises(SpecError, match=f"a spec must be a mapping with 'name', 'input' and 'layers', got {kind}"):
            parse_spec(text, "x.yaml")


def test_hostile_nesting_cannot_crash_the_process(tmp_path: Path) -> None:
    """libyaml's C composer segfaults on this; cnnspec must answer with exit 1."""
    import subprocess
    import sys

    (tmp_path / "deep.yaml").write_text("a: " + "[" * 200_000 + "]" * 200_000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "check", "deep.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.startswith("deep.yaml:1:103: error: YAML is nested too deeply")


def test_pure_python_parser_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libyaml (a PyYAML built without it), the same values and the same marks."""
    import yaml

    import cnnspec.spec.marks as marks
    from cnnspec.graph.load import zoo_path

    for name in ("googlenet", "resnet50", "alexnet"):
        text = zoo_path(name).read_text()
        fast = load_yaml(text, "x.yaml")
        with monkeypatch.context() as patch:
            patch.setattr(marks, "_fast_parser", lambda: None)
            slow = load_yaml(text, "x.yaml")
        assert fast == slow == yaml.safe_load(text)
        assert fast["layers"].item_locations == slow["layers"].item_locations


def _nested(depth: int, style: str) -> str:
    """A document whose deepest value sits inside `depth` collections (the top mapping included)."""
    if style == "flow":
        return "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
    return "a:\n" + "".join("  " * level + "-\n" for level in range(1, depth - 1)) + "  " * (depth - 1) + "- x\n"


class _StricterLibyaml:
    """A stand-in for a libyaml release with limits and wording of its own: it refuses any
    document nested more than 5 levels deep, as soon as its scanner sees the level."""

    def __init__(self, text: str) -> None:
        import yaml

        self._events = yaml.SafeLoader(text)
        self._depth = 0

    def _count(self, event: object) -> object:
        import yaml

        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._depth += 1
            if self._depth > 5:
                raise yaml.MarkedYAMLError(problem="this library's own limit", problem_mark=event.start_mark)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._depth -= 1
        return event

    def get_event(self) -> object:
        return self._count(self._events.get_event())

    def check_event(self, *kinds: type) -> bool:
        return bool(self._events.check_event(*kinds))

    def peek_event(self) -> object:
        return self._events.peek_event()

    def dispose(self) -> None:
        self._events.dispose()


@pytest.mark.parametrize("parser", ["libyaml", "pure-python", "stricter-libyaml"])
@pytest.mark.parametrize("style", ["flow", "block"])
def test_the_depth_limit_is_cnnspecs_whatever_the_parser(parser: str, style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 levels load and 101 are refused with cnnspec's message at the 101st opening, with
    libyaml, without it, and with a libyaml whose own limit is lower than cnnspec's."""
    import cnnspec.spec.marks as marks

    if parser == "pure-python":
        monkeypatch.setattr(marks, "_fast_parser", lambda: None)
    elif parser == "stricter-libyaml":
        monkeypatch.setattr(marks, "_fast_parser", lambda: _StricterLibyaml)

    data = load_yaml(_nested(marks.MAX_DEPTH, style), "x.yaml")
    inner = data["a"]
    for _ in range(marks.MAX_DEPTH - 2):
        (inner,) = inner
    assert inner == ([] if style == "flow" else ["x"])

    expected_place = "1:103" if style == "flow" else f"{marks.MAX_DEPTH + 1}:{2 * marks.MAX_DEPTH + 1}"
    assert refusal(_nested(marks.MAX_DEPTH + 1, style)) == (
        f"{expected_place}: YAML is nested too deeply (more than {marks.MAX_DEPTH} levels)"
    )


def test_a_libyaml_refusal_of_a_valid_file_is_not_final(monkeypatch: pytest.MonkeyPatch) -> None:
    """What libyaml alone refuses (its limits, its bugs) is read again by the reference parser."""
    import cnnspec.spec.marks as marks

    monkeypatch.setattr(marks, "_fast_parser", lambda: _StricterLibyaml)
    assert load_yaml(_nested(8, "flow"), "x.yaml") == {"a": [[[[[[[]]]]]]]}
    assert refusal("a: [1, 2\nb: 3\n").startswith("2:2: invalid YAML:")
