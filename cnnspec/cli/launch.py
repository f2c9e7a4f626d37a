"""The ``cnnspec`` command's entry point.

``cnnspec check SPEC [--format table|json]`` runs straight away: an editor or a
pre-commit hook runs it on every save, and the CLI framework (Typer builds a Pydantic
adapter per option before it runs a command) and rich cost more at start-up than
validating a spec does. Every other command line, ``--help`` and every usage error go to
the Typer app in :mod:`cnnspec.cli.app`, which runs the same :func:`cnnspec.views.check.run_check`
for ``check``; a test holds the two paths to the same output and exit status.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from cnnspec.cli.guard import guarded

_FORMATS = ("table", "json")


def plain_check(argv: Sequence[str]) -> tuple[str, str] | None:
    """(spec, format) when ``argv`` is ``check`` with one spec and at most a valid
    ``--format``; None for anything else, which Typer parses (and explains)."""
    if not argv or argv[0] != "check":
        return None
    spec: str | None = None
    format = "table"
    rest = list(argv[1:])
    while rest:
        word = rest.pop(0)
        if word in ("--format", "-f") and rest and rest[0] in _FORMATS:
            format = rest.pop(0)
        elif word.startswith("--format=") and word.partition("=")[2] in _FORMATS:
            format = word.partition("=")[2]
        elif word.startswith("-") or spec is not None:
            return None
        else:
            spec = word
    return None if spec is None else (spec, format)


def main() -> None:
    # Pydantic plugins instrument a program's own models; finding them means reading the
    # metadata of every installed package (10 ms of `check`). cnnspec's models need none.
    # A user who sets the variable, even to "", keeps their choice.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        plain = plain_check(sys.argv[1:])
        if plain is None:
            from cnnspec.cli.app import main as typer_main

            typer_main()
        else:
            guarded(lambda: sys.exit(_check(*plain)))
    finally:
        # The process ends here. Its last garbage collection walks every object Pydantic
        # and the layer registry made, a sixth of `cnnspec check`'s time; frozen objects
        # are left to the exit itself (files still flush and close, atexit still runs).
        gc.freeze()


def _check(spec: str, format: str) -> int:
    from cnnspec.views.check import run_check

    return run_check(spec, format)  # type: ignore[arg-type]
