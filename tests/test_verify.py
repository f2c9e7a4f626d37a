"""`cnnspec verify`: backends compared layer by layer, and a broken lowering caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zoo_cases import SIZES, spec_target

import cnnspec
from cnnspec.backends import installed_backends
from cnnspec.cli.app import app

torch = pytest.importorskip("torch")
from cnnspec.backends import torch_lowering  # noqa: E402

runner = CliRunner()



@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_zoo_spec_agrees_across_backends(name: str, tmp_path: Path) -> None:
    args = ["verify", spec_target(name, tmp_path), "--format", "json"] + (["--input-size", SIZES[name]] if SIZES[name] else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["agree"] and report["first_divergence"] is None
    assert report["backends"] == installed_backends()  # by default, every installed one
    assert len(report["layers"]) == len(cnnspec.load_spec(name).nodes)
    for backend in report["backends"][1:]:
        assert report["output"][backend]["max_rel"] < 1e-4
        assert all(layer["errors"][backend]["max_rel"] < 1e-4 for layer in report["layers"])


def test_a_broken_lowering_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch_lowering.SpecPool2d.forward

    def off_by_a_bit(self: torch_lowering.SpecPool2d, x: torch.Tensor) -> torch.Tensor:
        return real(self, x) * 1.001  # the classic silent bug: close, but not the same

    monkeypatch.setattr(torch_lowering.SpecPool2d, "forward", off_by_a_bit)
    result = runner.invoke(app, ["verify", "lenet5", "--backends", "numpy,torch"])
    assert result.exit_code == 1
    assert "torch diverges from numpy first at layer 's2' (maxpool2d)" in result.output
    assert "<- first divergence" in result.output


def test_verify_a_trained_run(tmp_path: Path) -> None:
    cnnspec.train("lenet5", out=tmp_path / "run", epochs=1, **{"data.limit": 128})
    result = runner.invoke(app, ["verify", str(tmp_path / "run"), "--backends", "torch,numpy", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == "torch" and report["weights"].endswith("epoch-0001")


def test_verify_usage_errors() -> None:
    assert runner.invoke(app, ["verify", "lenet5", "--backends", "torch"]).exit_code == 1
    assert runner.invoke(app, ["verify", "lenet5", "--input-size", "big"]).exit_code == 2
    unknown = runner.invoke(app, ["verify", "lenet5", "--backends", "numpy,jax"])
    assert unknown.exit_code == 1 and "unknown backend 'jax'" in unknown.output
