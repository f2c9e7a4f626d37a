"""Training only the head: the frozen body's outputs computed once, then epochs on them.

When every layer up to some layer B is frozen (or has no weights), nothing after B reads
anything before B, the body holds no dropout (so it computes the same in training and in
evaluation: frozen batch norm already uses its running statistics), and no augmentation
changes the images between epochs, then B's output for each image never changes. It is
computed once (the "bottleneck features" of the transfer-learning recipe), and each epoch
trains the head alone on it: a network of the layers after B, whose input is B's output.

``HeadSession`` stands where the full network's session would: it trains and evaluates
the head on features, and reads and writes weights and optimizer state by the full
network's names, so checkpoints, resume, ``eval``, ``predict`` and ``export`` see the whole
network as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

import numpy as np

from cnnspec.graph import tuning
from cnnspec.graph.dag import Graph
from cnnspec.layers.core import Dropout
from cnnspec.spec.grammar import INPUT
from cnnspec.spec.training import TrainConfig

Weights = dict[str, np.ndarray]


def bottleneck(graph: Graph, config: TrainConfig) -> str | None:
    """The layer whose output can be cached, or None (with the reason in ``why_not``)."""
    return _cut(graph, config)[0]


def why_not(graph: Graph, config: TrainConfig) -> str:
    return _cut(graph, config)[1]


def _cut(graph: Graph, config: TrainConfig) -> tuple[str | None, str]:
    if not config.freeze:
        return None, "nothing is frozen"
    augment = config.data.augment
    if augment.random_crop or augment.hflip or augment.per_sample:
        return None, "augmentation changes the images every epoch"
    frozen = tuning.frozen_layers(graph, config)
    owners = tuning.weighted_layers(graph)
    nodes = list(graph.nodes)
    cut = None
    for index, node in enumerate(nodes):
        if node.name in owners and node.name not in frozen:
            break  # the first layer that trains: the body ends before it
        if isinstance(node.layer, Dropout):
            return None, f"the frozen body holds dropout ({node.name}), which differs in training"
        later = {n.name for n in nodes[index + 1 :]}
        reads_back = any(source != node.name and source not in later for n in nodes[index + 1 :] for source in n.inputs)
        if not reads_back:
            cut = node.name
    if cut is None:
        return None, "no single layer's output carries everything the trainable layers need"
    return cut, ""


def head_graph(graph: Graph, cut: str) -> Graph:
    """The layers after ``cut``, reading ``cut``'s output as their input."""
    names = [node.name for node in graph.nodes]
    tail = graph.nodes[names.index(cut) + 1 :]
    nodes = tuple(dataclasses.replace(node, inputs=tuple(INPUT if source == cut else source for source in node.inputs)) for node in tail)
    return dataclasses.replace(graph, name=f"{graph.name} head", input_shape=graph[cut].output_shape, nodes=nodes)


def head_config(graph: Graph, head: Graph, config: TrainConfig) -> TrainConfig:
    """The full network's multipliers, spelled as the head's layer names; nothing frozen."""
    heads = {node.name for node in head.nodes}
    scaled = {tuning.owner(name): m for name, m in tuning.multipliers(graph, config).items() if tuning.owner(name) in heads}
    lr = {layer: m[0] for layer, m in scaled.items() if m[0] != 1.0}
    decay = {layer: m[1] for layer, m in scaled.items() if m[1] != 1.0}
    return config.model_copy(update={"freeze": [], "lr_mult": lr, "decay_mult": decay})


class HeadSession:
    """The Session protocol for a network whose body is cached: ``train_step`` and
    ``evaluate`` take the body's outputs; weights by the full network's names."""

    def __init__(self, head: Any, body: Weights) -> None:
        self.head = head
        self.body = body  # every array outside the head, as loaded: frozen
        self.device, self.precision = head.device, head.precision

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        return self.head.inputs(x, scale, mean, std)

    def get_weights(self) -> Weights:
        return {**self.body, **self.head.get_weights()}

    def set_weights(self, weights: Weights) -> None:
        mine = self.head.get_weights()
        self.head.set_weights({name: array for name, array in weights.items() if name in mine})
        self.body.update({name: array for name, array in weights.items() if name not in mine})

    def train_step(self, x: Any, y: np.ndarray) -> tuple[float, int]:
        result: tuple[float, int] = self.head.train_step(x, y)
        return result

    def evaluate(self, x: Any, y: np.ndarray) -> tuple[float, np.ndarray]:
        result: tuple[float, np.ndarray] = self.head.evaluate(x, y)
        return result

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The network's outputs for body outputs ``x``."""
        result: np.ndarray = self.head.predict(x)
        return result

    def activations(self, x: np.ndarray, layers: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """The head's layer outputs for body outputs ``x``."""
        result: dict[str, np.ndarray] = self.head.activations(x, layers)
        return result

    def set_learning_rate(self, lr: float) -> None:
        self.head.set_learning_rate(lr)

    def optimizer_state(self) -> tuple[Weights, dict[str, Any]]:
        result: tuple[Weights, dict[str, Any]] = self.head.optimizer_state()
        return result

    def load_optimizer_state(self, arrays: Weights, meta: dict[str, Any]) -> None:
        self.head.load_optimizer_state(arrays, meta)

    def available_memory(self) -> int | None:
        result: int | None = self.head.available_memory()
        return result

    @property
    def model(self) -> Any:
        return self.head.model
