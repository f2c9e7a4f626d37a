"""`cnnspec check` tables stored as files (regenerate: make golden), and their rows add up."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnspec
from cnnspec.report import check_json, check_text

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
