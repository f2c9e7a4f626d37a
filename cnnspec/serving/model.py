"""The served model: a run's scorer (the engine ``predict`` uses, verified as it verifies),
the batcher in front of it, its metrics and its card."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import Session
from cnnspec.inference.engines import AUTO_RUNTIME_IMAGES
from cnnspec.inference.scorer import Scorer, softmax
from cnnspec.serving.batcher import Batcher
from cnnspec.serving.metrics import Metrics


@dataclasses.dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # rows the engine computes together
    max_delay: float = 0.0  # seconds a batch may wait to fill
    max_queue: int = 1024  # rows waiting, past which requests get 503
    timeout: float = 30.0  # seconds a request may take, past which it gets 504
    max_body: int = 16 * 2**20  # bytes, past which a request gets 413
    max_images: int = 64  # images one classify request may carry


class ServedModel:
    def __init__(self, run: Path, open_session: Callable[..., Session], *, name: str | None = None, runtime: str = "auto",
                 device: str = "auto", limits: Limits | None = None, neighbours: Neighbours | None = None) -> None:
        limits = limits or Limits()
        self.scorer = Scorer(run, open_session, device, batch_size=limits.max_batch)
        loaded = self.scorer.loaded
        self.name = name or loaded.graph.name
        self.limits = limits
        # a server computes many images: auto weighs building the ONNX engine as predict does for a large input
        self.runtime = self.scorer.use_runtime(runtime, max(AUTO_RUNTIME_IMAGES, limits.max_batch))
        self.metrics = Metrics(self.name)
        self.batcher = Batcher(self.scorer.outputs, self.metrics, limits.max_batch, limits.max_delay, limits.max_queue)
        self.ready = False
        self.classes: list[str] = self.scorer.classes
        self.input_shape = tuple(loaded.graph.input_shape)
        self.neighbours = neighbours

    def warm(self) -> None:
        """One full batch through the engine (first calls allocate and compile), then ready."""
        self.scorer.outputs(np.zeros((self.limits.max_batch, *self.input_shape), np.uint8))
        self.ready = True

    async def outputs(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels (N x C x H x W, 0..255) -> logits, through the batcher."""
        return await self.batcher.submit(pixels)

    async def prepare(self, images: list[bytes]) -> list[np.ndarray | str]:
        """Each image file prepared exactly as ``predict`` prepares it (decoding off the event
        loop), or the reason it cannot be."""
        from cnnspec.data.decode import BadImage

        def run() -> list[np.ndarray | str]:
            out: list[np.ndarray | str] = []
            for content in images:
                try:
                    out.append(self.scorer.prepare(content))
                except (BadImage, OSError) as exc:
                    out.append(f"cannot read image ({exc})")
            return out

        started = time.perf_counter()
        prepared = await asyncio.to_thread(run)
        self.metrics.stage("preprocess", time.perf_counter() - started)
        return prepared

    def ranked(self, logits: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        return self.scorer.ranked(logits, top)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(softmax(logits), np.float32)

    def card(self) -> dict[str, Any]:
        """What the page and the metadata show: spec, input, classes, size, checkpoint, engine."""
        graph = self.scorer.loaded.graph
        return {"name": self.name, "spec": graph.name, "input": list(self.input_shape), "classes": self.classes,
                "params": int(graph.params), "macs": int(graph.macs), "checkpoint": str(self.scorer.loaded.checkpoint),
                "engine": self.runtime, "max_batch": self.limits.max_batch,
                "index": None if self.neighbours is None else {"images": len(self.neighbours.index), "layer": self.neighbours.layer,
                                                               "metric": self.neighbours.index.metric}}

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata."""
        width = len(self.classes)
        return {"name": self.name, "versions": ["1"], "platform": "cnnspec",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *self.input_shape],
                            "parameters": {"range": "[0, 1]; or UINT8 pixels 0..255"}}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, width]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, width]}]}

    def close(self) -> None:
        self.batcher.close()


class Neighbours:
    """An index from ``cnnspec embed``, searched for uploaded images embedded exactly as the
    index's images were (its run's checkpoint, layer and preparation), as ``similar`` does.
    Searches run one at a time on a worker thread, off the event loop."""

    def __init__(self, path: Path, open_session: Callable[[str], Callable[..., Session]], *, runtime: str = "auto", device: str = "auto") -> None:
        import threading

        from cnnspec.runs.loading import load_run
        from cnnspec.search.index import Index, SearchError

        self.index = Index.load(path)
        checkpoint = Path(self.index.meta["run"]) / "checkpoints" / self.index.meta["checkpoint"]
        if not checkpoint.is_dir():
            raise SearchError(f"{path} was embedded by {checkpoint}, which is gone: queries cannot be embedded the same way; embed again")
        self.layer = self.index.meta["layer"]
        self.scorer = Scorer(checkpoint, open_session(load_run(checkpoint).info["backend"]), device)
        self.runtime = self.scorer.use_runtime(runtime, AUTO_RUNTIME_IMAGES, (self.layer,))
        self._one_at_a_time = threading.Lock()

    async def search(self, names: list[str], pixels: np.ndarray, k: int) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with self._one_at_a_time:
                scores, rows = self.index.search(self.scorer.embeddings(pixels, self.layer), k)
            return self.index.neighbours(names, scores, rows)

        return await asyncio.to_thread(run)
