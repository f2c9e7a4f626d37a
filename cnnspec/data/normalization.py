"""The pixel normalisation a run records and applies: scale, then mean and std per channel."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnspec.data.loader import ImageStream
from cnnspec.errors import TrainingError
from cnnspec.spec.training import TrainConfig


@dataclasses.dataclass(frozen=True)
class Normalization:
    scale: float  # applied first: 1/255 for uint8 data
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """N x C x H x W (uint8 or float) -> normalised float32."""
        out = x.astype(np.float32) * np.float32(self.scale)
        if out.ndim == 4:
            out -= np.asarray(self.mean, np.float32)[:, None, None]
            out /= np.asarray(self.std, np.float32)[:, None, None]
        return out


def normalization_for(config: TrainConfig, x_train: np.ndarray | ImageStream) -> Normalization:
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    channels = x_train.shape[1]
    mode = config.data.normalize
    if mode == "none":
        return Normalization(1.0, (0.0,) * channels, (1.0,) * channels)
    if mode == "unit":
        return Normalization(scale, (0.0,) * channels, (1.0,) * channels)
    if mode == "standard":
        if isinstance(x_train, ImageStream):  # 1,000 images, evenly spaced, estimate a large set well
            picked = x_train.load(np.unique(np.linspace(0, len(x_train) - 1, min(len(x_train), 1_000)).astype(np.int64)))[1]
        else:
            picked = x_train[:: max(1, len(x_train) // 10_000)]
        if not len(picked):
            unread = "; ".join(x_train.skipped[:3]) if isinstance(x_train, ImageStream) else "the set is empty"
            raise TrainingError(f"no training image could be read to measure the normalisation ({unread})")
        sample = picked.astype(np.float64) * scale
        axes = (0, 2, 3) if sample.ndim == 4 else (0,)
        mean, std = sample.mean(axis=axes), sample.std(axis=axes)
        return Normalization(scale, tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std))
    if len(mode.mean) != channels or len(mode.std) != channels:
        raise TrainingError(f"normalize: mean and std need {channels} values (one per input channel)")
    return Normalization(scale, tuple(mode.mean), tuple(mode.std))
