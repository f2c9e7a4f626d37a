"""Which layers train, and how fast: freezing and per-layer multipliers, framework-free.

A pattern names layers of the graph (the nodes, as `cnnspec check` lists them):

- a layer's name (``fc``), or a group's: ``layer1`` is every node named ``layer1.*``
  (a block or a repeated group, as torchvision's module names nest);
- a glob (``layer1.*``, ``*.bn?``), matched against every node name;
- ``before:NAME``: every node that runs before the first node of NAME (a layer or a group).

A frozen layer's weights get no gradient and no optimizer state and its batch-norm layers
stay in inference mode (their running statistics do not move), as Keras' fine-tuning
guide recommends. ``lr_mult`` and ``decay_mult`` (Caffe's names) scale the learning rate
and the weight decay of the layers a pattern names; a later pattern wins over an earlier.
Every backend takes these from here, so they agree.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from cnnspec.errors import CnnspecError, did_you_mean
from cnnspec.graph.dag import Graph
from cnnspec.spec.training import TrainConfig


class TuningError(CnnspecError, ValueError):
    """A pattern names no layer, or freezes everything; the message says what exists."""


def match_layers(graph: Graph, pattern: str, option: str = "freeze") -> list[str]:
    """The node names ``pattern`` selects, in execution order; an error with a suggestion
    when it selects none."""
    names = [node.name for node in graph.nodes]
    if pattern.startswith("before:"):
        target = pattern.removeprefix("before:").strip()
        first = next((i for i, name in enumerate(names) if name == target or name.startswith(target + ".")), None)
        if first is None:
            raise TuningError(_unknown(graph, target, option, pattern))
        return names[:first]
    if any(char in pattern for char in "*?["):
        picked = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    else:
        picked = [name for name in names if name == pattern or name.startswith(pattern + ".")]
    if not picked:
        raise TuningError(_unknown(graph, pattern, option, pattern))
    return picked


def _unknown(graph: Graph, name: str, option: str, pattern: str) -> str:
    names = [node.name for node in graph.nodes]
    groups = sorted({".".join(n.split(".")[:depth]) for n in names for depth in range(1, n.count(".") + 1)})
    hint = did_you_mean(name, [*groups, *names])
    shown = ", ".join([n for n in names if "." not in n][:8] or names[:8])
    return f"{option}: '{pattern}' names no layer of '{graph.name}'{hint}; its top-level layers include {shown} (`cnnspec check` lists them all)"


def frozen_layers(graph: Graph, config: TrainConfig) -> set[str]:
    """The nodes ``config.freeze`` names; an error when that leaves nothing to train."""
    frozen = {name for pattern in config.freeze for name in match_layers(graph, pattern, "freeze")}
    weighted = weighted_layers(graph)
    if weighted and weighted <= frozen:
        raise TuningError(f"freeze: {', '.join(config.freeze)} freezes every layer with weights of '{graph.name}'; nothing would train")
    return frozen


def weighted_layers(graph: Graph) -> set[str]:
    """The nodes that own trainable arrays."""
    return {owner(name) for name, spec in graph.weights().items() if spec.trainable}


def owner(weight: str) -> str:
    """The node a weight ('layer1.0.conv1.weight') belongs to."""
    return weight.rsplit(".", 1)[0]


def trainable_weights(graph: Graph, config: TrainConfig) -> list[str]:
    """The trainable arrays (by canonical name) that are not frozen, in layer order."""
    frozen = frozen_layers(graph, config)
    return [name for name, spec in graph.weights().items() if spec.trainable and owner(name) not in frozen]


def multipliers(graph: Graph, config: TrainConfig) -> dict[str, tuple[float, float]]:
    """(lr multiplier, weight-decay multiplier) of every trainable, unfrozen array."""
    lr = _per_node(graph, config.lr_mult.items(), "lr_mult")
    decay = _per_node(graph, config.decay_mult.items(), "decay_mult")
    return {name: (lr.get(owner(name), 1.0), decay.get(owner(name), 1.0)) for name in trainable_weights(graph, config)}


def _per_node(graph: Graph, entries: Iterable[tuple[str, float]], option: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for pattern, value in entries:
        for name in match_layers(graph, pattern, option):
            result[name] = value
    return result


def frozen_norm_layers(graph: Graph, config: TrainConfig) -> set[str]:
    """Frozen nodes whose running statistics must stay put (batch norm)."""
    frozen = frozen_layers(graph, config)
    from cnnspec.layers.norm import BatchNorm

    return {node.name for node in graph.nodes if node.name in frozen and isinstance(node.layer, BatchNorm)}


def parameter_summary(graph: Graph, config: TrainConfig) -> dict[str, int]:
    """Counts of trainable, frozen and non-trainable (running statistics) parameters."""
    specs = graph.weights()
    trainable = set(trainable_weights(graph, config))
    counts = {"trainable": 0, "frozen": 0, "non_trainable": 0}
    for name, spec in specs.items():
        size = 1
        for dim in spec.shape:
            size *= dim
        key = "non_trainable" if not spec.trainable else "trainable" if name in trainable else "frozen"
        counts[key] += size
    return counts


def summary(graph: Graph, config: TrainConfig) -> str:
    """'58,539 trainable, 2,572 frozen, 0 non-trainable; frozen: c1, c3; lr_mult: fc x0.1'."""
    counts = parameter_summary(graph, config)
    text = f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen, {counts['non_trainable']:,} non-trainable"
    if config.freeze:
        text += f"; frozen: {', '.join(config.freeze)}"
    for option in ("lr_mult", "decay_mult"):
        table = getattr(config, option)
        if table:
            text += f"; {option}: " + ", ".join(f"{pattern} x{value:g}" for pattern, value in table.items())
    return text
