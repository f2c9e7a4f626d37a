"""Plain-text tables in the look of the CLI's rich tables (rich's SIMPLE_HEAD box), for
``cnnspec check``.

``check`` runs on every save in an editor or a pre-commit hook, so it starts in about the
time Python takes to import PyYAML and Pydantic. Importing rich and laying out vgg16's
table with it took 35 to 39 ms more than this (2 cores, 31 paired process runs), more
than the whole 1.3x budget, so this one table is laid out here; every other table in the
CLI stays rich's. A test holds the two to the same text.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Literal, TextIO

Justify = Literal["left", "right"]
_GAP = "   "  # a cell's right padding, the column separator, the next cell's left padding
_RULE = "\u2500"


def table_lines(
    headers: Sequence[str],
    justify: Sequence[Justify],
    rows: Sequence[Sequence[str]],
    footer: Sequence[str] | None = None,
    wrap_last: bool = False,
    width: int | None = None,
) -> list[str]:
    """The table's lines, each column as wide as its widest cell: a name or a number is
    never cut. With ``wrap_last`` and a ``width``, the last column (free text, such as a
    layer's inputs) wraps to fit; without a width the table has its natural width."""
    columns = len(headers)
    cells = [list(headers), *([list(footer)] if footer else []), *(list(row) for row in rows)]
    widths = [max(len(line[index]) for line in cells) for index in range(columns)]
    if wrap_last and width is not None:  # wrapped between words only: a name is never split
        fixed = 2 + sum(widths[:-1]) + len(_GAP) * (columns - 1)
        longest_word = max(len(word) for line in cells for word in line[-1].split() or [""])
        widths[-1] = min(widths[-1], max(width - fixed, longest_word, len(headers[-1])))

    def line(values: Sequence[str]) -> list[str]:
        last = textwrap.wrap(values[-1], widths[-1], break_long_words=False, break_on_hyphens=False) if wrap_last else [values[-1]]
        out = []
        for part, text in enumerate(last or [""]):
            shown = [*(values[:-1] if part == 0 else [""] * (columns - 1)), text]
            padded = (value.rjust(w) if how == "right" else value.ljust(w) for value, w, how in zip(shown, widths, justify, strict=True))
            out.append(" " + _GAP.join(padded) + " ")
        return out

    inner = sum(widths) + len(_GAP) * (columns - 1)
    lines = ["", *line(headers), " " + _RULE * inner + " "]
    for row in rows:
        lines += line(row)
    if footer:
        lines += ["", *line(footer)]
    lines.append("")
    return [text.rstrip() for text in lines]


class Terminal:
    """Where plain text goes: its width, and whether bold and dim show as such (a
    terminal that has not asked for no colour, as rich decides)."""

    def __init__(self, stream: TextIO | None = None, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.is_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.styled = self.is_terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        if width is None:
            width = shutil.get_terminal_size((80, 24)).columns if self.is_terminal else _columns_or(80)
        self.width = width

    def write(self, text: str, style: Literal["bold", "dim"] | None = None, wrap: bool = False) -> None:
        lines = _wrapped(text, self.width) if wrap else [text]
        for line in lines:
            if style and self.styled:
                line = ("\x1b[1m" if style == "bold" else "\x1b[2m") + line + "\x1b[0m"
            self.stream.write(line + "\n")


def _columns_or(default: int) -> int:
    try:
        return max(int(os.environ.get("COLUMNS", default)), 1)
    except ValueError:
        return default


def _wrapped(text: str, width: int) -> list[str]:
    """Word-wrapped to ``width``, keeping the text's own line breaks."""
    return [part for paragraph in text.split("\n") for part in (textwrap.wrap(paragraph, width, break_on_hyphens=False) or [""])]
