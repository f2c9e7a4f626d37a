"""Apache Spark: training through Spark's own TorchDistributor, scoring and embedding
through ``predict_batch_udf``. No second training loop and no second preprocessing:

- ``train`` runs ``cnnspec train ARGV`` in each of N barrier tasks; TorchDistributor
  starts torchrun in each, so the harness finds its rank as under torchrun.
- ``scoring_udf`` wraps ``Scorer`` (what ``cnnspec predict`` runs): image bytes in,
  top-k classes and probabilities (and an embedding) out, as NumPy, for runs of any backend.
- ``score`` reads images with Spark's ``binaryFile`` source and writes Parquet.
- ``tune`` runs a study's workers (``cnnspec tune --worker``) as Spark tasks.

The driver and the Python workers run this interpreter (``PYSPARK_PYTHON``), since
mismatched interpreters are the failure users meet most.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnspec.errors import CnnspecError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

IMAGE_GLOB = "*.{jpg,jpeg,png,bmp,gif,tif,tiff,webp,JPG,JPEG,PNG,BMP,GIF,TIF,TIFF,WEBP}"


class SparkError(CnnspecError, RuntimeError):
    """Spark cannot run the job; the message says what to do."""


def java_problem() -> str | None:
    """Why Spark's JVM cannot start here, or None."""
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
    install = "Spark needs Java 17 or newer: install it (apt install openjdk-17-jre-headless, brew install openjdk@17) or set JAVA_HOME"
    if java is None or not Path(java).exists():
        return f"no java found; {install}"
    try:
        banner = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{java} does not run ({exc}); {install}"
    version = banner.split('"')[1] if banner.count('"') >= 2 else ""
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < 17:
        return f"{java} is Java {version or 'of an unknown version'}; {install}"
    return None


def _pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkError("Spark support needs pyspark, which is not installed: pip install 'cnnspec[spark]'") from None


def session(master: str | None = None, name: str = "cnnspec") -> SparkSession:
    """A SparkSession (the active one when there is one and no master is asked for),
    with this interpreter on the driver and the workers."""
    _pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    problem = java_problem()
    if problem:
        raise SparkError(problem)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(master or "local[*]")
        .appName(name)
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # its bar would cut through cnnspec's progress lines
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")  # Spark's INFO and WARN lines would bury cnnspec's own
    return spark


# ---- training ------------------------------------------------------------------------------


def _train_task(argv: list[str], run_dir: str) -> dict[str, Any]:
    """In each TorchDistributor process: ``cnnspec train ARGV``, as torchrun would start it
    (the environment that places this process in the group passes to it)."""
    import json

    status = subprocess.run([sys.executable, "-m", "cnnspec", "train", *argv], check=False).returncode
    if status not in (None, 0):
        raise SparkError(f"cnnspec train exited with status {status} on rank {os.environ.get('RANK')}")
    final = Path(run_dir) / "final.json"
    return {"run_dir": run_dir, "final": json.loads(final.read_text()) if final.exists() else {}}


def train(argv: list[str], run_dir: Path, nproc: int, master: str | None = None, *, use_gpu: bool = False) -> dict[str, Any]:
    """``cnnspec train ARGV``, whose run folder is ``run_dir`` (its ``--out`` or ``--resume``,
    on storage every task sees), in ``nproc`` Spark barrier tasks: {run_dir, final metrics}."""
    spark = session(master or f"local[{nproc}]", "cnnspec train")
    from pyspark.ml.torch.distributor import TorchDistributor

    try:
        result = TorchDistributor(num_processes=nproc, local_mode=False, use_gpu=use_gpu).run(_train_task, argv, str(run_dir))
    except Exception as exc:  # Spark reports a task's failure as its own exception types
        raise SparkError(f"training on Spark failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        spark.stop()
    return dict(result or {})


def _tune_worker(out: str, index: int, threads: int) -> int:
    """In one Spark task: ``cnnspec tune --out OUT --worker INDEX``, its thread pools sized
    to the cores the task was given; its exit status."""
    env = dict(os.environ)
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "cnnspec", "tune", "--out", out, "--worker", str(index)], env=env, check=False).returncode


def tune(out: Path, workers: int, master: str | None = None) -> list[int]:
    """Run a study's trials as ``workers`` Spark tasks, each a ``cnnspec tune --worker``
    sharing the study's storage (its folder, or ``--storage``, must be one every executor
    sees); their exit statuses, in worker order."""
    spark = session(master or f"local[{workers}]", "cnnspec tune")
    local = str(spark.sparkContext.master or "local").startswith("local")
    threads = max(1, (os.cpu_count() or 1) // workers) if local else int(spark.conf.get("spark.task.cpus", "1") or 1)
    folder = str(Path(out).resolve())
    try:
        tasks = spark.sparkContext.parallelize(range(workers), workers)
        return list(tasks.map(lambda index: _tune_worker(folder, index, threads)).collect())
    except Exception as exc:  # Spark reports a task's failure as its own exception types
        raise SparkError(f"tuning on Spark failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        spark.stop()


# ---- scoring and embedding -----------------------------------------------------------------


def _return_type(top: int, layer: str | None) -> Any:
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StringType, StructField, StructType

    fields = [
        StructField("classes", ArrayType(StringType()), True),
        StructField("indices", ArrayType(IntegerType()), True),
        StructField("probabilities", ArrayType(FloatType()), True),
        StructField("error", StringType(), True),
    ]
    if layer is not None:
        fields.append(StructField("embedding", ArrayType(FloatType()), True))
    return StructType(fields)


def _score_batch(scorer: Any, contents: np.ndarray, top: int, layer: str | None) -> dict[str, np.ndarray]:
    """Image bytes -> the UDF's columns. An unreadable image gets its reason in ``error``
    and empty scores (the job goes on)."""
    from cnnspec.data.decode import BadImage

    images, errors = [], np.full(len(contents), None, dtype=object)
    good = np.zeros(len(contents), bool)
    for i, content in enumerate(contents):
        try:
            images.append(scorer.prepare(bytes(content)))
            good[i] = True
        except (BadImage, OSError) as exc:
            errors[i] = f"cannot read image ({exc})"
    k = min(top, scorer.loaded.graph.output_shape[0])
    x = np.stack(images) if images else np.zeros((0, *scorer.loaded.graph.input_shape), np.uint8)
    indices, probabilities = scorer.ranked(scorer.outputs(x), k) if len(x) else (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    names = np.asarray(scorer.classes, dtype=object)
    columns: dict[str, np.ndarray] = {
        "classes": np.full((len(contents), k), "", dtype=object),
        "indices": np.full((len(contents), k), -1, dtype=np.int32),
        "probabilities": np.full((len(contents), k), np.nan, dtype=np.float32),
        "error": errors,
    }
    columns["classes"][good] = names[indices]
    columns["indices"][good] = indices
    columns["probabilities"][good] = probabilities
    if layer is not None:
        vectors = scorer.embeddings(x, layer) if len(x) else np.zeros((0, 0), np.float32)
        embedding = np.full((len(contents), vectors.shape[1] if len(x) else 0), np.nan, dtype=np.float32)
        if len(x):
            embedding[good] = vectors
        columns["embedding"] = embedding
    return columns


def scoring_udf(run: str | os.PathLike[str], *, top: int = 5, layer: str | None = None, backend: str | None = None,
                device: str = "cpu", batch_size: int = 64, runtime: str = "auto", said: Callable[[str], None] | None = None) -> Callable[[Column], Column]:
    """A ``predict_batch_udf`` over a binary column of image files' bytes (``binaryFile``'s
    ``content``) giving a struct: ``classes`` and ``indices`` (top ``top``, best first),
    ``probabilities``, ``error`` (null, or why an image could not be read) and, with
    ``layer``, ``embedding`` (that layer's output, flattened). Each executor opens the run
    once; images are prepared exactly as ``cnnspec predict`` prepares them. ``runtime``
    as for ``predict``, a whole collection's worth of images: ``auto`` is onnxruntime
    where it is installed and the device is the CPU, its engine built and verified here,
    on the driver, once, and reused by every executor; ``said`` hears which."""
    _pyspark()
    from pyspark.ml.functions import predict_batch_udf

    from cnnspec.inference.engines import AUTO_RUNTIME_IMAGES, chosen_runtime, onnx_engine
    from cnnspec.inference.features import check_layer
    from cnnspec.runs.loading import load_run

    loaded = load_run(Path(run))  # here, so that a bad run fails before any task starts
    if layer is not None:
        check_layer(loaded, layer)
    layers = (layer,) if layer is not None else ()
    runtime = chosen_runtime(loaded, device, runtime, AUTO_RUNTIME_IMAGES, layers)
    path, name = str(Path(run).resolve()), backend or loaded.info["backend"]
    if runtime == "onnxruntime":
        engine, how = onnx_engine(loaded, layers)  # built and verified once, here; the executors reuse it
        which = f"onnxruntime, {engine} {how}"
    else:
        which = f"{name} backend ({device}) on each executor"
    if said is not None:
        said(f"runtime: {which}")

    def make_predict_fn() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        from cnnspec.api import lazy_opener
        from cnnspec.inference.scorer import Scorer

        scorer = Scorer(Path(path), lazy_opener(name), device)
        scorer.use_runtime(runtime, AUTO_RUNTIME_IMAGES, layers)
        return lambda contents: _score_batch(scorer, contents, top, layer)

    udf: Callable[[Column], Column] = predict_batch_udf(make_predict_fn, return_type=_return_type(top, layer), batch_size=batch_size)
    return udf


def read_images(spark: SparkSession, data: str) -> DataFrame:
    """Image files as rows of (path, content): a folder (searched recursively), a file, or a glob."""
    reader = spark.read.format("binaryFile")
    if Path(data).expanduser().is_dir():
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", IMAGE_GLOB)
    return reader.load(str(Path(data).expanduser()) if not any(c in data for c in "*?[") else data).select("path", "content")


def score(run: str | os.PathLike[str], data: str, output: str | os.PathLike[str], *, top: int = 5, layer: str | None = None,
          embed_only: bool = False, master: str | None = None, backend: str | None = None, batch_size: int = 64, runtime: str = "auto",
          said: Callable[[str], None] | None = None) -> int:
    """Score (and with ``layer``, embed) every image of ``data`` on Spark and write
    ``output`` as Parquet: path, classes, indices, probabilities, error[, embedding].
    Written beside ``output`` first and moved into place when complete. Returns the rows."""
    from pyspark.sql import functions

    out = Path(output)
    if out.exists() and not (out.is_dir() and (out / "_SUCCESS").exists()):
        raise SparkError(f"{out} exists and is not a Parquet output of Spark: choose another --output")
    _pyspark()
    from pyspark.sql import SparkSession

    owned = master is not None or SparkSession.getActiveSession() is None  # a session of the caller's own stays open
    spark = session(master)
    try:
        frame = read_images(spark, data)
        # binaryFile makes a partition of every few dozen small files: hundreds of tasks, each
        # paying a task's overhead. One partition a core (merged, not shuffled) keeps them all busy.
        cores = spark.sparkContext.defaultParallelism
        if frame.rdd.getNumPartitions() > cores:
            frame = frame.coalesce(cores)
        scored = frame.withColumn("scored", scoring_udf(run, top=top, layer=layer, backend=backend, batch_size=batch_size, runtime=runtime, said=said)(functions.col("content")))
        columns = ["path", "scored.error"] + (["scored.embedding"] if layer else []) + ([] if embed_only else ["scored.classes", "scored.indices", "scored.probabilities"])
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        scored.select(*columns).write.parquet(str(staging))
        rows = spark.read.parquet(str(staging)).count()
    except SparkError:
        raise
    except Exception as exc:
        raise SparkError(f"scoring on Spark failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        if owned:
            spark.stop()
    if rows == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SparkError(f"{data}: no image files found")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return rows
