"""The one exception class a caller catches.

Every problem cnnspec reports to a person (a spec, data, a run folder, a file, an option,
a missing framework) is a ``CnnspecError``: one line that says what and where, the line
the command line prints before it exits 1. Each subsystem's own class (``SpecError``,
``DataError``, ``TrainingError``, ...) derives from it, and from the built-in class it
has always been (``ValueError``, ``RuntimeError``, ``LookupError``), so older ``except``
clauses still hold. A bug in cnnspec itself is never one.

The helpers that word a message (did you mean, plurals) live here too, so that every
floor of the package can say a problem the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnspecError(Exception):
    """A problem with what cnnspec was given, said in one line."""


class TrainingError(CnnspecError, RuntimeError):
    """Training cannot go on; the message says why and what to do."""


# What Keras and PyTorch call cnnspec's arguments (layer kinds name theirs in ``aliases``).
ARGUMENT_ALIASES = {
    "pool_size": "kernel", "kernel_size": "kernel", "strides": "stride", "out_channels": "filters", "num_filters": "filters",
    "out_features": "units", "epsilon": "eps", "use_bias": "bias", "dilation_rate": "dilation", "p": "rate",
}


def _folded(word: str) -> str:
    return word.lower().replace("_", "")


def suggestion(word: str, choices: Iterable[str], aliases: dict[str, str] | None = None) -> str | None:
    """The choice ``word`` most likely means: the same name in another case or spelling
    (ReLU, max_pool2d), the other framework's name for it (pool_size, Dense), or a close
    misspelling."""
    options = list(choices)
    folded = {_folded(choice): choice for choice in options}
    if _folded(word) in folded:
        return folded[_folded(word)]
    table = {_folded(name): meant for name, meant in (ARGUMENT_ALIASES if aliases is None else aliases).items()}
    foreign = table.get(_folded(word))
    if foreign in options:
        return foreign
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], aliases: dict[str, str] | None = None) -> str:
    """' (did you mean 'filters'?)' when a likely match exists (see ``suggestion``), else ''."""
    close = suggestion(word, choices, aliases)
    return f" (did you mean '{close}'?)" if close is not None and close != word else ""


def plural(count: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
