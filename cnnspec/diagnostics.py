"""Errors that point at a place in a spec file: ``PATH:LINE:COL: error: message``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cnnspec.errors import CnnspecError


@dataclass(frozen=True)
class Location:
    path: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    location: Location
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"

    @classmethod
    def at_file(cls, path: str, message: str) -> Diagnostic:
        """A problem with a file as a whole (unreadable, say): points at line 1."""
        return cls(Location(path, 1, 1), message)


class SpecError(CnnspecError):
    """One or more problems in a spec; ``diagnostics`` holds every one found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(
            diagnostics, key=lambda d: (d.location.path, d.location.line, d.location.col)
        )
        super().__init__("\n".join(str(d) for d in self.diagnostics))


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
