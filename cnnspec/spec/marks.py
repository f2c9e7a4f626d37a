"""Safe YAML loading that remembers where every mapping, key and value came from.

One pass over the parser's events with an explicit stack, building plain dicts, lists and
scalars, never objects. What a spec compiler needs beyond ``yaml.safe_load``:

- every mapping and sequence remembers its line and column and those of its keys and
  items, so errors point into the file;
- only plain tags (str, int, float, bool, null, map, seq, and ``<<`` merge keys):
  ``!!python/...`` and everything else is refused, never constructed;
- duplicate keys are errors rather than silently overwritten;
- alias expansion and nesting depth are bounded, so a "billion laughs" document or a
  million nested brackets is refused at once instead of eating memory or the stack.

libyaml's C parser is the fast path when PyYAML has it (several times faster, same values
and marks). It is never the judge of a refusal: libyaml has limits and wording of its own
that change between PyYAML releases (6.0.4's bundled libyaml stops at 1000 nested levels
while its scanner reads ahead, before cnnspec's limit of 100 is met in event order). When it
refuses a file, PyYAML's pure-Python parser reads the file again and has the final word: it
has no limits of its own, streams its events (reading ahead at most 1024 characters of one
line), and so every refusal is cnnspec's own rule or the reference parser's message, the
same on every PyYAML 6.x, with or without libyaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from cnnspec.spec.diagnostics import Diagnostic, Location, SpecError

MAX_BYTES = 8 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000  # counting every alias as a copy of what it names
MAX_DEPTH = 100

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + name for name in ("str", "int", "float", "bool", "null")}
_MERGE_TAG = _TAG + "merge"


class MarkedDict(dict[Any, Any]):
    """A mapping from YAML with the location of itself, of each key and of each value."""

    location: Location
    key_locations: dict[Any, Location]
    value_locations: dict[Any, Location]


class MarkedList(list[Any]):
    """A sequence from YAML with the location of itself and of each item."""

    location: Location
    item_locations: list[Location]


def marked_dict(location: Location) -> MarkedDict:
    result = MarkedDict()
    result.location = location
    result.key_locations = {}
    result.value_locations = {}
    return result


def marked_list(location: Location) -> MarkedList:
    result = MarkedList()
    result.location = location
    result.item_locations = []
    return result


def location_of(value: object, fallback: Location) -> Location:
    return getattr(value, "location", fallback)


def load_yaml(text: str | bytes, path: str) -> Any:
    """Parse one YAML document into dicts/lists that carry locations.

    Raises SpecError (never a PyYAML exception) for anything that is not plain,
    well-formed YAML of a sane size.
    """
    top = Location(path, 1, 1)
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SpecError([Diagnostic(top, f"file is {len(text)} bytes; specs are limited to {MAX_BYTES}")])
        if b"\x00" in text:
            raise SpecError([Diagnostic(top, "file is binary (contains NUL bytes), not YAML")])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError([Diagnostic(top, f"file is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    fast = _fast_parser()
    if fast is not None:
        try:
            return _build(fast(text), path)
        except yaml.YAMLError:
            pass  # libyaml's own refusal: the reference parser below gives the verdict
    try:
        return _build(_reference_parser(text), path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else top
        problem = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in problem:
            problem = "a tab; tabs cannot indent YAML: use spaces"
        raise SpecError([Diagnostic(where, f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(top, f"invalid YAML: {exc}")]) from None


def _build(parser: Any, path: str) -> Any:
    try:
        return _Builder(parser, path).document()
    finally:
        parser.dispose()


def _fast_parser() -> Any:
    """libyaml's event parser when PyYAML was built with it, else None."""
    try:
        from yaml._yaml import CParser
    except ImportError:
        return None
    return CParser


def _reference_parser(text: str) -> Any:
    """PyYAML's pure-Python parser: no limits of its own; only its event methods are used."""
    return yaml.SafeLoader(text)


class _Scalars(yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's own implicit-tag resolution and scalar constructors."""


_SCALARS = _Scalars()


@dataclass
class _Frame:
    container: MarkedDict | MarkedList
    anchor: str | None
    size: int = 1
    key: Any = None
    key_location: Location | None = None
    has_key: bool = False
    merges: list[tuple[MarkedDict, Location]] = field(default_factory=list)


class _Builder:
    def __init__(self, parser: Any, path: str) -> None:
        self.parser = parser
        self.path = path
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, expanded size)
        self.stack: list[_Frame] = []
        self.total = 0
        self.aliased = False

    def where(self, event: Any) -> Location:
        return Location(self.path, event.start_mark.line + 1, event.start_mark.column + 1)

    def fail(self, event: Any, message: str) -> SpecError:
        return SpecError([Diagnostic(self.where(event), message)])

    def document(self) -> Any:
        parser = self.parser
        parser.get_event()  # stream start
        if parser.check_event(StreamEndEvent):
            raise SpecError(
                [Diagnostic(Location(self.path, 1, 1), "file is empty; a spec is a mapping with at least 'name', 'input' and 'layers'")]
            )
        parser.get_event()  # document start
        result = self.node()
        parser.get_event()  # document end
        if not parser.check_event(StreamEndEvent):
            raise self.fail(parser.peek_event(), "expected one YAML document, found another ('---')")
        return result

    def node(self) -> Any:
        """Consume the events of one node (with all it contains) and return its value."""
        parser = self.parser
        while True:
            event = parser.get_event()
            if isinstance(event, (StreamStartEvent, DocumentStartEvent, DocumentEndEvent, StreamEndEvent)):
                raise self.fail(event, "unexpected YAML structure")
            if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
                self.open(event)
                continue
            where = self.where(event)
            if isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                frame = self.stack.pop()
                value, size, where = self.close(frame), frame.size, frame.container.location
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, size)
            elif isinstance(event, AliasEvent):
                if event.anchor not in self.anchors:
                    raise self.fail(event, f"alias '*{event.anchor}' names no anchor defined before it")
                value, size = self.anchors[event.anchor]
            else:
                assert isinstance(event, ScalarEvent)
                value, size = self.scalar(event), 1
                if event.anchor is not None:
                    self.anchors[event.anchor] = (value, size)
            self.total += size
            self.aliased |= isinstance(event, AliasEvent)
            if self.total > MAX_EXPANDED_NODES:
                what = "aliases expand to" if self.aliased else "has"
                bomb = " (an alias bomb?)" if self.aliased else ""
                raise self.fail(event, f"YAML {what} more than {MAX_EXPANDED_NODES} nodes{bomb}; refusing to load")
            if not self.stack:
                return value
            self.add(self.stack[-1], value, size, event, where)

    def open(self, event: Any) -> None:
        is_map = isinstance(event, MappingStartEvent)
        expected = _TAG + ("map" if is_map else "seq")
        if event.tag not in (None, "!", expected):
            raise self.fail(event, f"unsupported YAML tag '{_shown(event.tag)}'; specs hold plain data only")
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(event, f"YAML is nested too deeply (more than {MAX_DEPTH} levels)")
        where = self.where(event)
        self.stack.append(_Frame(marked_dict(where) if is_map else marked_list(where), event.anchor))

    def scalar(self, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = _SCALARS.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _MERGE_TAG:
            return _MERGE
        if tag not in _SCALAR_TAGS:
            raise self.fail(event, f"unsupported YAML tag '{_shown(tag)}'; specs hold plain data only")
        node = yaml.ScalarNode(tag, event.value, None, None, event.style)  # tag already resolved: cannot fail
        return _SCALARS.construct_object(node)

    def add(self, frame: _Frame, value: Any, size: int, event: Any, where: Location) -> None:
        frame.size += size
        container = frame.container
        if isinstance(container, MarkedList):
            container.append(value)
            container.item_locations.append(where)
            return
        if not frame.has_key:
            if value is not _MERGE and (isinstance(value, (dict, list)) or not _hashable(value)):
                raise SpecError([Diagnostic(where, "mapping keys must be plain scalars")])
            frame.key, frame.key_location, frame.has_key = value, where, True
            return
        key, key_location = frame.key, frame.key_location
        assert key_location is not None
        frame.has_key = False
        if key is _MERGE:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(s, MarkedDict) for s in sources):
                raise SpecError([Diagnostic(where, "'<<' merges a mapping or a list of mappings")])
            frame.merges += [(s, where) for s in sources]
            return
        if key in container:
            first = container.key_locations[key]
            raise SpecError([Diagnostic(key_location, f"duplicate key '{key}' (first given at line {first.line})")])
        container[key] = value
        container.key_locations[key] = key_location
        container.value_locations[key] = where

    @staticmethod
    def close(frame: _Frame) -> Any:
        container = frame.container
        if isinstance(container, MarkedDict):
            for source, _ in frame.merges:  # explicit keys win, then earlier merges
                for key, value in source.items():
                    if key not in container:
                        container[key] = value
                        container.key_locations[key] = source.key_locations[key]
                        container.value_locations[key] = source.value_locations[key]
        return container


class _Merge:
    def __repr__(self) -> str:
        return "<<"


_MERGE = _Merge()


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _shown(tag: str) -> str:
    """'tag:yaml.org,2002:python/name:os.system' as written: '!!python/name:os.system'."""
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag
