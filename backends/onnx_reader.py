"""What ONNX import rules read with: the ``Reader`` that walks a normalised model's nodes
and writes spec layers, and the ``Rule`` a table of them is made of (``onnx_import`` holds
the classic kinds' rules, ``onnx_modern_rules`` the rest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import helper

from cnnspec.backends.import_common import ImportRefused, layer_name
from cnnspec.backends.onnx_normalise import Plain, Shape, node_label
from cnnspec.errors import did_you_mean
from cnnspec.spec.grammar import INPUT

# The input ranks whose forms of an operator have a cnnspec kind: images (N x C x H x W),
# and feature vectors (N x F) for batchnorm; 1-d and 3-d forms have none.
RANKS: dict[str, tuple[int, ...]] = {op: (4,) for op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "LRN")}
RANKS["BatchNormalization"] = (2, 4)


def attributes(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def explicit(node: Any, a: dict[str, Any]) -> None:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise ImportRefused(f"{node_label(node)}: {node.op_type} with auto_pad {a['auto_pad']!r}; export with explicit pads")


@dataclasses.dataclass
class Reader:
    """Turns the nodes of a ``Plain`` model into spec layers, one rule at a time."""

    plain: Plain
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    by_name: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the same layers, by name
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    producer: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> layer name
    extra_pads: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # tensor -> a Pad folded into its consumer
    done: set[int] = dataclasses.field(default_factory=set)  # ids of nodes a rule has taken
    rules: dict[str, list[Rule]] = dataclasses.field(default_factory=dict)  # by the operator that starts them
    # A Transpose that moves a map's channels last starts a region where other rules hold
    # (a MatMul is a 1x1 convolution there); these tensors are inside one, in N x H x W x C.
    channels_last: set[str] = dataclasses.field(default_factory=set)
    last_rules: dict[str, list[Rule]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.producer[self.plain.input] = INPUT
        self.consumers: dict[str, list[Any]] = {}
        for node in self.plain.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    # what rules ask
    def shape(self, tensor: str) -> Shape:
        if tensor not in self.plain.shapes:
            raise ImportRefused(f"tensor '{tensor}' has no fixed shape after normalising; the model computes shapes from its input data")
        return self.plain.shapes[tensor]

    def constant(self, node: Any, index: int) -> np.ndarray | None:
        """Input ``index`` of ``node`` when it is known, else None."""
        if len(node.input) <= index or not node.input[index]:
            return None
        return self.plain.constants.get(node.input[index])

    def variables(self, node: Any) -> list[str]:
        """The inputs that are not known constants: the tensors the layer reads."""
        return [name for name in node.input if name and name not in self.plain.constants]

    def next_one(self, node: Any, op: str | tuple[str, ...]) -> Any | None:
        """The only node reading ``node``'s output, when its operator is ``op`` and that
        output is not the model's."""
        users = self.consumers.get(node.output[0], [])
        ops = (op,) if isinstance(op, str) else op
        if len(users) == 1 and users[0].op_type in ops and node.output[0] != self.plain.output:
            return users[0]
        return None

    # what rules write
    def name_for(self, node: Any, kind: str) -> str:
        return layer_name(node.name.partition(":")[0] if node.name else "", kind, self.by_name)

    def add(self, node: Any, kind: str, args: dict[str, Any], reads: list[str], writes: str | None = None) -> str:
        """A layer named after ``node``, reading tensors ``reads``, whose output is tensor
        ``writes`` (default: the node's)."""
        name = self.name_for(node, kind)
        try:
            inputs = [self.producer[tensor] for tensor in reads]
        except KeyError as missing:
            raise ImportRefused(f"{node_label(node)} reads '{missing.args[0]}', which no supported node computes") from None
        layer = {"kind": kind, "args": args, "name": name, "inputs": inputs}
        self.layers.append(layer)
        self.by_name[name] = layer
        self.producer[writes or node.output[0]] = name
        return name

    def add_activation(self, node: Any, kind: str, args: dict[str, Any], weight: np.ndarray | None = None,
                       reads: str | None = None, last: Any | None = None) -> None:
        """An activation layer; or, in cnnspec's own export (the node named '<layer>:activation'),
        the activation argument of that conv2d or dense. ``reads`` is its input tensor (default:
        the node's first variable input), ``last`` the node whose output it is (default: ``node``)."""
        writes = (last or node).output[0]
        prefix, _, role = (last or node).name.partition(":")
        owner = self.by_name.get(prefix) if role == "activation" else None
        if owner is not None:
            owner["args"]["activation"] = {kind: args} if args else kind
            if weight is not None:
                self.weights[f"{prefix}.activation.weight"] = weight
            self.producer[writes] = prefix
            return
        name = self.add(last or node, kind, args, [reads or self.variables(node)[0]], writes)
        if weight is not None:
            self.weights[f"{name}.weight"] = weight

    def read(self) -> None:
        for node in self.plain.nodes:
            if id(node) in self.done:
                continue
            inside = any(name in self.channels_last for name in node.input)
            shape = self.plain.shapes.get(node.input[0]) if node.input else None
            if not inside and shape is not None and len(shape) not in RANKS.get(node.op_type, (len(shape),)):
                raise ImportRefused(f"{node_label(node)}: ONNX {node.op_type} on a {len(shape)}-d tensor ({'x'.join(map(str, shape))}) "
                                    f"has no cnnspec layer kind (they read images, N x C x H x W{', or vectors' if 2 in RANKS[node.op_type] else ''})")
            for rule in (self.last_rules if inside else self.rules).get(node.op_type, []):
                taken = rule.read(self, node)
                if taken is not None:
                    self.done.update(id(n) for n in taken)
                    if inside and not rule.leaves:  # what a layer computes there stays channels-last
                        self.channels_last.update(output for n in taken for output in n.output)
                    break
            else:
                raise ImportRefused(unsupported(node, self, inside))
        if self.plain.output in self.channels_last:
            raise ImportRefused("the model's output is a map with its channels moved last (N x H x W x C); "
                                "a spec's output is N x C x H x W: end the model with the Transpose back")


def per_channel(r: Reader, node: Any) -> tuple[str, np.ndarray] | None:
    """(the variable input, one value per channel) of a binary op between a tensor and a
    constant that varies along the channel axis only (or not at all); the channel axis is
    the last in a channels-last region, else the second."""
    source = r.variables(node)
    known = next((r.constant(node, i) for i in (0, 1) if r.constant(node, i) is not None), None)
    if len(source) != 1 or known is None:
        return None
    shape = r.shape(source[0])
    if len(shape) not in (2, 4) or known.ndim > len(shape):
        return None
    try:
        if np.broadcast_shapes(known.shape, shape) != shape:
            return None  # the constant would widen the tensor
    except ValueError:
        return None
    full = np.moveaxis(np.broadcast_to(known, shape), -1 if source[0] in r.channels_last else 1, 1)
    values = full.reshape(full.shape[0], full.shape[1], -1)[0, :, 0]
    if not np.array_equal(full, np.broadcast_to(values.reshape(1, -1, *([1] * (len(shape) - 2))), full.shape)):
        return None  # varies over positions, not only channels
    return source[0], np.asarray(values, np.float32).copy()


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (operators in order) becomes a ``kind`` layer; ``read`` returns the
    nodes it took, or None where the pattern does not hold here (the next rule tries)."""

    pattern: tuple[str, ...]
    kind: str
    read: Callable[[Reader, Any], list[Any] | None]
    when: str = ""  # the condition, for the refusal message
    leaves: bool = False  # in a channels-last region: the rule moves the channels back


def unsupported(node: Any, reader: Reader, inside: bool = False) -> str:
    where = node_label(node)
    shapes = ", ".join("x".join(map(str, reader.plain.shapes[name])) for name in reader.variables(node) if name in reader.plain.shapes)
    if inside:
        known = "; ".join(dict.fromkeys(f"{' + '.join(r.pattern)} -> {r.kind}" for rules in reader.last_rules.values() for r in rules))
        return (f"{where}: ONNX {node.op_type}{f' on {shapes}' if shapes else ''} reads a map whose channels a Transpose moved last; "
                f"cnnspec reads there only: {known}")
    rules = reader.rules.get(node.op_type, [])
    if rules:
        nearest = "; ".join(f"{' + '.join(r.pattern)} -> {r.kind}{f' ({r.when})' if r.when else ''}" for r in rules)
        return f"{where}: ONNX {node.op_type}{f' on {shapes}' if shapes else ''} matches no pattern cnnspec reads; supported: {nearest}"
    hint = did_you_mean(node.op_type, sorted(reader.rules))
    return f"{where}: ONNX operator {node.op_type} has no cnnspec layer kind{hint}"


