"""Scorer: images in, probabilities (and chosen layers' outputs) out, prepared as the run was trained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import Session
from cnnspec.data.decode import BadImage
from cnnspec.errors import TrainingError
from cnnspec.inference.engines import backend_of, inference_engine, open_run_session
from cnnspec.inference.features import layer_outputs
from cnnspec.runs.loading import load_run


class Scorer:
    """A trained run ready to score images: each file prepared exactly as evaluation
    prepares it (``Transform.from_file``), normalised as in training. ``predict`` and the
    Spark UDFs both score through it, so their numbers are the same."""

    def __init__(self, path: Path, open_session: Callable[..., Session], device: str = "auto", batch_size: int | None = None) -> None:
        from cnnspec.data.decode import image_shape
        from cnnspec.data.transforms import Transform

        self.loaded = load_run(path)
        self.device = device
        self.batch_size = batch_size or self.loaded.config.batch_size  # images per engine call
        self._open_session = open_session
        self._session: Session | None = None  # opened on first use: an onnxruntime engine never needs it
        self._engine: Any = None
        self.runtime = ""
        self.classes: list[str] = self.loaded.info["classes"]
        self._shape = self.loaded.graph.input_shape
        self._transform = Transform(image_shape(self._shape), self.loaded.config.data.fit, self.loaded.config.data.resize) if len(self._shape) == 3 else None

    def prepare(self, content: bytes) -> np.ndarray:
        """An image file's bytes -> C x H x W uint8 pixels at the network's input."""
        if self._transform is None:
            from cnnspec.data.decode import image_shape

            image_shape(self._shape)  # raises: the input is not an image
        assert self._transform is not None
        return self._transform.from_file(content)

    @property
    def session(self) -> Session:
        """The run's backend session, opened with the checkpoint's weights on first use."""
        if self._session is None:
            self._session = open_run_session(self.loaded, self._open_session, self.device)
        return self._session

    @property
    def engine(self) -> Any:
        """What computes outputs: the session, unless ``use_runtime`` chose another."""
        if self._engine is None:
            self._engine = self.session
            self.runtime = f"{backend_of(self.session)} backend ({self.session.device})"
        return self._engine

    def use_runtime(self, runtime: str, images: int, layers: tuple[str, ...] = ()) -> str:
        """Choose the engine (``inference_engine``), one that also gives ``layers``'
        outputs (for ``embeddings``); returns which, in words."""
        self._engine, self.runtime = inference_engine(self.loaded, lambda: self.session, self.device, runtime, images, layers)
        return self.runtime

    def read_inputs(self, inputs: list[Path]) -> tuple[list[np.ndarray], list[str]]:
        """Image files (fitted to the input as evaluation fits them) and .npy batches (N x C
        x H x W in [0, 1]) as raw-scale pixel batches, with a name for each image."""
        from cnnspec.data.errors import DataError

        shape = self.loaded.graph.input_shape
        arrays, names = [], []
        for item in inputs:
            if item.suffix == ".npy":
                try:
                    batch = np.load(item, allow_pickle=False).astype(np.float32, copy=False)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{item}: not a .npy array ({exc})") from None
                if batch.ndim == 3:
                    batch = batch[None]
                if tuple(batch.shape[1:]) != shape:
                    raise TrainingError(f"{item}: batch is {batch.shape}, the network takes N x {' x '.join(map(str, shape))}")
                batch /= np.float32(self.loaded.normalization.scale)  # back to the raw pixel scale, in place: one copy in memory
                arrays.append(batch)
                names += [f"{item}[{i}]" for i in range(len(batch))]
            else:
                try:
                    arrays.append(self.prepare(item.read_bytes())[None].astype(np.float32))
                except (BadImage, OSError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    raise DataError(f"{item}: cannot read image ({reason})") from None
                names.append(str(item))
        return arrays, names

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels (N x C x H x W, uint8 or float on the 0..255 scale) -> network outputs,
        normalised a batch at a time (memory stays one batch above the input's)."""
        if not len(x):
            return np.zeros((0, self.loaded.graph.output_shape[0]), np.float32)
        step = self.batch_size
        return np.concatenate([self.engine.predict(self.loaded.normalization.apply(x[i : i + step])) for i in range(0, len(x), step)])

    def embeddings(self, x: np.ndarray, layer: str) -> np.ndarray:
        """``layer``'s output for raw pixels, flattened: N x D float32."""
        values, _ = layer_outputs(self.engine, self.loaded.normalization, x, layer, self.batch_size)
        return values.reshape(len(values), -1)

    @staticmethod
    def ranked(outputs: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, probabilities), N x k each, best first."""
        probabilities = softmax(outputs)
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(top, outputs.shape[1])]
        return best, np.take_along_axis(probabilities, best, axis=1)


def softmax(x: np.ndarray) -> np.ndarray:
    """Probabilities from logits, row by row."""
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
