"""Safe YAML loading that remembers where every mapping, key and value came from.

PyYAML's ``SafeLoader`` builds only plain data (``!!python/...`` tags are refused), and
this module adds the rest of what a spec compiler needs: every mapping and sequence
remembers its line and column and those of its keys and items, duplicate keys are errors
rather than silently overwritten, and alias expansion is bounded so that a "billion
laughs" document is refused in microseconds instead of eating memory.
"""

from __future__ import annotations

from typing import Any

import yaml

from cnnspec.diagnostics import Diagnostic, Location, SpecError

MAX_BYTES = 8 * 1024 * 1024


def _safe_loader_base() -> type:
    """libyaml's C scanner and parser (several times faster, same marks) under PyYAML's
    Python composer, when PyYAML was built with libyaml. libyaml's own composer recurses
    in C and segfaults on deeply nested input; the Python one raises RecursionError, which
    becomes a clear error."""
    try:
        from yaml.cyaml import CParser
    except ImportError:
        return yaml.SafeLoader

    class FastSafeLoader(
        yaml.composer.Composer,  # first, so its methods win over CParser's
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    return FastSafeLoader


_SafeLoader = _safe_loader_base()
MAX_EXPANDED_NODES = 200_000


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
    loader = _MarkedLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Diagnostic(top, "file is empty; a spec is a mapping with at least 'name', 'input' and 'layers'")])
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else top
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError([Diagnostic(where, f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(top, f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([Diagnostic(top, "YAML is nested too deeply")]) from None
    finally:
        loader.dispose()


class _MarkedLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    def __init__(self, text: str, path: str) -> None:
        super().__init__(text)
        self.path = path

    def where(self, node: yaml.Node) -> Location:
        return Location(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def construct_marked_mapping(self, node: yaml.MappingNode) -> MarkedDict:
        self.flatten_mapping(node)
        result = marked_dict(self.where(node))
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError([Diagnostic(self.where(key_node), "mapping keys must be plain scalars")])
            if key in result:
                first = result.key_locations[key]
                raise SpecError(
                    [Diagnostic(self.where(key_node), f"duplicate key '{key}' (first given at line {first.line})")]
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_locations[key] = self.where(key_node)
            result.value_locations[key] = self.where(value_node)
        return result

    def construct_marked_sequence(self, node: yaml.SequenceNode) -> MarkedList:
        result = MarkedList(self.construct_object(child, deep=True) for child in node.value)
        result.location = self.where(node)
        result.item_locations = [self.where(child) for child in node.value]
        return result


_MarkedLoader.add_constructor("tag:yaml.org,2002:map", _MarkedLoader.construct_marked_mapping)
_MarkedLoader.add_constructor("tag:yaml.org,2002:seq", _MarkedLoader.construct_marked_sequence)
# Timestamps, binary and sets are valid safe YAML but have no meaning in a spec.
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _MarkedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _MarkedLoader.construct_undefined)  # type: ignore[type-var]


def _check_expansion(root: yaml.Node, path: str) -> None:
    """Refuse documents whose aliases expand to more than MAX_EXPANDED_NODES nodes.

    Counts the tree as it would be after expanding every alias, memoised per node, so
    the cost is linear in the composed (shared) graph, not in the expansion.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        cached = sizes.get(id(node))
        if cached is not None:
            return cached
        sizes[id(node)] = MAX_EXPANDED_NODES + 1  # a recursive alias is infinite
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key) + size(value)
                if total > MAX_EXPANDED_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_EXPANDED_NODES:
                    break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_EXPANDED_NODES:
        raise SpecError(
            [
                Diagnostic(
                    Location(path, root.start_mark.line + 1, root.start_mark.column + 1),
                    f"YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes (an alias bomb?); refusing to load",
                )
            ]
        )
