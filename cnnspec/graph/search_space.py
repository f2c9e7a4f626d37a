"""The ``tune:`` section's space checked against the network: each key a training setting
(as ``--set`` names it) or ``layers.NAME.ARG``, each range well formed and each value one
the setting takes, every problem at its line with a did-you-mean.

Framework-free and cheap: ``cnnspec check`` runs it on every spec with a ``tune:``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cnnspec.errors import did_you_mean
from cnnspec.graph.dag import Graph
from cnnspec.layers import LAYERS
from cnnspec.spec.diagnostics import Diagnostic, Location
from cnnspec.spec.grammar import META_KEYS, fields_at
from cnnspec.spec.marks import MarkedDict, MarkedList
from cnnspec.spec.training import TrainConfig, with_overrides
from cnnspec.spec.tune_section import DIMENSIONS, TuneConfig, metrics_recorded

LAYER_KEY = "layers."
GRID_LIMIT = 100_000  # combinations a grid may hold


@dataclass(frozen=True)
class Dimension:
    """One key of the space and how its values are drawn."""

    key: str
    kind: str  # a key of DIMENSIONS
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    @property
    def values(self) -> list[Any]:
        """Every value, where there are finitely many (choice, int): a grid's axis."""
        if self.kind == "choice":
            return list(self.choices)
        return list(range(int(self.low), int(self.high) + 1))

    @property
    def layer(self) -> tuple[str, str] | None:
        """(layer name, argument) for ``layers.NAME.ARG``; None for a training setting."""
        if not self.key.startswith(LAYER_KEY):
            return None
        name, _, argument = self.key[len(LAYER_KEY) :].rpartition(".")
        return name, argument


@dataclass(frozen=True)
class LayerEntry:
    """An entry of the spec's top-level ``layers:``."""

    kind: str  # a layer kind or a block's name
    params: dict[str, Any]  # a block's parameters (empty for a layer)
    index: int  # its place in the list


class SpaceError(ValueError):
    """A space that cannot be drawn from (checked specs never raise it)."""


def dimensions(tune: TuneConfig) -> list[Dimension]:
    """The space as dimensions; SpaceError for a malformed one (what ``space_problems``
    reports at its line)."""
    found = []
    for key, body in tune.space.items():
        dimension, problem = _dimension(key, body)
        if dimension is None:
            raise SpaceError(f"tune.space.{key}: {problem}")
        found.append(dimension)
    return found


def _dimension(key: str, body: dict[str, Any]) -> tuple[Dimension | None, str]:
    kinds = [kind for kind in body if kind in DIMENSIONS]
    unknown = [kind for kind in body if kind not in DIMENSIONS]
    if unknown:
        return None, f"unknown way to draw '{unknown[0]}'{did_you_mean(str(unknown[0]), DIMENSIONS)}: one of {', '.join(DIMENSIONS)}"
    if len(kinds) != 1:
        return None, f"give one way to draw a value: {', '.join(DIMENSIONS)}"
    kind = kinds[0]
    value = body[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            return None, "choice takes a non-empty list of values"
        if any(isinstance(item, (dict, list)) for item in value):
            return None, "choice takes plain values (numbers, names, true/false)"
        return Dimension(key, kind, choices=tuple(value)), ""
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return None, f"{kind} takes [low, high], two numbers"
    low, high = value
    if not all(math.isfinite(v) for v in value):
        return None, f"{kind}: [low, high] must be finite numbers"
    if low > high:
        return None, f"{kind}: low {low} is above high {high}"
    if kind.startswith("log") and low <= 0:
        return None, f"{kind}: a log scale needs low above 0, got {low}"
    if kind.endswith("int") and not all(isinstance(v, int) for v in value):
        return None, f"{kind}: [low, high] must be integers, got [{low}, {high}]"
    return Dimension(key, kind, float(low), float(high)), ""


def space_problems(graph: Graph, tune: TuneConfig, section: MarkedDict, top: Location) -> list[Diagnostic]:
    """Every problem of a validated ``tune:`` section that needs the network to see."""
    problems = []
    train = graph.train
    metrics = metrics_recorded(train.top_k)
    if tune.metric not in metrics:
        problems.append(Diagnostic(section.value_locations.get("metric", top),
                                   f"tune.metric: '{tune.metric}' is not a metric runs record{did_you_mean(tune.metric, metrics)}: one of {', '.join(metrics)}"))
    space = section.get("space")
    if not isinstance(space, MarkedDict):
        return problems
    base = train.model_dump(exclude_unset=True)
    entries = layer_entries(graph)
    drawn = []
    for key, body in space.items():
        key_at, value_at = space.key_locations[key], space.value_locations[key]
        dimension, problem = _dimension(str(key), dict(body))
        if dimension is None:
            problems.append(Diagnostic(_where_in(body, value_at), f"tune.space.{key}: {problem}"))
            continue
        drawn.append(dimension)
        wrong = _key_problem(dimension, graph, entries, base)
        if wrong is not None:
            at = key_at if wrong.startswith("unknown") else _where_in(body, value_at)
            problems.append(Diagnostic(at, f"tune.space.{key}: {wrong}"))
    if tune.sampler == "grid" and drawn:
        problems += _grid_problems(drawn, section, top)
    return problems


def _where_in(body: Any, fallback: Location) -> Location:
    """The line of a dimension's values (its first key's value)."""
    if isinstance(body, MarkedDict) and body:
        first = next(iter(body))
        return body.value_locations.get(first, fallback)
    return fallback


def _grid_problems(drawn: list[Dimension], section: MarkedDict, top: Location) -> list[Diagnostic]:
    where = section.value_locations.get("sampler", top)
    continuous = [d.key for d in drawn if d.kind not in ("choice", "int")]
    if continuous:
        return [Diagnostic(where, f"tune.sampler: grid takes choice and int dimensions only; {', '.join(continuous)} {'draws' if len(continuous) == 1 else 'draw'} from a continuous range (give them as choice)")]
    size = math.prod(len(d.values) for d in drawn)
    if size > GRID_LIMIT:
        return [Diagnostic(where, f"tune.sampler: the grid has {size:,} combinations, more than {GRID_LIMIT:,}: use tpe or random")]
    return []


def _key_problem(dimension: Dimension, graph: Graph, entries: dict[str, LayerEntry], base: dict[str, Any]) -> str | None:
    """Why a key cannot be searched (unknown, or a value it does not take); None if it can."""
    values = dimension.choices if dimension.kind == "choice" else (_number(dimension, dimension.low), _number(dimension, dimension.high))
    layer = dimension.layer
    if layer is not None:
        return _layer_problem(*layer, entries, values)
    parts = dimension.key.split(".")
    for depth, part in enumerate(parts):
        choices = fields_at(TrainConfig, parts[:depth])
        if part not in choices:
            where = ".".join(parts[:depth]) or "train"
            return f"unknown key '{part}' in {where}{did_you_mean(part, choices)} (keys are train: settings as --set takes them, or layers.NAME.ARG)"
    for value in values:
        try:
            TrainConfig.model_validate(with_overrides(base, {dimension.key: value}))
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            return f"{value!r} is not a value it takes: {message}"
    return None


def _number(dimension: Dimension, value: float) -> float | int:
    return int(value) if dimension.kind.endswith("int") else value


def _layer_problem(name: str, argument: str, entries: dict[str, LayerEntry], values: tuple[Any, ...]) -> str | None:
    if name not in entries:
        return f"unknown layer '{name}'{did_you_mean(name, entries)} (layers.NAME.ARG names a layer of the spec's layers: list)"
    kind, params = entries[name].kind, entries[name].params
    if kind not in LAYERS:  # a block: its parameters
        if argument not in params:
            return f"unknown argument '{argument}' of block {kind}{did_you_mean(argument, params)} (its parameters: {', '.join(params) or 'none'})"
        return None
    fields = LAYERS[kind].model_fields
    if argument not in fields:
        return f"unknown argument '{argument}' of {kind} '{name}'{did_you_mean(argument, fields)}"
    info = fields[argument]
    annotation: Any = info.annotation if not info.metadata else _annotated(info.annotation, info.metadata)
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    for value in values:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            return f"{value!r} is not a value {kind}.{argument} takes: {exc.errors()[0]['msg']}"
    return None


def _annotated(annotation: Any, metadata: list[Any]) -> Any:
    from typing import Annotated

    return Annotated[(annotation, *metadata)]


def layer_entries(graph: Graph) -> dict[str, LayerEntry]:
    """The entries of the spec's top-level ``layers:`` a key may name: by ``name:``, or,
    unnamed, by the name the layer got."""
    from cnnspec.spec.marks import load_yaml

    document = load_yaml(graph.source, graph.path) if graph.source else None
    if not isinstance(document, MarkedDict) or not isinstance(document.get("layers"), MarkedList):
        return {}
    blocks = document.get("blocks") if isinstance(document.get("blocks"), dict) else {}
    by_line = {node.location.line: node.name for node in graph.nodes}
    found: dict[str, LayerEntry] = {}
    layers = document["layers"]
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict):
            continue
        kind = next((key for key in entry if key not in META_KEYS), None)
        if kind is None:
            continue
        name = entry.get("name")
        if name is None:
            name = by_line.get(layers.item_locations[index].line)
        if name is None:
            continue
        block = blocks.get(kind) if isinstance(blocks, dict) else None
        params = dict(block.get("params") or {}) if isinstance(block, dict) else {}
        found[str(name)] = LayerEntry(str(kind), params, index)
    return found
