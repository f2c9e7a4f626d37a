"""The Python API as people call it: str or Path, settings by their plain names, and
every problem a caller can fix raised as one class with the command line's one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app
from cnnspec.errors import CnnspecError
from cnnspec.harness.overrides import OptionError, dotted_settings

runner = CliRunner()


def test_plain_names_become_their_dotted_settings() -> None:
    assert dotted_settings({"data": "../photos", "lr": 0.01, "workers": 0, "epochs": 3, "optimizer__momentum": 0.8, "data.fit": "crop"}) == {
        "data.source": "../photos", "optimizer.lr": 0.01, "data.workers": 0, "epochs": 3, "optimizer.momentum": 0.8, "data.fit": "crop"}
    assert dotted_settings({"data": Path("photos")}) == {"data.source": "photos"}
    with pytest.raises(OptionError, match=r"'patience' is a setting of several sections: name one .*early_stopping__patience"):
        dotted_settings({"patience": 3})
    with pytest.raises(OptionError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        dotted_settings({"epoch": 3})
    with pytest.raises(OptionError, match="'input' is not a training setting: use --input-size"):
        dotted_settings({"input": [3, 64, 64]})


def test_every_fixable_problem_is_one_catchable_class(tmp_path: Path) -> None:
    with pytest.raises(CnnspecError, match=r"^bad training option: epochs: Input should be greater than 0$"):
        cnnspec.train("lenet5", "numpy", out=tmp_path / "a", epochs=0)
    with pytest.raises(CnnspecError, match="no-such-folder"):
        cnnspec.train("lenet5", "numpy", out=tmp_path / "b", data=str(tmp_path / "no-such-folder"))
    with pytest.raises(CnnspecError, match="not-a-run"):
        cnnspec.predict(str(tmp_path / "not-a-run"), [str(tmp_path / "x.png")])
    with pytest.raises(CnnspecError):
        cnnspec.load_spec(str(tmp_path / "missing.yaml"))
    with pytest.raises(CnnspecError):
        cnnspec.Index.load(str(tmp_path / "missing.index"))


def test_a_zoo_network_at_another_input_size(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", "resnet18", "--input-size", "64,64", "--format", "json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["input_shape"] == [3, 64, 64] and checked["params"] == cnnspec.load_spec("resnet18").params
    result = runner.invoke(app, ["check", "lenet5", "--input-size", "64x64", "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["params"] > cnnspec.load_spec("lenet5").params  # a flatten: the dense layer grows
    result = runner.invoke(app, ["check", "resnet18", "--input-size", "sixty"])
    assert result.exit_code == 2 and "--input-size takes H,W" in result.output
    result = runner.invoke(app, ["draw", "resnet18", "--input-size", "64,64", "--channels", "1", "-o", str(tmp_path / "r.dot")])
    assert result.exit_code == 0, result.output
    assert "1x64x64" in (tmp_path / "r.dot").read_text().replace(" ", "").replace("×", "x")
    result = runner.invoke(app, ["train", "lenet5", "--set", "input.shape=[1,28,28]", "--backend", "numpy"])
    assert result.exit_code == 2 and "use --input-size H,W and --channels C" in result.output


def test_a_run_records_the_input_size_it_was_trained_at(tmp_path: Path) -> None:
    result = cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=1, input_size="32,32", channels=3, data="synthetic", limit=64)
    assert result.run_dir == tmp_path / "run"
    spec = cnnspec.load_spec(tmp_path / "run" / "spec.yaml")
    assert spec.input_shape == (3, 32, 32)
    result = runner.invoke(app, ["train", "resnet18", "--input-size", "32,32", "--backend", "numpy", "--data", "synthetic", "--epochs", "1",
                                 "--set", "data.limit=16", "--batch-size", "8", "--out", str(tmp_path / "r18"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert cnnspec.load_spec(tmp_path / "r18" / "spec.yaml").input_shape == (3, 32, 32)
