"""The ``tune:`` section of a spec: what ``cnnspec tune`` searches, and how.

Its fixed keys are a Pydantic model, validated with the rest of the spec; the ``space:``
keys (training settings as ``--set`` names them, and ``layers.NAME.ARG``) need the
network to check, so ``cnnspec.graph.search_space`` checks them once it is built.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, field_validator

from cnnspec.layers.base import PositiveInt

PositiveBound = Annotated[float, Field(gt=0.0)]

# The ways to draw a value, by the key that names one in the space: {log_uniform: [lo, hi]}.
DIMENSIONS = {
    "uniform": "a float drawn evenly from [low, high]",
    "log_uniform": "a float drawn evenly on a log scale from [low, high] (both above 0): learning rates, weight decay",
    "int": "an integer from [low, high], both included",
    "log_int": "an integer from [low, high] on a log scale (both above 0): widths",
    "choice": "one of a list of values (numbers, names, true/false)",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Budget(_Section):
    """Limits a sampled network must meet before it trains: one over them is infeasible."""

    params: PositiveBound | None = Field(default=None, description="parameters at most")
    macs: PositiveBound | None = Field(default=None, description="multiply-accumulates per image at most")


class TuneConfig(_Section):
    metric: StrictStr = Field(default="val_accuracy", description="the epoch metric to optimise: val_accuracy, val_loss, val_topK, train_accuracy or train_loss")
    goal: Literal["maximize", "minimize"] | None = Field(default=None, description="default: maximize accuracies, minimize losses")
    trials: PositiveInt = Field(default=20, description="the study's total of trained trials (samples the static check rejects do not count)")
    sampler: Literal["tpe", "random", "grid"] = Field(default="tpe", description="tpe (Optuna's default), random, or grid (every combination of choice and int dimensions)")
    pruner: Literal["hyperband", "median", "none"] = Field(default="hyperband", description="stops unpromising trials after an epoch, from their validation metric")
    promote: StrictBool = Field(default=True, description="hyperband: a trial stopped at a rung that later ranks among those going on there continues from its checkpoint (as a new trial of the total)")
    budget: Budget = Budget()
    space: Annotated[dict[StrictStr, dict[StrictStr, Any]], Field(min_length=1)] = Field(
        description="KEY: {log_uniform: [lo, hi]}, {uniform: ...}, {int: ...}, {log_int: ...} or {choice: [...]}; KEY is a train: setting (optimizer.lr) or layers.NAME.ARG"
    )

    @field_validator("promote")
    @classmethod
    def _hyperband_promotes(cls, promote: bool, info: ValidationInfo) -> bool:
        if promote and info.data.get("pruner", "hyperband") != "hyperband":
            raise ValueError(f"promote is Hyperband's: with pruner {info.data['pruner']} a stopped trial stays stopped (remove promote, or use pruner: hyperband)")
        return promote

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        if self.goal is not None:
            return self.goal
        return "minimize" if self.metric.endswith("loss") else "maximize"


class SpecTune(BaseModel):
    """The section under its own key, so that errors name it as the spec spells it."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    tune: TuneConfig


def metrics_recorded(top_k: int) -> list[str]:
    """The per-epoch metrics a run records that a study can optimise."""
    return ["val_accuracy", "val_loss", f"val_top{top_k}", "train_accuracy", "train_loss"]
