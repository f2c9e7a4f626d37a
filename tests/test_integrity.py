"""Checked checkpoints: every file a checkpoint writes has its SHA-256 recorded; a damaged
one is refused by name, `eval` says which checkpoint is intact, and `--resume` falls back
to the newest intact checkpoint. Fuzzed run directories never end in an internal error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnspec

pytest.importorskip("torch")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    cnnspec.train("lenet5", out=root / "run", epochs=2, batch_size=64, data__limit=256, keep="all")
    return root / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def flip_a_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = len(data) - 100 if at is None else at  # inside the tensor data, past the header
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def test_each_checkpoint_records_the_sha256_of_its_files(trained: Path) -> None:
    import hashlib

    folder = trained / "checkpoints" / "epoch-0002"
    recorded = json.loads((folder / "checksums.json").read_text())["sha256"]
    assert sorted(recorded) == ["optimizer.safetensors", "state.json", "weights.safetensors"]
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_flipped_bytes_in_the_weights_are_refused_by_name(trained: Path, tmp_path: Path) -> None:
    run = copy_of(trained, tmp_path)
    flip_a_byte(run / "checkpoints" / "epoch-0002" / "weights.safetensors")
    done = cli("eval", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert "epoch-0002/weights.safetensors: damaged (its SHA-256 differs" in done.stderr
    assert "epoch-0001 is intact: use it (e.g. cnnspec eval" in done.stderr
    assert "internal error" not in done.stderr
    older = cli("eval", "run/checkpoints/epoch-0001", "--format", "json", cwd=tmp_path)
    assert older.returncode == 0, older.stderr


def test_resume_falls_back_to_the_newest_intact_checkpoint(trained: Path, tmp_path: Path) -> None:
    run = copy_of(trained, tmp_path)
    weights = run / "checkpoints" / "epoch-0002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])  # truncated
    done = cli("train", "--resume", "run", "--epochs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch-0002/weights.safetensors: damaged" in done.stderr
    assert "resuming" in done.stderr and "from epoch-0001, the newest intact checkpoint" in done.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert cli("eval", "run", cwd=tmp_path).returncode == 0


def test_without_an_intact_checkpoint_resume_says_so(trained: Path, tmp_path: Path) -> None:
    run = copy_of(trained, tmp_path)
    for folder in (run / "checkpoints").glob("epoch-*"):
        (folder / "state.json").write_text("{")
    done = cli("train", "--resume", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert "no intact checkpoint to resume from" in done.stderr
    assert "state.json: damaged" in done.stderr


# ---- disk faults ---------------------------------------------------------------------------


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cnnspec.errors import TrainingError
    from cnnspec.runs import checkpoints, weight_files

    real = checkpoints.save_arrays
    calls = {"n": 0}

    def disk_fills(path: Path, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's weights (each checkpoint writes weights, then optimizer)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "save_arrays", disk_fills)
    monkeypatch.setattr(weight_files, "save_arrays", disk_fills)
    with pytest.raises(TrainingError, match=r"could not write checkpoint epoch-0002 \(.*No space left on device\); training stopped and "
                       r"the newest intact checkpoint is .*epoch-0001\. Free space .* cnnspec train --resume"):
        cnnspec.train("lenet5", out=tmp_path / "run", epochs=3, batch_size=64, data__limit=128)
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.json", "epoch-0001", "latest.json"]  # no half-written folder
    resumed = cnnspec.resume(tmp_path / "run")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_an_export_that_cannot_be_written_leaves_nothing(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from typer.testing import CliRunner

    from cnnspec.cli.app import app
    from cnnspec.porting import exporting

    def read_only(source: object, target: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(exporting.os, "replace", read_only)
    result = CliRunner().invoke(app, ["export", str(trained), "--to", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "m.onnx: Read-only file system" in result.output
    assert list(tmp_path.iterdir()) == []


# ---- fuzzed run directories ----------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("CNNSPEC_FUZZ_RUN_EXAMPLES", "25"))
CASES = {"damaged run directories": 0}


@pytest.fixture(scope="module", autouse=True)
def report() -> object:
    yield
    if CASES["damaged run directories"]:
        print(f"\nfuzz cases run: damaged run directories {CASES['damaged run directories']:,}")
FILES = ["weights.safetensors", "optimizer.safetensors", "state.json", "checksums.json"]


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, str, int, bytes]:
    target = draw(st.sampled_from([*(f"checkpoints/epoch-0002/{f}" for f in FILES), "checkpoints/latest.json", "run.json", "spec.yaml"]))
    action = draw(st.sampled_from(["truncate", "flip", "delete", "replace", "other_spec"]))
    return target, action, draw(st.integers(0, 10**9)), draw(st.binary(max_size=40))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=EXAMPLES <= 100)
@given(case=damage())
def test_damaged_run_directories_never_crash(trained: Path, tmp_path_factory: pytest.TempPathFactory, case: tuple[str, str, int, bytes]) -> None:
    """eval on a run with one file damaged: exit 0 (the damage did not matter) or exit 1
    with a message; never an internal error, never garbage silently."""
    from typer.testing import CliRunner

    from cnnspec.cli.app import app

    CASES["damaged run directories"] += 1
    target, action, where, junk = case
    run = copy_of(trained, tmp_path_factory.mktemp("fuzzrun", numbered=True))
    path = run / target
    data = path.read_bytes()
    if action == "truncate":
        path.write_bytes(data[: where % max(len(data), 1)])
    elif action == "flip":
        flip_a_byte(path, where % len(data))
    elif action == "delete":
        path.unlink()
    elif action == "replace":
        path.write_bytes(junk)
    elif path.name == "weights.safetensors":  # arrays of another spec, under the same checksum rules
        from cnnspec.runs.files import save_arrays, seal

        save_arrays(path, {"fc.weight": np.zeros((3, 3), np.float32)})
        seal(path.parent, ["weights.safetensors", "optimizer.safetensors", "state.json"])
    else:
        path.write_bytes(data.replace(b"epoch", b"epoc"))
    result = CliRunner().invoke(app, ["eval", str(run), "--format", "json"], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{target} {action}: {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code in (0, 1), f"{target} {action}: exit {result.exit_code}: {result.output}"
    if result.exit_code == 0 and target.endswith(("weights.safetensors", "state.json")) and action in ("flip", "replace"):
        pytest.fail(f"{target} {action}: a damaged checkpoint was evaluated without complaint")
