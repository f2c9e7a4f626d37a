"""From a YAML document to a flat list of layer entries: the spec language.

This module owns the grammar: the top-level keys, ``defaults``, ``blocks`` with
``$parameters``, ``repeat`` and naming. It validates the header with Pydantic and expands
blocks, so that ``cnnspec.graph`` sees only concrete layers, each remembering the line it
came from. See the README's "Spec language" section for the user-facing description.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from cnnspec.errors import did_you_mean, suggestion
from cnnspec.layers import LAYERS
from cnnspec.layers.base import NonNegativeInt, PositiveInt, kind_aliases
from cnnspec.spec.diagnostics import Diagnostic, Location
from cnnspec.spec.marks import MarkedDict, MarkedList, location_of, marked_dict

INPUT = "input"  # the reserved name of the network input (and of a block's input)
FAILED = "<failed>"  # the output of a layer that could not be expanded (already reported)
META_KEYS = ("name", "inputs", "expect", "repeat")
REQUIRED = "required"  # a block parameter without a default
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
PARAM_REFERENCE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
BLOCK_KEYS = ("params", "layers", "description")


# ---- Pydantic models of the fixed parts of the document -------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class InputSpec(_Strict):
    shape: Annotated[
        list[PositiveInt],
        Field(min_length=1, max_length=3, description="channels, height, width (or features)"),
    ]


class LayerExpect(_Strict):
    """Assertions about one layer (or block instance): a mismatch is an error."""

    shape: list[PositiveInt] | None = None
    params: NonNegativeInt | None = None
    macs: NonNegativeInt | None = None


class NetworkExpect(_Strict):
    """Assertions about the whole network."""

    output: list[PositiveInt] | None = None
    params: NonNegativeInt | None = None
    non_trainable: NonNegativeInt | None = None
    macs: NonNegativeInt | None = None


class SpecHeader(_Strict):
    """The top-level mapping. ``defaults``, ``blocks`` and ``layers`` are checked by the
    expander, which needs their source locations."""

    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN.pattern)]
    description: StrictStr = ""
    input: InputSpec
    defaults: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    layers: Annotated[list[Any], Field(min_length=1)]
    expect: NetworkExpect | None = None
    # Checked on its own (cnnspec.spec.training.TrainConfig), and only when present:
    # a spec without one is checked without building the training models.
    train: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None  # likewise (cnnspec.spec.tune_section): what `cnnspec tune` searches


# ---- what the expander produces ---------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A reference to a layer's output: a full name, as written at ``location``."""

    target: str
    written: str
    location: Location
    scope: str  # the name prefix of the block the reference was written in


@dataclass
class LayerEntry:
    """One concrete layer: blocks, repeats, defaults and $parameters resolved."""

    name: str
    kind: str
    args: MarkedDict
    inputs: list[Ref]
    location: Location
    context: str = ""  # " (in block 'basic' used at line 40)" for layers from blocks


@dataclass
class Expectation:
    label: str
    output: str  # node whose shape is checked
    members: list[str]  # nodes whose params and MACs are summed
    expect: LayerExpect
    location: Location


@dataclass
class ExpandedSpec:
    path: str
    header: SpecHeader | None  # None when the header itself is invalid (reported)
    layers: list[LayerEntry]
    aliases: dict[str, str]  # block-instance and repeat-group name -> output layer
    expectations: list[Expectation]
    output: str
    expect_location: Location | None


# ---- Pydantic errors mapped to YAML locations -------------------------------------------


def fields_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The field names of the (nested) model at ``path``, for did-you-mean."""
    for part in path:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def pydantic_diagnostics(
    exc: ValidationError, raw: Any, fallback: Location, prefix: str, suffix: str = "", model: type[BaseModel] | None = None
) -> list[Diagnostic]:
    """One diagnostic per Pydantic error, at the line of the offending key or value; a
    misspelled key is one error (its did-you-mean), not also a missing required key."""
    diagnostics = []
    errors = exc.errors()
    meant = set()  # (parent path, the key a misspelling means)
    for error in errors:
        if error["type"] == "extra_forbidden":
            parent = tuple(str(p) for p in error["loc"][:-1])
            close = suggestion(str(error["loc"][-1]), fields_at(model, [p for p in parent if not p.isdigit()]))
            if close is not None:
                meant.add((parent, close))
    for error in errors:
        if error["type"] == "missing" and (tuple(str(p) for p in error["loc"][:-1]), str(error["loc"][-1])) in meant:
            continue
        where, node, path = location_of(raw, fallback), raw, list[str]()
        for part in error["loc"]:
            if isinstance(node, MarkedDict) and part in node:
                last = part == error["loc"][-1]
                where = node.key_locations[part] if last and error["type"] == "extra_forbidden" else node.value_locations[part]
                node, path = node[part], [*path, str(part)]
            elif isinstance(node, MarkedList) and isinstance(part, int) and part < len(node):
                where, node, path = node.item_locations[part], node[part], [*path, str(part)]
            elif isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and not path):
                path.append(str(part))  # a missing key, or an index into a default
        dotted = ".".join(path)
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{dotted}'{did_you_mean(path[-1], fields_at(model, path[:-1]))}"
        elif error["type"] == "missing":
            message = f"missing required key '{dotted}'"
        elif error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NAME_PATTERN.pattern:
            message = (f"{dotted}: {error['input']!r} is not a name: use letters, digits, '_', '.' and '-' "
                       "(no spaces), starting with a letter, digit or '_'")
        else:
            text = error["msg"].removeprefix("Value error, ")
            shown = "" if error["type"] == "value_error" else f", got {error['input']!r}"
            message = f"{dotted}: {text}{shown}" if dotted else f"{text}{shown}"
        diagnostics.append(Diagnostic(where, prefix + message + suffix))
    return diagnostics


# ---- the expander --------------------------------------------------------------------------


@dataclass
class _Block:
    name: str
    params: dict[str, tuple[Any, Location]]  # name -> (default or REQUIRED, where)
    layers: Any
    location: Location


@dataclass
class _Scope:
    prefix: str  # "" at top level, "layer1.0." inside that block instance
    input: Ref  # what 'input' means here
    params: dict[str, tuple[Any, Location]] | None  # None outside blocks
    stack: tuple[str, ...] = ()  # blocks being expanded, for recursion errors
    context: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)  # names written in this scope


class Expander:
    def __init__(self, path: str, raw: MarkedDict, header: SpecHeader | None) -> None:
        self.path = path
        self.raw = raw
        self.header = header
        self.diagnostics: list[Diagnostic] = []
        self.layers: list[LayerEntry] = []
        self.aliases: dict[str, str] = {}
        self.expectations: list[Expectation] = []
        self.defaults = self._read_defaults()
        self.blocks = self._read_blocks()

    def error(self, location: Location, message: str) -> None:
        self.diagnostics.append(Diagnostic(location, message))

    def run(self) -> ExpandedSpec:
        top = Location(self.path, 1, 1)
        scope = _Scope(prefix="", input=Ref(INPUT, INPUT, top, ""), params=None)
        layers = self.raw.get("layers")
        output = self._expand_list(layers, scope) if isinstance(layers, MarkedList) else None
        expect_loc = self.raw.value_locations.get("expect")
        return ExpandedSpec(self.path, self.header, self.layers, self.aliases, self.expectations, output or INPUT, expect_loc)

    # -- defaults and blocks --

    def _read_defaults(self) -> dict[str, MarkedDict]:
        raw = self.raw.get("defaults")
        defaults: dict[str, MarkedDict] = {}
        if not isinstance(raw, MarkedDict):
            return defaults
        for kind, args in raw.items():
            where = raw.key_locations[kind]
            cls = LAYERS.get(kind)
            if cls is None:
                hint = did_you_mean(str(kind), LAYERS, kind_aliases())
                self.error(where, f"defaults: unknown layer kind '{kind}'{hint}")
                continue
            if not isinstance(args, MarkedDict):
                self.error(raw.value_locations[kind], f"defaults for '{kind}' must be a mapping of arguments")
                continue
            for key in args:
                if key not in cls.model_fields:
                    hint = did_you_mean(str(key), cls.model_fields)
                    self.error(args.key_locations[key], f"defaults: {kind} has no argument '{key}'{hint}")
            defaults[kind] = args
        return defaults

    def _read_blocks(self) -> dict[str, _Block]:
        raw = self.raw.get("blocks")
        blocks: dict[str, _Block] = {}
        if not isinstance(raw, MarkedDict):
            return blocks
        for name, body in raw.items():
            where = raw.key_locations[name]
            if name in LAYERS or name in META_KEYS or name == INPUT:
                self.error(where, f"block name '{name}' is taken by a layer kind or keyword")
                continue
            if not isinstance(body, MarkedDict):
                self.error(raw.value_locations[name], f"block '{name}' must be a mapping with 'params' and 'layers'")
                continue
            for key in body:
                if key not in BLOCK_KEYS:
                    self.error(body.key_locations[key], f"block '{name}': unknown key '{key}'{did_you_mean(str(key), BLOCK_KEYS)}")
            layers = body.get("layers")
            if not isinstance(layers, MarkedList) or not layers:
                self.error(where, f"block '{name}' needs 'layers': a non-empty list")
                continue
            params_raw = body.get("params") or marked_dict(where)
            if not isinstance(params_raw, MarkedDict):
                self.error(body.value_locations["params"], f"block '{name}': 'params' must map names to defaults (or 'required')")
                continue
            params = {str(k): (v, params_raw.value_locations[k]) for k, v in params_raw.items()}
            blocks[name] = _Block(name, params, layers, where)
        return blocks

    # -- layers --

    def _expand_list(self, entries: MarkedList, scope: _Scope) -> str:
        """Expand a list of entries; returns the full name of its last output (FAILED
        when that could not be expanded: later layers then skip quietly)."""
        scope.reserved = {str(e["name"]) for e in entries if isinstance(e, MarkedDict) and "name" in e}
        previous = scope.input.target
        for index, entry in enumerate(entries):
            where = entries.item_locations[index]
            previous = self._expand_entry(entry, where, scope, previous) or FAILED
        return previous

    def _expand_entry(self, entry: Any, where: Location, scope: _Scope, previous: str) -> str | None:
        if not isinstance(entry, MarkedDict):
            self.error(where, "each layer is a mapping with one layer kind, e.g. '- conv2d: {filters: 6, kernel: 5}'")
            return None
        kinds = [key for key in entry if key not in META_KEYS]
        if len(kinds) != 1:
            self.error(
                where,
                "layer has no kind; add one, e.g. 'conv2d: {...}'"
                if not kinds
                else f"layer has several kinds ({', '.join(map(str, kinds))}); each list item holds exactly one",
            )
            return None
        kind = str(kinds[0])
        kind_loc = entry.key_locations[kinds[0]]
        if PARAM_REFERENCE.match(kind):  # a block parameter standing for the kind: `- $activation: {}`
            given = self._bound_location(kind, scope) or kind_loc
            bound = self._substitute(kind, given, scope)
            if bound is None:
                return None  # reported
            if not isinstance(bound, str):
                self.error(given, f"'{kind}' stands for a layer kind here, but is bound to {bound!r}, not a kind name")
                return None
            kind, kind_loc = bound, given
        block = self.blocks.get(kind)
        if kind not in LAYERS and block is None:
            head = kind.replace("{", " ").split()[0] if kind.strip() else kind
            if head != kind and (head in LAYERS or head in self.blocks):  # `- maxpool2d {kernel: 2}`
                self.error(kind_loc, f"a ':' is missing after '{head}': write '- {head}: {{...}}'")
                return None
            hint = did_you_mean(kind, [*LAYERS, *self.blocks], kind_aliases())
            self.error(kind_loc, f"unknown layer kind '{kind}'{hint}")
            return None
        reported = len(self.diagnostics)
        args = self._substitute(entry[kinds[0]], entry.value_locations[kinds[0]], scope)
        if len(self.diagnostics) > reported:
            return None  # a bad $parameter, already reported
        if args is None:
            args = marked_dict(entry.value_locations[kinds[0]])
        if not isinstance(args, MarkedDict):
            self.error(entry.value_locations[kinds[0]], f"arguments of '{kind}' must be a mapping, e.g. '{kind}: {{...}}'")
            return None
        repeat = self._substitute(entry.get("repeat", 1), entry.value_locations.get("repeat", where), scope)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            self.error(entry.value_locations.get("repeat", where), f"repeat must be a positive integer, got {repeat!r}")
            return None
        name = entry.get("name")
        if name is not None and (not isinstance(name, (str, int)) or isinstance(name, bool) or not NAME_PATTERN.match(str(name)) or str(name) == INPUT):
            self.error(entry.value_locations["name"], f"invalid layer name {name!r}: use letters, digits, '_', '.', '-' (and not 'input')")
            return None
        inputs = self._read_inputs(entry, scope)
        if inputs is None:
            return None
        expect = self._read_expect(entry)

        names = self._instance_names(None if name is None else str(name), repeat, kind, scope)
        for position, instance in enumerate(names):
            full = scope.prefix + instance
            sources = inputs if (inputs and position == 0) else [Ref(previous, previous, kind_loc, scope.prefix)]
            if block is None:
                merged = self._with_defaults(kind, args)
                self.layers.append(LayerEntry(full, kind, merged, sources, kind_loc, scope.context))
                output = full
                members = [full]
            else:
                output = self._expand_block(block, args, full, sources, kind_loc, scope)
                members = [layer.name for layer in self.layers if layer.name.startswith(full + ".")]
            if output == FAILED:
                return None
            if expect is not None:
                label = f"{kind} '{full}'"
                self.expectations.append(Expectation(label, output, members, expect, entry.value_locations["expect"]))
            previous = output
        if name is not None and repeat > 1:
            self.aliases.setdefault(scope.prefix + str(name), previous)
        return previous

    def _instance_names(self, name: str | None, repeat: int, kind: str, scope: _Scope) -> list[str]:
        """'layer1' x 3 -> layer1.0..2; 'layer3.1' x 5 -> layer3.1..5; unnamed -> kind_N."""
        if name is not None:
            if repeat == 1:
                return [name]
            base, dot, start = name.rpartition(".")
            if dot and start.isdigit():
                return [f"{base}.{int(start) + i}" for i in range(repeat)]
            return [f"{name}.{i}" for i in range(repeat)]
        names = []
        for _ in range(repeat):
            while True:
                scope.counters[kind] = scope.counters.get(kind, 0) + 1
                candidate = f"{kind}_{scope.counters[kind]}"
                if candidate not in scope.reserved:
                    break
            names.append(candidate)
        return names

    def _read_inputs(self, entry: MarkedDict, scope: _Scope) -> list[Ref] | None:
        raw = entry.get("inputs")
        if raw is None:
            return []
        where = entry.value_locations["inputs"]
        items = [raw] if isinstance(raw, str) else raw
        if (not isinstance(items, MarkedList) and not isinstance(raw, str)) or not items:
            self.error(where, "inputs must be a layer name or a non-empty list of layer names")
            return None
        refs = []
        for index, item in enumerate(items):
            item_loc = items.item_locations[index] if isinstance(items, MarkedList) else where
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                self.error(item_loc, f"inputs: expected a layer name, got {item!r}")
                return None
            text = str(item)
            target = scope.input.target if text == INPUT else scope.prefix + text
            refs.append(Ref(target, text, item_loc, scope.prefix))
        return refs

    def _read_expect(self, entry: MarkedDict) -> LayerExpect | None:
        raw = entry.get("expect")
        if raw is None:
            return None
        try:
            return LayerExpect.model_validate(raw)
        except ValidationError as exc:
            where = entry.value_locations["expect"]
            self.diagnostics += pydantic_diagnostics(exc, raw, where, "expect: ", model=LayerExpect)
            return None

    def _with_defaults(self, kind: str, args: MarkedDict) -> MarkedDict:
        defaults = self.defaults.get(kind)
        if not defaults:
            return args
        merged = marked_dict(args.location)
        fields = LAYERS[kind].model_fields
        for source in (defaults, args):
            for key, value in source.items():
                if source is defaults and key not in fields:
                    continue  # reported once, at the defaults entry
                merged[key] = value
                merged.key_locations[key] = source.key_locations[key]
                merged.value_locations[key] = source.value_locations[key]
        return merged

    # -- blocks --

    def _expand_block(
        self, block: _Block, args: MarkedDict, full: str, sources: list[Ref], where: Location, scope: _Scope
    ) -> str:
        if block.name in scope.stack:
            chain = " -> ".join([*scope.stack[scope.stack.index(block.name):], block.name])
            self.error(where, f"block '{block.name}' uses itself ({chain})")
            return FAILED
        if len(sources) != 1:
            self.error(where, f"block '{block.name}' takes exactly one input, got {len(sources)}")
            return FAILED
        bound: dict[str, tuple[Any, Location]] = {}
        for key in args:
            if key not in block.params:
                hint = did_you_mean(str(key), block.params)
                known = ", ".join(block.params) or "none"
                self.error(args.key_locations[key], f"block '{block.name}' has no parameter '{key}'{hint} (parameters: {known})")
        for param, (default, default_loc) in block.params.items():
            if param in args:
                bound[param] = (args[param], args.value_locations[param])
            elif default == REQUIRED:
                self.error(where, f"block '{block.name}' needs parameter '{param}'")
            else:
                bound[param] = (default, default_loc)
        if len(bound) != len(block.params):
            return FAILED
        inner = _Scope(
            prefix=full + ".",
            input=sources[0],
            params=bound,
            stack=(*scope.stack, block.name),
            context=scope.context or f" (in block '{block.name}' used at line {where.line})",
        )
        output = self._expand_list(block.layers, inner)
        self.aliases[full] = output
        return output

    def _substitute(self, value: Any, where: Location, scope: _Scope) -> Any:
        """Replace '$param' strings by the bound values of the enclosing block."""
        if isinstance(value, str):
            match = PARAM_REFERENCE.match(value)
            if not match:
                return value
            if scope.params is None:
                self.error(where, f"'{value}' refers to a block parameter, but this layer is not inside a block")
                return None
            bound = scope.params.get(match.group(1))
            if bound is None:
                hint = did_you_mean(match.group(1), scope.params)
                self.error(where, f"unknown block parameter '{value}'{hint.replace(chr(39), chr(39) + '$', 1)}")
                return None
            return bound[0]
        if isinstance(value, MarkedDict):
            result = marked_dict(value.location)
            for key, item in value.items():
                result[key] = self._substitute(item, value.value_locations[key], scope)
                result.key_locations[key] = value.key_locations[key]
                given = self._bound_location(item, scope)
                result.value_locations[key] = given or value.value_locations[key]
            return result
        if isinstance(value, MarkedList):
            items = MarkedList(self._substitute(item, loc, scope) for item, loc in zip(value, value.item_locations, strict=True))
            items.location = value.location
            items.item_locations = [self._bound_location(i, scope) or loc for i, loc in zip(value, value.item_locations, strict=True)]
            return items
        return value

    @staticmethod
    def _bound_location(value: Any, scope: _Scope) -> Location | None:
        """Where a '$param' value was given (the instance's argument or the default)."""
        if isinstance(value, str) and scope.params is not None:
            match = PARAM_REFERENCE.match(value)
            if match and match.group(1) in scope.params:
                return scope.params[match.group(1)][1]
        return None
