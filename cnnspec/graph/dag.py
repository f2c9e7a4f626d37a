"""The validated network: an ordered DAG of named nodes with resolved shapes.

Every backend, exporter and ``cnnspec check`` reads a ``Graph`` and nothing else.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from cnnspec.calculators import ReceptiveField
from cnnspec.errors import did_you_mean
from cnnspec.layers import LAYERS, Layer, LayerInfo, Shape, ShapeError, format_shape
from cnnspec.layers.base import WeightSpec
from cnnspec.spec.diagnostics import Diagnostic, Location, SpecError
from cnnspec.spec.grammar import FAILED, INPUT, ExpandedSpec, LayerEntry, pydantic_diagnostics

if TYPE_CHECKING:
    from cnnspec.spec.training import TrainConfig
    from cnnspec.spec.tune_section import TuneConfig

BYTES_PER_FLOAT32 = 4


@dataclass(frozen=True)
class Node:
    name: str
    layer: Layer
    inputs: tuple[str, ...]  # node names, or INPUT for the network input
    info: LayerInfo
    receptive_field: ReceptiveField | None  # None once an output sees the whole input
    location: Location

    @property
    def kind(self) -> str:
        return self.layer.kind

    @property
    def output_shape(self) -> Shape:
        return self.info.output_shape

    @property
    def params(self) -> int:
        return self.info.params

    @property
    def non_trainable(self) -> int:
        return self.info.non_trainable

    @property
    def macs(self) -> int:
        return self.info.macs


@dataclass(frozen=True)
class Graph:  # not slotted: cached_property needs __dict__
    name: str
    description: str
    path: str
    input_shape: Shape
    nodes: tuple[Node, ...]  # in execution (topological) order
    output: str  # the node whose output is the network's
    warnings: tuple[Diagnostic, ...] = ()
    train_section: TrainConfig | None = None  # the spec's ``train:``, validated; None when it has none
    tune_section: TuneConfig | None = None  # the spec's ``tune:``, validated; None when it has none
    source: str = ""  # the spec's text, saved with every run

    @property
    def train(self) -> TrainConfig:
        """How to train this network: the spec's ``train:`` section, or every default."""
        if self.train_section is not None:
            return self.train_section
        from cnnspec.spec.training import TrainConfig

        return TrainConfig()

    def input_shapes(self, node: Node) -> list[Shape]:
        return [self.input_shape if name == INPUT else self[name].output_shape for name in node.inputs]

    def weights(self) -> dict[str, WeightSpec]:
        """Every array of the network by canonical name ('c1.weight'), in layer order."""
        return {
            f"{node.name}.{key}": spec
            for node in self.nodes
            for key, spec in node.layer.weights(self.input_shapes(node)).items()
        }

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        node = self._by_name.get(name)
        if node is None:
            raise KeyError(name)
        return node

    @functools.cached_property
    def _by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    @property
    def output_shape(self) -> Shape:
        return self[self.output].output_shape

    @property
    def params(self) -> int:
        return sum(node.params for node in self.nodes)

    @property
    def non_trainable(self) -> int:
        return sum(node.non_trainable for node in self.nodes)

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def activation_bytes(self) -> int:
        """Float32 bytes of every layer output for one sample (what a training step
        keeps for the backward pass, before any in-place savings)."""
        total = 0
        for node in self.nodes:
            count = 1
            for dim in node.output_shape:
                count *= dim
            total += count * BYTES_PER_FLOAT32
        return total

    @property
    def is_sequential(self) -> bool:
        previous = INPUT
        for node in self.nodes:
            if node.inputs != (previous,):
                return False
            previous = node.name
        return True

    @property
    def receptive_field(self) -> ReceptiveField | None:
        """The largest receptive field of any feature map in the network."""
        fields = [n.receptive_field for n in self.nodes if n.receptive_field is not None]
        return ReceptiveField.merge(fields) if fields else None


def build_graph(spec: ExpandedSpec) -> Graph:
    """Validate arguments, resolve references, order, infer shapes, check expectations.

    Reports every problem found, not just the first; raises SpecError if any.
    """
    builder = _Builder(spec)
    return builder.build()


class _Builder:
    def __init__(self, spec: ExpandedSpec) -> None:
        self.spec = spec
        self.errors: list[Diagnostic] = []

    def error(self, location: Location, message: str) -> None:
        self.errors.append(Diagnostic(location, message))

    def build(self) -> Graph:
        spec = self.spec
        entries = self._unique(spec.layers)
        layers = {entry.name: self._validate(entry) for entry in entries}
        inputs = {entry.name: self._resolve(entry, layers) for entry in entries}
        order = self._order(entries, inputs)
        if spec.header is None:  # no input shape to infer from; the header errors say why
            raise SpecError(self.errors)
        nodes = self._infer(order, layers, inputs, tuple(spec.header.input.shape))
        self._check_expectations(nodes)
        if self.errors or len(nodes) < len(order):  # a node missing: its input failed upstream, reported where it failed
            raise SpecError(self.errors)
        ordered = tuple(nodes[entry.name] for entry in order)
        output = spec.aliases.get(spec.output, spec.output)
        return Graph(
            name=spec.header.name,
            description=spec.header.description,
            path=spec.path,
            input_shape=tuple(spec.header.input.shape),
            nodes=ordered,
            output=output,
            warnings=tuple(self._unused(ordered, output)),
        )

    def _unique(self, entries: list[LayerEntry]) -> list[LayerEntry]:
        seen: dict[str, LayerEntry] = {}
        for entry in entries:
            first = seen.get(entry.name)
            if first is not None:
                self.error(entry.location, f"duplicate layer name '{entry.name}' (first defined at line {first.location.line})")
            else:
                seen[entry.name] = entry
        return list(seen.values())

    def _validate(self, entry: LayerEntry) -> Layer | None:
        cls = LAYERS[entry.kind]
        try:
            return cls.model_validate(dict(entry.args))
        except ValidationError as exc:
            prefix = f"{entry.kind} '{entry.name}': "
            self.errors += pydantic_diagnostics(exc, entry.args, entry.location, prefix, entry.context, cls)
            return None

    def _resolve(self, entry: LayerEntry, layers: dict[str, Layer | None]) -> tuple[str, ...] | None:
        names: list[str] = []
        for ref in entry.inputs:
            target = self.spec.aliases.get(ref.target, ref.target)
            if target == FAILED:
                return None  # upstream failure, already reported
            if target == INPUT or target in layers:
                names.append(target)
                continue
            visible = [n[len(ref.scope):] for n in layers if n.startswith(ref.scope)]
            hint = did_you_mean(ref.written, [*visible, INPUT])
            self.error(ref.location, f"{entry.kind} '{entry.name}': unknown input '{ref.written}'{hint}{entry.context}")
            return None
        least, most = LAYERS[entry.kind].arity
        if len(names) < least or (most is not None and len(names) > most):
            wanted = f"at least {least}" if most is None else f"exactly {least}" if least == most else f"{least} to {most}"
            self.error(
                entry.location,
                f"{entry.kind} '{entry.name}' takes {wanted} inputs, got {len(names)}"
                + ("; list them with 'inputs: [a, b]'" if most is None else ""),
            )
            return None
        return tuple(names)

    def _order(self, entries: list[LayerEntry], inputs: dict[str, tuple[str, ...] | None]) -> list[LayerEntry]:
        """Topological order, stable by declaration (Kahn's algorithm with a heap)."""
        index = {entry.name: i for i, entry in enumerate(entries)}
        waiting = {e.name: {n for n in (inputs[e.name] or ()) if n != INPUT} for e in entries}
        users: dict[str, list[str]] = {name: [] for name in index}
        for name, sources in waiting.items():
            for source in sources:
                users[source].append(name)
        ready = [index[name] for name, sources in waiting.items() if not sources]
        heapq.heapify(ready)
        order = []
        while ready:
            entry = entries[heapq.heappop(ready)]
            order.append(entry)
            for user in users[entry.name]:
                waiting[user].discard(entry.name)
                if not waiting[user]:
                    heapq.heappush(ready, index[user])
        if len(order) < len(entries):
            stuck = next(e for e in entries if waiting[e.name])
            cycle, name = [stuck.name], next(iter(sorted(waiting[stuck.name])))
            while name not in cycle:
                cycle.append(name)
                name = next(iter(sorted(waiting[name])))
            cycle = [*cycle[cycle.index(name):], name]
            self.error(stuck.location, f"cycle in the layer graph: {' -> '.join(cycle)}")
        return order

    def _infer(
        self,
        order: list[LayerEntry],
        layers: dict[str, Layer | None],
        inputs: dict[str, tuple[str, ...] | None],
        input_shape: Shape,
    ) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        for entry in order:
            layer, sources = layers[entry.name], inputs[entry.name]
            if layer is None or sources is None or any(s != INPUT and s not in nodes for s in sources):
                continue  # already reported, here or upstream
            shapes = [input_shape if s == INPUT else nodes[s].output_shape for s in sources]
            try:
                info = layer.infer(shapes)
            except ShapeError as exc:
                where = entry.args.value_locations.get(exc.field, entry.location) if exc.field else entry.location
                self.error(where, f"{entry.kind} '{entry.name}': {exc}{entry.context}")
                continue
            if any(dim <= 0 for dim in info.output_shape):
                self.error(entry.location, f"{entry.kind} '{entry.name}': output shape {format_shape(info.output_shape)} is empty{entry.context}")
                continue
            fields = [ReceptiveField() if s == INPUT else nodes[s].receptive_field for s in sources]
            receptive = None
            if not info.is_global and len(info.output_shape) == 3 and all(f is not None for f in fields):
                receptive = ReceptiveField.merge([f for f in fields if f is not None])
                if info.window is not None:
                    receptive = receptive.through(info.window.kernel, info.window.stride)
            nodes[entry.name] = Node(entry.name, layer, sources, info, receptive, entry.location)
        return nodes

    def _check_expectations(self, nodes: dict[str, Node]) -> None:
        spec = self.spec
        for item in spec.expectations:
            if item.output not in nodes or any(m not in nodes for m in item.members):
                continue
            computed = {
                "shape": list(nodes[item.output].output_shape),
                "params": sum(nodes[m].params for m in item.members),
                "macs": sum(nodes[m].macs for m in item.members),
            }
            self._compare(item.label, item.expect.model_dump(exclude_none=True), computed, item.location)
        assert spec.header is not None
        expect = spec.header.expect
        output = spec.aliases.get(spec.output, spec.output)
        if expect is not None and len(nodes) == len(spec.layers) and output in nodes:
            computed = {
                "output": list(nodes[output].output_shape),
                "params": sum(n.params for n in nodes.values()),
                "non_trainable": sum(n.non_trainable for n in nodes.values()),
                "macs": sum(n.macs for n in nodes.values()),
            }
            where = spec.expect_location or Location(spec.path, 1, 1)
            self._compare(f"network '{spec.header.name}'", expect.model_dump(exclude_none=True), computed, where)

    def _compare(self, label: str, expected: dict[str, object], computed: dict[str, object], where: Location) -> None:
        for key, value in expected.items():
            if computed[key] != value:
                self.error(where, f"{label}: expected {key} {_show(value)}, computed {_show(computed[key])}")

    @staticmethod
    def _unused(nodes: tuple[Node, ...], output: str) -> list[Diagnostic]:
        used = {source for node in nodes for source in node.inputs}
        return [
            Diagnostic(node.location, f"{node.kind} '{node.name}': output is never used", "warning")
            for node in nodes
            if node.name not in used and node.name != output
        ]


def _show(value: object) -> str:
    if isinstance(value, list):
        return format_shape(tuple(value))
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
