"""`cnnspec check` tables stored as files (regenerate: make golden), and their rows add up."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnspec
from cnnspec.views.check import check_json, check_text

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_check_table_matches_golden(name: str, update_golden: bool) -> None:
    text = check_text(cnnspec.load_spec(name))
    path = GOLDEN / f"{name}.txt"
    if update_golden:
        path.write_text(text)
    assert path.exists(), f"no golden table for {name}: run 'make golden'"
    assert text == path.read_text(), f"check table of {name} changed; if intended, run 'make golden'"


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_golden_rows_add_up_to_totals(name: str) -> None:
    """Parse the stored table itself, so the file a reader sees is proven consistent."""
    lines = (GOLDEN / f"{name}.txt").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Layer"))
    params = macs = 0
    total_row = None
    for line in lines[header + 2:]:
        cells = line.split()
        if cells[:1] == ["Total"]:
            total_row = cells
            break
        if len(cells) >= 5 and not line.startswith("  ") and cells[0] != "input":  # not a wrapped line
            params += int(cells[3].replace(",", ""))
            macs += int(cells[4].replace(",", ""))
    assert total_row is not None
    assert (params, macs) == (int(total_row[2].replace(",", "")), int(total_row[3].replace(",", "")))
    summary = check_json(cnnspec.load_spec(name))
    assert params == summary["params"]
    assert macs == summary["macs"]


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_json_rows_add_up(name: str) -> None:
    summary = check_json(cnnspec.load_spec(name))
    rows = summary["layers"]
    for key in ("params", "non_trainable", "macs"):
        assert sum(row[key] for row in rows) == summary[key]
    assert summary["flops"] == 2 * summary["macs"]
    assert rows[-1]["output_shape"] == summary["output_shape"]


def _rich_table_text(headers: list[str], justify: list[str], rows: list[list[str]], footer: list[str]) -> str:
    """The same cells laid out by rich as the CLI's other tables are (SIMPLE_HEAD)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_footer=True, pad_edge=False)
    for header, how, foot in zip(headers, justify, footer, strict=True):
        table.add_column(header, footer=foot, justify=how, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=10_000, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


@pytest.mark.parametrize("name", ["lenet5", "googlenet"])
def test_check_table_is_laid_out_as_rich_lays_it_out(name: str) -> None:
    """`check` lays out its table itself (rich costs more than the check at start-up); it
    must look like every other table the CLI prints."""
    from cnnspec.views.check import check_cells, check_table

    graph = cnnspec.load_spec(name)
    cells = check_cells(graph)
    assert cells.headers[-1] == ("Inputs" if name == "googlenet" else "MACs")
    assert "\n".join(check_table(graph)) == _rich_table_text(*cells)


def test_a_terminal_wraps_only_the_inputs_column() -> None:
    from cnnspec.views.check import check_table

    graph = cnnspec.load_spec("googlenet")
    lines = check_table(graph, width=140)
    assert max(len(line) for line in lines) <= 140
    start = lines[1].index("Inputs")
    concat = next(node for node in graph.nodes if node.name == "inception3a.concat")
    first = next(i for i, line in enumerate(lines) if line.split()[:1] == [concat.name])
    inputs = [lines[first][start:]]
    for line in lines[first + 1:]:
        if line[:start].strip():
            break
        inputs.append(line[start:])  # a continuation: every other column blank
    assert len(inputs) > 1
    assert " ".join(inputs) == ", ".join(concat.inputs)
    # names and numbers are never cut, however narrow the terminal
    narrow = check_table(graph, width=40)
    assert sum("inception5b.branch2.1.relu_1" in line for line in narrow) == 2  # its own row, and the concat's inputs
    assert any("1,498,376,192" in line for line in narrow)


def test_a_terminal_gets_bold_and_dim_unless_it_asks_for_no_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from cnnspec.views.check import render_check
    from cnnspec.views.textable import Terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    render_check(cnnspec.load_spec("lenet5"), Terminal(out, width=80))
    assert out.getvalue().startswith("\x1b[1mlenet5: 1x32x32 -> 10\x1b[0m\n\x1b[2mLeNet-5")
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    render_check(cnnspec.load_spec("lenet5"), Terminal(out, width=80))
    assert "\x1b[" not in out.getvalue() and out.getvalue().startswith("lenet5: 1x32x32 -> 10\n")
