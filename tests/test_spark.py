"""Apache Spark, for real: a JVM and Spark in local[2] mode, and a standalone master and
worker started from the pip package on the loopback address for one end-to-end run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.distributed.spark import java_problem

pytest.importorskip("pyspark", reason="pip install 'cnnspec[spark]' (make setup installs it)")
pytest.importorskip("torch")
_JAVA = java_problem()
pytestmark = pytest.mark.skipif(_JAVA is not None, reason=f"Spark tests skipped: {_JAVA}")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained run and a folder of its validation digits as PNG files (in nested
    folders, with one file that is not an image)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("spark")
    cnnspec.train("lenet5", out=root / "run", epochs=1, batch_size=32, data__limit=256)
    from cnnspec.data.dataset import load_dataset
    from cnnspec.spec.training import DataConfig

    data = load_dataset(DataConfig(), (1, 32, 32), 10, 0)
    for i in range(24):
        folder = root / "images" / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.x_val[i, 0]).save(folder / f"digit{i}.png")
    (root / "images" / "part0" / "broken.png").write_bytes(b"not an image at all")
    (root / "images" / "notes.txt").write_text("not picked up: not an image suffix")
    return root


def _read(parquet: Path) -> dict[str, dict[str, object]]:
    import pyarrow.parquet as pq

    table = pq.read_table(parquet).to_pylist()
    return {str(row["path"]).removeprefix("file:"): row for row in table}


def test_scores_from_spark_equal_cnnspec_predict(workspace: Path) -> None:
    done = cli("predict", "run", "--engine", "spark", "--master", "local[2]", "--data", "images", "--output", "scores.parquet", "--top", "3", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "scores.parquet: 25 images, top 3 classes" in done.stdout
    engine = workspace / "run" / ".runtime" / "epoch-0001.onnx"  # a collection: auto scores on onnxruntime, built once on the driver
    assert "runtime: onnxruntime, " in done.stderr and "epoch-0001.onnx built and verified" in done.stderr and engine.is_file(), done.stderr
    rows = _read(workspace / "scores.parquet")
    images = sorted((workspace / "images").rglob("digit*.png"))
    expected, _ = cnnspec.predict(workspace / "run", images, top=3)
    for path, want in zip(images, expected, strict=True):
        row = rows[str(path)]
        assert row["error"] is None
        assert row["classes"] == [entry["class"] for entry in want["top"]]
        assert row["indices"] == [entry["index"] for entry in want["top"]]
        assert_agrees(row["probabilities"], [entry["probability"] for entry in want["top"]])
    broken = rows[str(workspace / "images" / "part0" / "broken.png")]
    assert "cannot read image" in str(broken["error"])
    assert not any(path.endswith(".txt") for path in rows)


def test_embeddings_from_spark_equal_the_layer_outputs(workspace: Path) -> None:
    done = cli("embed", "run", "--engine", "spark", "--master", "local[2]", "--data", "images/part1", "--output", "vectors.parquet", "--layer", "f5", cwd=workspace)
    assert done.returncode == 0, done.stderr
    rows = _read(workspace / "vectors.parquet")
    assert set(next(iter(rows.values()))) == {"path", "error", "embedding"}
    assert (workspace / "run" / ".runtime" / "epoch-0001+f5.onnx").is_file(), done.stderr  # the engine gives f5 as well
    from cnnspec.backends import load_backend
    from cnnspec.inference.scorer import Scorer

    scorer = Scorer(workspace / "run", load_backend("torch").open_session)
    for path in sorted((workspace / "images" / "part1").glob("*.png")):
        want = scorer.embeddings(scorer.prepare(path.read_bytes())[None], "f5")[0]
        assert_agrees(rows[str(path)]["embedding"], want)


def test_the_udf_serves_a_dataframe_of_ones_own(workspace: Path) -> None:
    from cnnspec.distributed.spark import read_images, scoring_udf, session

    spark = session("local[2]")
    try:
        frame = read_images(spark, str(workspace / "images" / "part2"))
        scored = frame.select("path", scoring_udf(workspace / "run", top=1)("content").alias("s")).select("path", "s.classes").collect()
    finally:
        spark.stop()
    assert len(scored) == 8
    assert all(len(row["classes"]) == 1 for row in scored)


def test_training_on_spark_matches_torchrun(workspace: Path) -> None:
    args = ["lenet5", "--epochs", "1", "--batch-size", "32", "--set", "data.limit=97", "-q"]
    done = cli("train", *args[:-1], "--engine", "spark", "--nproc", "2", "--out", "on-spark", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "done on Spark (2 tasks)" in done.stdout
    said = done.stdout + done.stderr
    assert "distributed: 2 processes (2 on this host)" in said  # Spark's tasks each say LOCAL_WORLD_SIZE=1; they share this host's cores
    one = cnnspec.train("lenet5", out=workspace / "one", epochs=1, batch_size=32, data__limit=97)
    from safetensors.numpy import load_file

    a = load_file(str(workspace / "one" / "checkpoints" / "epoch-0001" / "weights.safetensors"))
    b = load_file(str(workspace / "on-spark" / "checkpoints" / "epoch-0001" / "weights.safetensors"))
    for name in a:
        assert_agrees(a[name], b[name], what=name)
    assert json.loads((workspace / "on-spark" / "run.json").read_text())["processes"] == 2
    assert_agrees(json.loads((workspace / "on-spark" / "final.json").read_text())["val_loss"], one.final["val_loss"])


def test_spark_refusals(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(workspace / "no-java-here"))
    problem = java_problem()
    assert problem is not None and "Spark needs Java 17 or newer" in problem and "JAVA_HOME" in problem
    missing = cli("predict", "run", "--engine", "spark", "--data", "images", cwd=workspace)
    assert missing.returncode == 2
    assert "--engine spark needs --data" in missing.stderr
    (workspace / "taken").mkdir(exist_ok=True)
    (workspace / "taken" / "mine.txt").write_text("keep")
    taken = cli("predict", "run", "--engine", "spark", "--master", "local[1]", "--data", "images", "--output", "taken", cwd=workspace)
    assert taken.returncode == 1
    assert "taken exists and is not a Parquet output of Spark" in taken.stderr
    assert (workspace / "taken" / "mine.txt").read_text() == "keep"


# ---- a standalone cluster on the loopback address --------------------------------------


def _spark_class(*args: str, log: Path) -> subprocess.Popen[bytes]:
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable, "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}
    return subprocess.Popen([str(home / "bin" / "spark-class"), *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log: Path, pattern: str, seconds: float = 90) -> re.Match[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not seen in {log}: {pattern}\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark standalone master and one worker of 2 cores, stopped afterwards."""
    import signal

    logs = tmp_path_factory.mktemp("cluster")
    master = _spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0", "--webui-port", "0", log=logs / "master.log")
    processes = [master]
    try:
        url = _wait_for(logs / "master.log", r"Starting Spark master at (spark://127\.0\.0\.1:\d+)").group(1)
        worker = _spark_class("org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", "0",
                              log=logs / "worker.log")
        processes.append(worker)
        _wait_for(logs / "worker.log", r"Successfully registered with master")
        yield url
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def test_train_and_score_through_a_standalone_cluster(workspace: Path, cluster: str) -> None:
    done = cli("train", "lenet5", "--epochs", "1", "--batch-size", "32", "--set", "data.limit=97", "-q",
               "--engine", "spark", "--nproc", "2", "--master", cluster, "--out", "cluster-run", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert (workspace / "cluster-run" / "checkpoints" / "latest.json").exists()
    scored = cli("predict", "cluster-run", "--engine", "spark", "--master", cluster, "--data", "images/part1", "--output", "cluster.parquet",
                 cwd=workspace)
    assert scored.returncode == 0, scored.stderr
    rows = _read(workspace / "cluster.parquet")
    images = sorted((workspace / "images" / "part1").glob("*.png"))
    expected, _ = cnnspec.predict(workspace / "cluster-run", images)
    for path, want in zip(images, expected, strict=True):
        assert_agrees(rows[str(path)]["probabilities"], [e["probability"] for e in want["top"]])


def test_a_study_runs_its_trials_as_spark_tasks(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: {shape: [1, 8, 8]}\nlayers:\n  - flatten:\n  - dense: {units: 10}\n"
                    "train: {epochs: 2, batch_size: 64}\n"
                    "tune:\n  trials: 3\n  pruner: none\n  space:\n    optimizer.lr: {log_uniform: [1.0e-3, 1.0e-1]}\n")
    result = cli("tune", str(spec), "--out", str(tmp_path / "study"), "--engine", "spark", "--parallel", "2", "--backend", "numpy", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout + result.stderr  # the executors' output reaches the driver's stderr
    assert "[worker 0]" in said and "[worker 1]" in said
    trials = json.loads((tmp_path / "study" / "summary.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    assert all(len((tmp_path / "study" / t["run"] / "metrics.jsonl").read_text().splitlines()) == 2 for t in trials)
