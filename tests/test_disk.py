"""What a run leaves on disk: the latest checkpoint (for --resume) and the best by
default, and a frozen body written once for the run, still checksummed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app
from cnnspec.runs.files import load_arrays
from cnnspec.runs.folder import RunDir, checkpoint_problem
from cnnspec.runs.weight_files import load_weights

runner = CliRunner()


def _sizes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run / "checkpoints")): p.stat().st_size for p in (run / "checkpoints").rglob("*.safetensors")}


def test_by_default_the_latest_and_the_best_are_kept(tmp_path: Path) -> None:
    cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=4, data="synthetic", limit=64, min_delta=1e9)  # no later epoch counts as better
    run = RunDir(tmp_path / "run")
    assert [p.name for p in run.epochs()] == ["epoch-0004", "epoch-0001"] and run.best() == run.checkpoints / "epoch-0001"
    cnnspec.train("lenet5", "numpy", out=tmp_path / "all", epochs=3, data="synthetic", limit=64, keep="all")
    assert [p.name for p in RunDir(tmp_path / "all").epochs()] == ["epoch-0003", "epoch-0002", "epoch-0001"]
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--keep", "some"])
    assert result.exit_code == 2 and "--keep takes a number of checkpoints (1 or more) or all" in result.output


def test_a_frozen_body_is_written_once_and_checked(tmp_path: Path) -> None:
    first = cnnspec.train("lenet5", "numpy", out=tmp_path / "first", epochs=1, data="synthetic", limit=64)
    cnnspec.train("lenet5", "numpy", out=tmp_path / "head", epochs=3, data="synthetic", limit=64, init=first.run_dir, freeze=["before:output"], keep="all")
    checkpoints = tmp_path / "head" / "checkpoints"
    shared = sorted(checkpoints.glob("frozen-*.safetensors"))
    assert len(shared) == 1
    sizes = _sizes(tmp_path / "head")
    for epoch in (1, 2, 3):
        own = sizes[f"epoch-000{epoch}/weights.safetensors"]
        assert own < 5_000 and sizes[shared[0].name] > 240_000  # the classifier's 850 floats in each checkpoint; the body's 60,856 once
        weights = load_weights(checkpoints / f"epoch-000{epoch}")
        assert set(weights) == set(cnnspec.load_spec("lenet5").weights())
    body = load_arrays(tmp_path / "first" / "checkpoints" / "epoch-0001" / "weights.safetensors")
    np.testing.assert_array_equal(load_weights(checkpoints / "epoch-0003")["c1.weight"], body["c1.weight"])
    assert json.loads((checkpoints / "epoch-0002" / "checksums.json").read_text())["sha256"].keys() >= {f"../{shared[0].name}"}
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 32, 32), np.float32))
    for tool in (["eval", str(tmp_path / "head")], ["predict", str(tmp_path / "head"), str(tmp_path / "x.npy")]):
        result = runner.invoke(app, tool)
        assert result.exit_code == 0, result.output
    data = bytearray(shared[0].read_bytes())
    data[-3] ^= 0xFF
    shared[0].write_bytes(bytes(data))
    problem = checkpoint_problem(checkpoints / "epoch-0003")
    assert problem is not None and shared[0].name in problem and "damaged" in problem
    result = runner.invoke(app, ["eval", str(tmp_path / "head")])
    assert result.exit_code == 1 and shared[0].name in result.output


def test_checkpoints_that_go_take_their_unused_shared_files_with_them(tmp_path: Path) -> None:
    first = cnnspec.train("lenet5", "numpy", out=tmp_path / "first", epochs=1, data="synthetic", limit=64)
    cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=2, data="synthetic", limit=64, init=first.run_dir,
                  **{"phases": [{"epochs": 1, "freeze": ["before:output"]}, {"epochs": 1}]})
    checkpoints = tmp_path / "run" / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    # epoch 2 trained everything: no frozen arrays; epoch 1 (the best, or gone) keeps its shared file only while it stays
    shared = [n for n in names if n.startswith("frozen-")]
    assert len(shared) == (1 if (checkpoints / "epoch-0001").exists() else 0), names
    assert checkpoint_problem(checkpoints / "epoch-0002") is None
