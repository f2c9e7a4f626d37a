"""The ``train:`` section of a spec: how to train it, every field with a default.

Validated with the rest of the spec (errors point at its lines); the command line
overrides any field (``--epochs 3``, ``--set optimizer.momentum=0.95``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from cnnspec.layers.base import PositiveInt, PositiveNumber, Rate

NonNegativeNumber = Annotated[float, Field(ge=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Augment(_Section):
    """Training-time augmentation (never applied to validation data)."""

    random_crop: Annotated[StrictInt, Field(ge=0, description="pad by this many pixels, then crop back at a random offset; 0 is off")] = 0
    hflip: StrictBool = Field(default=False, description="flip left-right with probability 1/2")


class Normalize(_Section):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0.0)]]


FitMode = Literal["auto", "pad", "resize"]


class DataConfig(_Section):
    source: StrictStr = Field(default="digits", description="digits, synthetic, or a path: IDX directory, image class folders, a .csv or .jsonl manifest, tar shards, CIFAR-10 batches, .npz")
    validation: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(default=0.2, description="fraction held out when the data has no validation split")
    fit: FitMode = Field(default="auto", description="how images meet the input size: auto pads when at most 25% smaller, else resizes")
    normalize: Literal["standard", "unit", "none"] | Normalize = Field(
        default="standard", description="standard: per-channel mean/std of the training set; unit: scale to [0, 1]; or explicit {mean, std} on [0, 1] data"
    )
    augment: Augment = Augment()
    limit: PositiveInt | None = Field(default=None, description="use at most this many training images (smoke tests)")
    strict: StrictBool = Field(default=False, description="an unreadable image or a missing file is an error, not a skipped and counted sample")
    stream: Literal["auto", "always", "never"] = Field(
        default="auto", description="image files: decode each batch in workers while training (always), decode once into memory (never), or auto: in memory when the decoded set fits 2 GiB and a quarter of the available memory"
    )
    workers: Annotated[StrictInt, Field(ge=0)] | None = Field(default=None, description="processes that decode image files (default: the cores available; 0 decodes in the training process)")


class OptimizerConfig(_Section):
    name: Literal["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw"] = "adam"
    lr: PositiveNumber = 1e-3
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd and rmsprop
    nesterov: StrictBool = False  # sgd
    weight_decay: NonNegativeNumber = 0.0
    betas: tuple[Rate, Rate] = (0.9, 0.999)  # adam, adamw
    eps: PositiveNumber = 1e-8
    alpha: Rate = 0.99  # rmsprop smoothing
    rho: Rate = 0.9  # adadelta


class ScheduleConfig(_Section):
    """Learning rate by epoch: constant, step (x gamma every step_size epochs),
    exponential (x gamma each epoch), cosine (to min_lr over the run), plateau (x factor
    after patience epochs without val_loss improving); with optional linear warm-up."""

    name: Literal["constant", "step", "exponential", "cosine", "plateau"] = "constant"
    step_size: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: PositiveInt = 3
    min_lr: NonNegativeNumber = 0.0
    warmup_epochs: Annotated[StrictInt, Field(ge=0)] = 0


class EarlyStopping(_Section):
    patience: PositiveInt | None = Field(default=None, description="stop after this many epochs without improvement; none is off")
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    min_delta: NonNegativeNumber = 0.0


class TrainConfig(_Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    seed: StrictInt = 0
    loss: Literal["cross_entropy", "mse", "hinge"] = "cross_entropy"
    label_smoothing: Rate = 0.0
    clip_grad_norm: PositiveNumber | None = None
    top_k: PositiveInt = 5
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    early_stopping: EarlyStopping = EarlyStopping()
    checkpoint_minutes: PositiveNumber | None = Field(
        default=10.0, description="also checkpoint inside an epoch this often, so that --resume continues the epoch where it stopped; none: at epoch ends only"
    )
    checkpoint_steps: PositiveInt | None = Field(default=None, description="also checkpoint inside an epoch every this many steps")


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with dotted keys set: {'optimizer.lr': 0.1}."""
    result: dict[str, Any] = _plain(base)
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
