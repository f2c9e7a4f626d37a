"""A graph's weights as arrays: seeded initial values in the canonical layout, and the check that a set of arrays fits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnspec.graph.dag import Graph
from cnnspec.layers.base import WeightSpec

Weights = dict[str, np.ndarray]


def _he(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    # He et al. 2015: N(0, 2 / fan_in), for ReLU networks.
    return rng.normal(0.0, np.sqrt(2.0 / spec.fan_in), spec.shape)


def _xavier(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    # Glorot and Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); Keras' default.
    bound = np.sqrt(6.0 / (spec.fan_in + spec.fan_out))
    return rng.uniform(-bound, bound, spec.shape)


def _uniform(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    bound = 1.0 / np.sqrt(spec.fan_in)
    return rng.uniform(-bound, bound, spec.shape)


INITIALIZERS: dict[str, Callable[[np.random.Generator, WeightSpec], np.ndarray]] = {
    "he": _he,
    "xavier": _xavier,
    "normal": lambda rng, spec: rng.normal(0.0, 0.01, spec.shape),
    "uniform": _uniform,
    "zeros": lambda rng, spec: np.zeros(spec.shape),
    "constant": lambda rng, spec: np.full(spec.shape, spec.value),
}


def initial_weights(graph: Graph, seed: int) -> Weights:
    """Every array of the network, float32, drawn in layer order from ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: INITIALIZERS[spec.init](rng, spec).astype(np.float32) for name, spec in graph.weights().items()}


def check_weights(graph: Graph, weights: Weights, source: str) -> None:
    """Raise ValueError naming the first missing, unexpected or misshapen array."""
    expected = graph.weights()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{source} does not match the spec '{graph.name}': {'; '.join(parts)}")
    for name, spec in expected.items():
        if tuple(weights[name].shape) != spec.shape:
            raise ValueError(f"{source}: '{name}' has shape {tuple(weights[name].shape)}, the spec needs {spec.shape}")
