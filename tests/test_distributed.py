"""Data-parallel training with torchrun: real processes, gloo on this CPU.

The reference is one process: with the same global batch and data order, two processes
end with the same weights and optimizer state (within float32 tolerance), every metric the
same, and a run resumes on another number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.backends.group import SINGLE, DistributedError, check_batch, evaluation_share, local_order

pytest.importorskip("torch")

from safetensors.numpy import load_file


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def arrays(run: Path, name: str = "weights") -> dict[str, np.ndarray]:
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    return load_file(str(run / "checkpoints" / latest / f"{name}.safetensors"))


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Gradients summed across processes add in another order: equal by the verification rule."""
    assert a.keys() == b.keys()
    for name in a:
        assert_agrees(a[name], b[name], what=name)


# ---- the shares: pure --------------------------------------------------------------------


@pytest.mark.parametrize(("count", "batch", "size"), [(97, 32, 2), (100, 20, 4), (5, 4, 4), (64, 64, 1), (3, 8, 4)])
def test_every_global_batch_is_split_into_contiguous_parts(count: int, batch: int, size: int) -> None:
    order = np.random.default_rng(0).permutation(count)
    parts = [local_order(order, batch, rank, size) for rank in range(size)]
    share = batch // size
    assert {s for _, s in parts} == {share}
    for step, start in enumerate(range(0, count, batch)):
        chunk = order[start : start + batch]
        rebuilt = np.concatenate([mine[step * share : (step + 1) * share] for mine, _ in parts])
        np.testing.assert_array_equal(rebuilt, chunk)  # rank order = position order: the global batch, once
    assert sorted(np.concatenate([mine for mine, _ in parts]).tolist()) == list(range(count))


def test_a_global_batch_that_does_not_split_evenly_is_refused_with_a_fit() -> None:
    check_batch(64, 4)
    with pytest.raises(DistributedError, match=r"batch_size 63 .* over 2 processes: use a multiple of 2 \(e.g. --batch-size 62\)"):
        check_batch(63, 2)


def test_evaluation_shares_cover_each_image_once() -> None:
    for count, size in [(359, 2), (3, 4), (10, 3)]:
        shares = [evaluation_share(count, rank, size) for rank in range(size)]
        assert sorted(np.concatenate(shares).tolist()) == list(range(count))


def test_one_process_is_a_group_of_one() -> None:
    assert (SINGLE.rank, SINGLE.size) == (0, 1)
    np.testing.assert_array_equal(SINGLE.all_sum([1.5, 2]), [1.5, 2.0])


def test_diverged_replicas_are_named() -> None:
    from cnnspec.errors import TrainingError
    from cnnspec.harness.loop import check_replicas

    graph = cnnspec.load_spec("lenet5")

    class Weights:
        def get_weights(self) -> dict[str, np.ndarray]:
            return {name: np.zeros(spec.shape, np.float32) for name, spec in graph.weights().items()}

    class Diverged:
        rank, size, local_size = 0, 3, 3

        def all_gather(self, value: str) -> list[str]:
            return [value, value, "0" * 32]

    with pytest.raises(TrainingError, match=r"after step 7 .*rank\(s\) 2 differ from rank 0's"):
        check_replicas(graph, Weights(), Diverged(), "step 7 of epoch 1")  # type: ignore[arg-type]


def test_sync_batchnorm_keeps_names_and_weights() -> None:
    import torch

    from cnnspec.backends.torch_backend import GraphModule
    from cnnspec.backends.torch_distributed import sync_batchnorm

    graph = cnnspec.load_spec("resnet18")
    module = GraphModule(graph)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    replaced = sync_batchnorm(module)
    from cnnspec.layers.norm import BatchNorm

    assert replaced == sum(isinstance(node.layer, BatchNorm) for node in graph.nodes) > 0
    after = module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ran = [step[0] for step in module._steps]
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in ran) == replaced
    assert not any(type(m) is torch.nn.BatchNorm2d for m in module.modules())


# ---- torchrun: real processes ------------------------------------------------------------

BN_SPEC = """\
name: bn
input: {shape: [1, 8, 8]}
layers:
  - {conv2d: {filters: 4, kernel: 3, padding: same}, name: c}
  - {batchnorm: {}, name: bn}
  - {relu: {}}
  - {flatten: {}}
  - {dense: {units: 10}, name: fc}
"""
SMALL = ["--epochs", "1", "--batch-size", "32", "--set", "data.limit=97", "-q"]  # 3 full batches and one of 1 image


def test_two_processes_end_where_one_does(tmp_path: Path) -> None:
    one = cnnspec.train("lenet5", out=tmp_path / "one", epochs=1, batch_size=32, data__limit=97)
    done = cli("train", "lenet5", *SMALL, "--out", "two", "--nproc", "2", "--set", "distributed.check_replicas=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    two = tmp_path / "two"
    assert_same_arrays(arrays(tmp_path / "one"), arrays(two))
    assert_same_arrays(arrays(tmp_path / "one", "optimizer"), arrays(two, "optimizer"))
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # rank 0 alone writes
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5"):
        assert_agrees(rows[0][key], one.final[key], what=key)
    assert json.loads((two / "run.json").read_text())["processes"] == 2


def test_a_killed_epoch_resumes_on_two_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process run killed inside its second epoch continues on two processes from
    its last mid-epoch checkpoint and ends as the uninterrupted one-process run."""
    from cnnspec.backends import torch_backend

    settings = {"epochs": 2, "batch_size": 32, "data__limit": 160, "checkpoint_steps": 2}
    real_step = torch_backend.TorchSession.train_step
    calls = {"n": 0}

    def dies_in_epoch_two(self: object, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == 5 + 4:  # 5 batches an epoch: the 4th of epoch 2, after the checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(self, x, y)  # type: ignore[arg-type]

    monkeypatch.setattr(torch_backend.TorchSession, "train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        cnnspec.train("lenet5", out=tmp_path / "killed", **settings)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert json.loads((tmp_path / "killed" / "checkpoints" / "mid-epoch" / "state.json").read_text())["step"] == 2
    done = cli("train", "--resume", "killed", "--nproc", "2", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    whole = cnnspec.train("lenet5", out=tmp_path / "whole", **settings)  # type: ignore[arg-type]
    assert_same_arrays(arrays(tmp_path / "whole"), arrays(tmp_path / "killed"))
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert_agrees(rows[-1]["val_loss"], whole.final["val_loss"])


def _pids_with(tag: str, rank: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"CNNSPEC_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc (Linux)")
def test_a_rank_that_dies_stops_the_job_and_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    tag = f"kill-{os.getpid()}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "cnnspec", "train", "lenet5", "--epochs", "30", "--batch-size", "16", "--out", "run", "--nproc", "2", "-q"]
    job = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CNNSPEC_TEST_TAG": tag})
    latest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while not latest.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    victims = _pids_with(tag, "1")
    assert victims and job.poll() is None, "the run ended before a rank could be stopped"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    _, stderr = job.communicate(timeout=120)  # no hang at a barrier
    assert job.returncode == 1
    assert time.monotonic() - started < 60
    assert "process rank 1 (exit code -9) failed" in stderr
    assert "continue with: cnnspec train --resume" in stderr
    assert "Traceback" not in stderr
    epoch = json.loads(latest.read_text())["epoch"]
    assert epoch >= 1
    resumed = cli("train", "--resume", "run", "--epochs", str(epoch + 1), "-q", cwd=tmp_path)  # on one process
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(latest.read_text())["epoch"] == epoch + 1


def test_distributed_refusals_are_one_line_each(tmp_path: Path) -> None:
    spec = tmp_path / "bn.yaml"
    spec.write_text(BN_SPEC)
    synced = cli("train", "bn.yaml", *SMALL, "--nproc", "2", "--sync-batchnorm", cwd=tmp_path)
    assert synced.returncode == 1
    assert "sync_batchnorm needs CUDA (NCCL); on CPU each process keeps its own batch statistics" in synced.stderr
    assert "Traceback" not in synced.stderr
    numpy = cli("train", "bn.yaml", *SMALL, "--nproc", "2", "--backend", "numpy", cwd=tmp_path)
    assert numpy.returncode == 1
    assert "distributed training runs on the torch backend" in numpy.stderr


def test_per_process_batch_norm_is_stated(tmp_path: Path) -> None:
    spec = tmp_path / "bn.yaml"
    spec.write_text(BN_SPEC)
    done = cli("train", "bn.yaml", "--epochs", "1", "--batch-size", "32", "--set", "data.limit=64", "--nproc", "2", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "distributed: 2 processes (2 on this host), each 16 of every batch of 32; batch norm: each process normalises with its own 16 images' statistics" in done.stderr
    assert done.stdout.count("done: val_accuracy") == 1


@pytest.mark.skipif("torch" not in sys.modules or not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (NCCL: one GPU a process)")
def test_two_gpus_with_synchronised_batch_norm(tmp_path: Path) -> None:
    done = cli("train", "resnet18", "--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--set", "data.limit=128",
               "--set", "distributed.check_replicas=1", "--nproc", "2", "--device", "cuda", "--sync-batchnorm", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "batch norm statistics synchronised over all 2 processes" in done.stderr
