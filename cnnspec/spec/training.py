"""The ``train:`` section of a spec: how to train it, every field with a default.

Validated with the rest of the spec (errors point at its lines); the command line
overrides any field (``--epochs 3``, ``--set optimizer.momentum=0.95``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from cnnspec.layers.base import PositiveInt, PositiveNumber, Rate

NonNegativeNumber = Annotated[float, Field(ge=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"a range is [low, high]; got [{pair[0]}, {pair[1]}]")
    return pair


class RandomResizedCrop(_Section):
    """Cut a random box (a fraction ``scale`` of the image's area, of aspect ratio within
    ``ratio``) from the image at full size and resize it to the input: the training crop
    of the ImageNet recipe (torchvision's RandomResizedCrop, with the same defaults)."""

    scale: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (0.08, 1.0)
    ratio: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = (3 / 4, 4 / 3)

    _ranges = field_validator("scale", "ratio")(_ordered)


class ColorJitter(_Section):
    """Random brightness, contrast and saturation: each multiplied by a factor drawn from
    [1 - amount, 1 + amount], in a random order (torchvision's ColorJitter without hue)."""

    brightness: Rate = 0.0
    contrast: Rate = 0.0
    saturation: Rate = 0.0


class Augment(_Section):
    """Training-time augmentation (never applied to validation data). Each sample's random
    draws are seeded by (seed, epoch, sample), so runs repeat exactly."""

    random_crop: Annotated[StrictInt, Field(ge=0, description="pad by this many pixels, then crop back at a random offset; 0 is off")] = 0
    hflip: StrictBool = Field(default=False, description="flip left-right with probability 1/2")
    random_resized_crop: RandomResizedCrop | None = Field(
        default=None, description="true (or {scale, ratio}): a random box of the image at full size, resized to the input; replaces fit for training images"
    )
    color_jitter: ColorJitter | None = Field(default=None, description="{brightness, contrast, saturation}: random factors in [1 - amount, 1 + amount]")

    @field_validator("random_resized_crop", "color_jitter", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        """``true`` turns a transform on with its defaults, ``false`` off."""
        if value is True:
            return {}
        return None if value is False else value

    @property
    def per_sample(self) -> bool:
        """Whether each sample needs its own random transform (not a whole-batch one)."""
        return self.random_resized_crop is not None or (self.color_jitter is not None and self.color_jitter != ColorJitter())


class Normalize(_Section):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0.0)]]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


FitMode = Literal["auto", "pad", "resize", "crop", "letterbox"]


class DataConfig(_Section):
    source: StrictStr = Field(default="digits", description="digits, synthetic, or a path: IDX directory, image class folders, a .csv or .jsonl manifest, tar shards, CIFAR-10 batches, .npz")
    validation: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(default=0.2, description="fraction held out when the data has no validation split")
    preset: Literal["auto", "imagenet", "none"] = Field(
        default="auto",
        description="imagenet: fit crop, random resized crops and flips for training, ImageNet mean/std (fields set here win); auto: imagenet for image files at a square RGB input of 224 or more, else none",
    )
    fit: FitMode = Field(
        default="auto", description="how images meet the input size: crop (shorter side to `resize`, then the centre: the aspect ratio kept), pad (centred on black), resize (to the input, aspect ignored); auto: image files crop (shorter side to the input's, or 256 for 224 under the imagenet preset), arrays (one size) pad when at most 25% smaller, else resize"
    )
    resize: PositiveInt | None = Field(default=None, description="fit crop: the shorter side before the centre crop (default: the input side / 0.875, 256 for 224; when fit auto chooses crop for image files without the imagenet preset, the input side)")
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


def photo_sized(shape: tuple[int, ...]) -> bool:
    """A square RGB input of 224 or more: where the ImageNet recipe is what people expect."""
    return len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2] and shape[1] >= 224


def resolve_preset(config: DataConfig, shape: tuple[int, ...], image_files: bool) -> DataConfig:
    """``config`` with its preset applied: the preset's value for every field the spec and
    the command line left unset, and ``preset`` itself made ``imagenet`` or ``none``, so a
    run records what it did and applying this again changes nothing."""
    preset = config.preset
    if preset == "auto":
        preset = "imagenet" if image_files and photo_sized(shape) else "none"
    if preset == "none":
        update: dict[str, Any] = {"preset": "none"}
        if image_files and config.fit == "auto" and len(shape) == 3:  # one rule for every file, whatever its size: the aspect ratio kept
            update |= {"fit": "crop", "resize": config.resize or max(shape[1:])}
        return config.model_copy(update=update)
    augment = config.augment
    augment_fill = {"random_resized_crop": RandomResizedCrop(), "hflip": True}
    fill = {"fit": "crop", "normalize": Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))}
    return config.model_copy(
        update={
            **{key: value for key, value in fill.items() if key not in config.model_fields_set or (key == "fit" and config.fit == "auto")},
            "augment": augment.model_copy(update={key: value for key, value in augment_fill.items() if key not in augment.model_fields_set}),
            "preset": "imagenet",
        }
    )


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


class Phase(_Section):
    """A stretch of a run with its own frozen layers, multipliers and learning rate (each
    left unset is the run's): "3 epochs head only, then layer4 too at a tenth"."""

    epochs: PositiveInt
    freeze: list[StrictStr] | None = None
    lr_mult: dict[StrictStr, NonNegativeNumber] | None = None
    decay_mult: dict[StrictStr, NonNegativeNumber] | None = None
    lr: PositiveNumber | None = Field(default=None, description="the phase's learning rate (default: optimizer.lr)")


class DistributedConfig(_Section):
    """How the processes of a data-parallel run (torchrun, ``--nproc``, Spark) train together."""

    sync_batchnorm: StrictBool = Field(
        default=False, description="batch statistics over every process's share of the batch (CUDA only); off: each process's own"
    )
    check_replicas: PositiveInt | None = Field(
        default=None, description="every this many steps, the processes compare their weights and stop, naming the one that differs"
    )


class ClassifierSolve(_Section):
    """Training the classifier alone (``--head-only``) as the convex problem it is:
    multinomial logistic regression with an L2 penalty on the frozen body's features,
    solved by L-BFGS to convergence (scikit-learn's ``LogisticRegression``)."""

    c: PositiveNumber = Field(default=1.0, description="inverse penalty strength, as scikit-learn's C: the loss is the mean cross-entropy plus |W|^2 / (2 C N)")
    max_iterations: PositiveInt = Field(default=1000, description="L-BFGS iterations at most")
    tolerance: PositiveNumber = Field(default=1e-6, description="stop when no gradient component is larger")


class TrackConfig(_Section):
    """Where a run is also recorded, besides its folder."""

    mlflow: StrictStr | None = Field(
        default=None, description="an MLflow tracking URI: sqlite:///mlflow.db (a file, no server), a folder, or http://host:5000; none: off"
    )
    experiment: StrictStr | None = Field(default=None, description="the MLflow experiment (default: the spec's name)")
    log_model: StrictBool = Field(default=True, description="log the best checkpoint's verified ONNX export as an MLflow model (needs the onnx extra)")


class TrainConfig(_Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = Field(default=64, description="images per step; in a distributed run, over all processes together (each takes its share)")
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
    keep: PositiveInt | Literal["all"] | None = Field(
        default=1, description="epoch checkpoints kept: the newest this many (the latest, which --resume continues), and the best; all (or none): every one"
    )
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        default="auto", description="the torch backend's tensor layout: auto (channels-last on CUDA, and on CPU for networks where it measured faster), or forced"
    )
    classes: Literal["spec", "auto"] | PositiveInt = Field(
        default="spec", description="the output layer's width: the spec's, the data's class count (auto), or N; a resized output layer starts fresh"
    )
    freeze: list[StrictStr] = Field(
        default=[], description="layers that do not train: names, groups (layer1), globs (layer1.*) or before:NAME; their batch norm stays in inference mode"
    )
    lr_mult: dict[StrictStr, NonNegativeNumber] = Field(default={}, description="learning-rate multiplier by layer pattern ({layer4: 0.1})")
    decay_mult: dict[StrictStr, NonNegativeNumber] = Field(default={}, description="weight-decay multiplier by layer pattern ({fc: 0})")
    phases: list[Phase] = Field(default=[], description="consecutive phases, one run; their epochs replace epochs")
    bottleneck_cache: StrictBool = Field(
        default=True, description="when the frozen layers end in one layer's output and nothing changes the images between epochs, compute it once and train the head on it"
    )
    distributed: DistributedConfig = DistributedConfig()
    track: TrackConfig = TrackConfig()
    solve: ClassifierSolve | None = Field(
        default=None, description="when only the classifier trains, on cached features: solve it to convergence (--head-only sets it); none: the optimizer's epochs"
    )


class SpecTraining(BaseModel):
    """A spec's ``train:`` section under its own key, so that errors name it as the spec
    spells it (``train.optimizer.lr``) and point at its lines."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    train: TrainConfig


def phase_plan(config: TrainConfig) -> list[tuple[int, int, TrainConfig]]:
    """(first epoch, end epoch, the config it trains with) of each phase; one phase, the
    whole run, when none are declared."""
    if not config.phases:
        return [(0, config.epochs, config)]
    plan, start = [], 0
    for phase in config.phases:
        update: dict[str, Any] = {key: getattr(phase, key) for key in ("freeze", "lr_mult", "decay_mult") if getattr(phase, key) is not None}
        if phase.lr is not None:
            update["optimizer"] = config.optimizer.model_copy(update={"lr": phase.lr})
        plan.append((start, start + phase.epochs, config.model_copy(update={**update, "epochs": sum(p.epochs for p in config.phases)})))
        start += phase.epochs
    return plan


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
