"""Pure shape, parameter and cost arithmetic for convolutional networks.

Standard library only: nothing here knows about YAML, Pydantic or any framework, so the
rules can be read, tested and reused on their own (``cnnspec calc`` shows them worked
through). Layout conventions: activations are C x H x W, weights O x I x H x W.
"""

from __future__ import annotations

from cnnspec.calculators.cost import conv2d_macs, dense_macs
from cnnspec.calculators.params import (
    affine_params,
    batchnorm_params,
    conv2d_params,
    dense_params,
)
from cnnspec.calculators.receptive import ReceptiveField
from cnnspec.calculators.sizes import (
    Fraction,
    Rounding,
    SizeError,
    adaptive_windows,
    conv_out_size,
    pool_out_size,
    same_padding,
)

__all__ = [
    "Fraction",
    "ReceptiveField",
    "Rounding",
    "SizeError",
    "adaptive_windows",
    "affine_params",
    "batchnorm_params",
    "conv2d_macs",
    "conv2d_params",
    "conv_out_size",
    "dense_macs",
    "dense_params",
    "pool_out_size",
    "same_padding",
]
