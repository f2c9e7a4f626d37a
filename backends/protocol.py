"""What the harness needs from a backend: the whole contract, framework-free.

A backend module (``cnnspec.backends.<name>``) exposes ``open_session``; the session it
returns trains and runs one network on one device. Arrays cross the boundary as NumPy,
in the canonical layout (N x C x H x W inputs; weights as in checkpoints).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

import numpy as np

from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph
from cnnspec.spec.training import TrainConfig

Weights = dict[str, np.ndarray]


class BackendError(CnnspecError, RuntimeError):
    """A backend cannot do what was asked (no such device, precision, ...); the message
    says what it can do instead."""


class Session(Protocol):
    device: str  # the resolved device, e.g. 'cpu' or 'cuda:0'
    precision: str  # the resolved precision: 'fp32', 'bf16' or 'fp16'

    def set_weights(self, weights: Weights) -> None: ...

    def get_weights(self) -> Weights: ...

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        """A batch of raw pixels (uint8 or float32, N x C x H x W) as this backend's input,
        normalised where that is cheapest (on the device for torch): per channel,
        ``(x * scale - mean) / std`` in float32, exactly as ``Normalization.apply``."""
        ...

    def train_step(self, x: Any, y: np.ndarray) -> tuple[float, int]:
        """One optimizer step on a batch (x float32 N x C x H x W, or what ``inputs``
        returned; y int64 N); returns (summed loss, correct top-1 predictions)."""
        ...

    def evaluate(self, x: Any, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(summed loss, outputs N x classes as float32), in evaluation mode; x as for ``train_step``."""
        ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs, N x classes, float32, in evaluation mode."""
        ...

    def activations(self, x: np.ndarray, layers: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every layer's output by name (only ``layers``' when given), canonical layout
        (N x C x H x W), evaluation mode."""
        ...

    def set_learning_rate(self, lr: float) -> None: ...

    def optimizer_state(self) -> tuple[Weights, dict[str, Any]]:
        """Optimizer arrays keyed 'WEIGHT_NAME::SLOT', and JSON-able scalars."""
        ...

    def load_optimizer_state(self, arrays: Weights, meta: dict[str, Any]) -> None: ...

    def available_memory(self) -> int | None:
        """Free bytes on the device, or None where the harness should ask the OS."""
        ...

    @property
    def model(self) -> Any:
        """The framework's own model object."""
        ...


class Backend(Protocol):
    """A backend module: ``cnnspec.backends.<name>``."""

    def open_session(
        self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto", compile: bool = False
    ) -> Session: ...

    def available_memory(self, device: str) -> tuple[str, int | None]:
        """(resolved device name, free bytes on it or None to ask the OS), allocating nothing."""
        ...

    def workspace_bytes(self, graph: Graph) -> int:
        """Bytes per sample the backend keeps for a training step beyond the layer
        outputs and their gradients (0 where it keeps nothing more)."""
        ...
