"""The one rule by which numbers from two engines agree (numpy, torch, tensorflow,
onnxruntime, Spark, an exported file): the largest absolute difference, relative to the
largest magnitude of the reference values.

Two engines that compute the same float32 network take different kernels (a different
summation order, fused multiply-adds, AVX2 or AVX-512, oneDNN or MLAS), so their results
differ in the last digits, by amounts that change from one CPU to the next. Judged
element by element at bit-level tolerances (``rtol=1e-5`` on a value near zero), that
holds on one machine and fails on another. Judged against the values' own magnitude, it
holds wherever float32 does. ``verify``, ``export``, ``import``, the runtime check and the
tests all judge this way; exact equality is kept for where the same code computes both
sides.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

TOLERANCE = 1e-4  # float32 networks: ~1e-6 is usual, 1e-4 leaves room for deep ones and any CPU
FLOAT64_TOLERANCE = 1e-9  # the same formulas in float64 (the optimizers' and losses' definitions)
_FLOOR = 1e-12  # a reference that is all zeros: the error is then absolute


def agreement(got: ArrayLike, expected: ArrayLike) -> tuple[float, float]:
    """(largest absolute difference, that difference relative to the largest magnitude
    of ``expected``). NaN anywhere gives NaN, which agrees with nothing."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise ValueError(f"shapes differ: {got.shape} against {expected.shape}")
    if not got.size:
        return 0.0, 0.0
    absolute = float(np.abs(got - expected).max())
    return absolute, absolute / max(float(np.abs(expected).max()), _FLOOR)


def agrees(got: ArrayLike, expected: ArrayLike, tolerance: float = TOLERANCE) -> bool:
    return agreement(got, expected)[1] <= tolerance  # False for NaN


def assert_agrees(got: ArrayLike, expected: ArrayLike, tolerance: float = TOLERANCE, what: str = "") -> None:
    """Raise AssertionError, with both errors, where ``got`` and ``expected`` disagree."""
    absolute, relative = agreement(got, expected)
    if not relative <= tolerance:
        raise AssertionError(f"{what + ': ' if what else ''}relative error {relative:.3e} > {tolerance:g} "
                             f"(max abs {absolute:.3e}, reference magnitude {float(np.abs(np.asarray(expected)).max()):.3e})")


def spread(outputs: ArrayLike) -> float:
    """How much a batch of outputs varies from one input to the next, relative to their
    magnitude: 0 for a network that answers every input alike (a comparison of such
    outputs cannot tell a right import from a constant)."""
    outputs = np.asarray(outputs, np.float64)
    if len(outputs) < 2:
        return 0.0
    return float(np.abs(outputs - outputs[:1]).max()) / max(float(np.abs(outputs).max()), _FLOOR)
