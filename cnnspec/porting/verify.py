"""``cnnspec verify``: the same weights and inputs through several backends, compared
layer by layer, naming the first layer where two backends part ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.agreement import TOLERANCE, agreement
from cnnspec.graph.dag import Graph
from cnnspec.spec.training import TrainConfig


@dataclasses.dataclass(frozen=True)
class LayerError:
    layer: str
    kind: str
    shape: tuple[int, ...]
    errors: dict[str, tuple[float, float]]  # backend -> (max absolute, max relative) error vs the reference

    @property
    def worst(self) -> float:
        return max((relative for _, relative in self.errors.values()), default=0.0)


@dataclasses.dataclass(frozen=True)
class Verification:
    graph: Graph
    reference: str
    backends: list[str]
    devices: dict[str, str]
    layers: list[LayerError]
    tolerance: float
    weights_from: str

    @property
    def first_divergence(self) -> LayerError | None:
        return next((layer for layer in self.layers if layer.worst > self.tolerance), None)

    @property
    def output(self) -> LayerError:
        return next(layer for layer in self.layers if layer.layer == self.graph.output)

    def as_json(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "spec": self.graph.name,
            "input_shape": list(self.graph.input_shape),
            "reference": self.reference,
            "backends": self.backends,
            "devices": self.devices,
            "weights": self.weights_from,
            "tolerance": self.tolerance,
            "agree": first is None,
            "first_divergence": None if first is None else first.layer,
            "output": {backend: {"max_abs": a, "max_rel": r} for backend, (a, r) in self.output.errors.items()},
            "layers": [
                {"name": layer.layer, "kind": layer.kind, "shape": list(layer.shape),
                 "errors": {backend: {"max_abs": a, "max_rel": r} for backend, (a, r) in layer.errors.items()}}
                for layer in self.layers
            ],
        }


def verify(
    graph: Graph,
    backends: list[str],
    *,
    weights: dict[str, np.ndarray] | None = None,
    weights_from: str = "seeded initial weights",
    device: str = "cpu",
    batch: int = 2,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> Verification:
    from cnnspec.backends import load_backend
    from cnnspec.graph.weights import check_weights, initial_weights

    if len(backends) < 2:
        raise ValueError("verify compares at least two backends, e.g. --backends numpy,torch")
    if weights is None:
        weights = initial_weights(graph, seed)
    check_weights(graph, weights, weights_from)
    x = np.random.default_rng(seed).standard_normal((batch, *graph.input_shape)).astype(np.float32)
    results: dict[str, dict[str, np.ndarray]] = {}
    devices: dict[str, str] = {}
    for name in backends:
        session: Any = load_backend(name).open_session(graph, TrainConfig(), device=device, precision="fp32")
        session.set_weights(weights)
        results[name] = session.activations(x)
        devices[name] = session.device
    reference = backends[0]
    layers = []
    for node in graph.nodes:
        expected = results[reference][node.name]
        errors = {}
        for name in backends[1:]:
            got = results[name][node.name]
            errors[name] = agreement(got, expected) if got.shape == expected.shape else (float("inf"), float("inf"))
        layers.append(LayerError(node.name, node.kind, node.output_shape, errors))
    return Verification(graph, reference, backends, devices, layers, tolerance, weights_from)


def load_target(
    target: str, input_size: tuple[int, int] | None, weights_file: Path | None = None
) -> tuple[Graph, dict[str, np.ndarray] | None, str]:
    """A spec (fresh seeded weights, or ``weights_file``'s) or a run directory/checkpoint
    (its trained weights)."""
    from cnnspec.graph.load import load_spec, with_input_size
    from cnnspec.graph.weights import check_weights
    from cnnspec.runs.files import load_arrays

    path = Path(target)
    if path.is_dir() and weights_file is not None:
        raise ValueError("--weights goes with a spec; a run directory brings its own weights")
    if path.is_dir():
        from cnnspec.runs.loading import load_run

        loaded = load_run(path)
        if input_size is not None and input_size != loaded.graph.input_shape[1:]:
            raise ValueError("--input-size changes the weights' shapes after a flatten; verify a run at its own size")
        from cnnspec.runs.weight_files import load_weights

        return loaded.spec, load_weights(loaded.checkpoint), str(loaded.checkpoint)  # as written: an output softmax kept
    graph = load_spec(target)
    if input_size is not None:
        graph = with_input_size(graph, input_size)
    if weights_file is None:
        return graph, None, "seeded initial weights"
    weights = load_arrays(weights_file)
    check_weights(graph, weights, str(weights_file))
    return graph, weights, str(weights_file)
