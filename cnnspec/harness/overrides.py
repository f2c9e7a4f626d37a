"""Training settings given by name: ``--set optimizer.lr=0.01`` and ``train(lr=0.01)``.

A setting is its dotted path in the ``train:`` section (``optimizer.lr``), or, from Python,
``optimizer__lr`` or a plain name where only one field has it (``lr``, ``workers``,
``epochs``); ``data`` given a path is ``data.source``. Pydantic's errors for them come
back as ``OptionError``: one line per problem, an unknown key with its did-you-mean.
"""

from __future__ import annotations

import os
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from cnnspec.errors import CnnspecError, did_you_mean

if TYPE_CHECKING:
    from pydantic import ValidationError

SPEC_KEYS = {"input": "use --input-size H,W and --channels C (Python: train(..., input_size=(64, 64), channels=1))",
             "layers": "the layers are the spec's: write your own spec (cnnspec zoo NAME > mine.yaml prints one to edit)"}


class OptionError(CnnspecError, ValueError):
    """A training setting that is unknown, or whose value does not fit."""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (itself, or optional): not the items of a list of them."""
    if typing.get_origin(annotation) in (list, tuple, dict):
        return None
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def leaf_paths(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Each field name of ``model`` and its sections -> the dotted paths that end in it."""
    found: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        found.setdefault(name, []).append(path)
        nested = _model_of(info.annotation)
        if nested is not None:
            for leaf, paths in leaf_paths(nested, f"{path}.").items():
                found.setdefault(leaf, []).extend(paths)
    return found


def dotted_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Python keyword settings as dotted paths of the ``train:`` section; OptionError for a
    plain name that no field has, or that several have."""
    from cnnspec.spec.training import TrainConfig

    top = TrainConfig.model_fields
    paths = leaf_paths(TrainConfig)
    result: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = key.replace("__", ".")
        if dotted == "data" and isinstance(value, (str, os.PathLike)):
            dotted, value = "data.source", os.fspath(value)
        elif "." not in dotted and dotted not in top:
            if dotted in SPEC_KEYS:
                raise OptionError(f"'{dotted}' is not a training setting: {SPEC_KEYS[dotted]}")
            where = paths.get(dotted, [])
            if not where:
                raise OptionError(f"unknown key '{key}'{did_you_mean(dotted, [*top, *paths])}")
            if len(where) > 1:
                raise OptionError(f"'{key}' is a setting of several sections: name one ({', '.join(w.replace('.', '__') for w in where)})")
            dotted = where[0]
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        result[dotted] = value
    return result


def option_errors(exc: ValidationError) -> list[str]:
    """A line per problem: an unknown key with its did-you-mean among the keys there (and,
    for a key of the spec rather than of training, what sets it)."""
    from cnnspec.spec.grammar import fields_at
    from cnnspec.spec.training import TrainConfig

    lines = []
    for error in exc.errors():
        dotted = ".".join(map(str, error["loc"]))
        if error["type"] == "extra_forbidden":
            parent = [str(p) for p in error["loc"][:-1]]
            if not parent and str(error["loc"][-1]) in SPEC_KEYS:
                lines.append(f"unknown key '{dotted}': it is the spec's, not train's; {SPEC_KEYS[str(error['loc'][-1])]}")
                continue
            lines.append(f"unknown key '{dotted}'{did_you_mean(str(error['loc'][-1]), fields_at(TrainConfig, parent))}")
        else:
            lines.append(f"{dotted}: {error['msg']}")
    return lines
