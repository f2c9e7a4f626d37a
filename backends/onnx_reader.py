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
            shape = self.plain.shapes.get(node.input[0]) if node.input else None
            if shape is not None and len(shape) not in RANKS.get(node.op_type, (len(shape),)):
                raise ImportRefused(f"{node_label(node)}: ONNX {node.op_type} on a {len(shape)}-d tensor ({'x'.join(map(str, shape))}) "
                                    f"has no cnnspec layer kind (they read images, N x C x H x W{', or vectors' if 2 in RANKS[node.op_type] else ''})")
            for rule in self.rules.get(node.op_type, []):
                taken = rule.read(self, node)
                if taken is not None:
                    self.done.update(id(n) for n in taken)
                    break
            else:
                raise ImportRefused(unsupported(node, self))


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (operators in order) becomes a ``kind`` layer; ``read`` returns the
    nodes it took, or None where the pattern does not hold here (the next rule tries)."""

    pattern: tuple[str, ...]
    kind: str
    read: Callable[[Reader, Any], list[Any] | None]
    when: str = ""  # the condition, for the refusal message


def unsupported(node: Any, reader: Reader) -> str:
    where = node_label(node)
    shapes = ", ".join("x".join(map(str, reader.plain.shapes[name])) for name in reader.variables(node) if name in reader.plain.shapes)
    rules = reader.rules.get(node.op_type, [])
    if rules:
        nearest = "; ".join(f"{' + '.join(r.pattern)} -> {r.kind}{f' ({r.when})' if r.when else ''}" for r in rules)
        return f"{where}: ONNX {node.op_type}{f' on {shapes}' if shapes else ''} matches no pattern cnnspec reads; supported: {nearest}"
    hint = did_you_mean(node.op_type, sorted(reader.rules))
    return f"{where}: ONNX operator {node.op_type} has no cnnspec layer kind{hint}"


