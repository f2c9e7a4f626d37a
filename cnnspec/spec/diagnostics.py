"""Errors that point at a place in a spec file: ``PATH:LINE:COL: error: message``."""

from __future__ import annotations

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
