"""Receptive fields through a stack of windows (Araujo et al., "Computing Receptive
Fields of Convolutional Neural Networks", Distill 2019).

Along one axis, a layer with effective kernel k and stride s maps (r, j), the receptive
field and the jump (distance in input pixels between adjacent outputs), to
(r + (k - 1) * j, j * s).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[int, int] = (1, 1)  # input pixels seen by one output element (h, w)
    jump: tuple[int, int] = (1, 1)  # input pixels between adjacent outputs (h, w)

    def through(self, kernel: tuple[int, int], stride: tuple[int, int]) -> ReceptiveField:
        """After a window of effective size ``kernel`` and ``stride``."""
        size = tuple(r + (k - 1) * j for r, k, j in zip(self.size, kernel, self.jump, strict=True))
        jump = tuple(j * s for j, s in zip(self.jump, stride, strict=True))
        return ReceptiveField(size=(size[0], size[1]), jump=(jump[0], jump[1]))

    @staticmethod
    def merge(fields: list[ReceptiveField]) -> ReceptiveField:
        """Where branches meet, an output sees the union: the largest field."""
        return ReceptiveField(
            size=(max(f.size[0] for f in fields), max(f.size[1] for f in fields)),
            jump=(max(f.jump[0] for f in fields), max(f.jump[1] for f in fields)),
        )
