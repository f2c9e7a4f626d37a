"""A run (or a study) recorded in MLflow as it trains.

The ``train:`` section flattened as parameters, every epoch's metrics at ``step=epoch``,
and at the end the spec, ``run.json``, the metrics, the curves and the report as
artifacts, with the best checkpoint's verified ONNX export as an MLflow model (the
``onnx`` flavour: a ``.onnx`` file and its ``MLmodel``, nothing pickled). The MLflow run's
id is kept in the run folder (``mlflow.json``), so a resumed run continues it.

MLflow is imported only here, and only when a run asks for tracking.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from cnnspec.errors import CnnspecError
from cnnspec.runs.files import write_json

RECORD = "mlflow.json"  # in the run folder: where its MLflow run is
ARTIFACTS = ("spec.yaml", "run.json", "metrics.jsonl", "final.json", "curves.png", "report.html")


class TrackingError(CnnspecError, RuntimeError):
    """MLflow is not installed, or its store cannot be reached."""


def client(uri: str) -> Any:
    """An MLflow client for ``uri`` (a database URL, a folder, a server)."""
    import logging

    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("--mlflow needs MLflow: pip install 'cnnspec[mlflow]'") from None
    for name in ("mlflow", "alembic"):  # a new SQLite store announces its tables at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=_uri(uri))


def check_store(uri: str) -> None:
    """Fail at once, before anything trains, when the store at ``uri`` cannot be opened
    (MLflow's own client retries an unreachable server for minutes)."""
    import os

    tracking = client(uri)
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        tracking.search_experiments(max_results=1)
    except Exception as exc:  # MLflow reports a store's failure as many exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"--mlflow {uri}: the tracking store cannot be opened ({first[:300]})") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _uri(uri: str) -> str:
    """A plain folder as MLflow's file store URI; anything with a scheme as given."""
    return uri if "://" in uri or uri.startswith("sqlite:") else Path(uri).absolute().as_uri()


def experiment_id(tracking: Any, uri: str, name: str) -> str:
    """The experiment called ``name``, created when new (a SQLite store keeps its artifacts
    in a folder beside its database file, not in the working directory)."""
    found = tracking.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).absolute().parent / "mlartifacts").as_uri()
    try:
        return str(tracking.create_experiment(name, artifact_location=location))
    except Exception:  # another process created it first
        found = tracking.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def flattened(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: {'optimizer.lr': '0.001', ...}."""
    if isinstance(value, dict):
        found: dict[str, str] = {}
        for key, item in value.items():
            found |= flattened(item, f"{prefix}{key}.")
        return found
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return {prefix.rstrip("."): text[:6000]}  # MLflow's limit on a parameter's value


class MlflowRun:
    """One run's MLflow record: started (or continued) at its first epoch, finished at its end."""

    def __init__(self, uri: str, experiment: str | None = None, parent: str | None = None, log_model: bool = True) -> None:
        self.uri, self.experiment, self.parent, self.log_model = uri, experiment, parent, log_model
        self.tracking: Any = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.tags: dict[str, str] = {}

    def epoch(self, run_dir: Path, row: dict[str, float]) -> None:
        """Log one epoch's metrics (starting the MLflow run on the first)."""
        from mlflow.entities import Metric

        if self.run_id is None:
            self._start(run_dir)
        stamp = int(time.time() * 1000)
        step = int(row["epoch"])
        metrics = [Metric(key, float(value), stamp, step) for key, value in row.items() if key != "epoch" and isinstance(value, (int, float))]
        self.tracking.log_batch(self.run_id, metrics=metrics)

    def _start(self, run_dir: Path) -> None:
        from mlflow.entities import Param

        self.tracking, self.run_dir = client(self.uri), run_dir
        info = json.loads((run_dir / "run.json").read_text())
        record = run_dir / RECORD
        if record.is_file():  # a resumed run continues its MLflow run
            self.run_id = json.loads(record.read_text())["run_id"]
            self.tracking.update_run(self.run_id, status="RUNNING")
            return
        tags = {"mlflow.runName": run_dir.name, "mlflow.source.name": "cnnspec", "cnnspec.run": str(run_dir.absolute()),
                "cnnspec.backend": str(info.get("backend")), "cnnspec.spec": str(info.get("spec"))}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        run = self.tracking.create_run(experiment_id(self.tracking, self.uri, self.experiment or str(info.get("spec"))), tags=tags)
        self.run_id = str(run.info.run_id)
        write_json(record, {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": run.info.experiment_id})
        params = flattened(info.get("train", {})) | {"backend": str(info.get("backend")), "device": str(info.get("device")), "data": str(info.get("data"))}
        items = [Param(key, value) for key, value in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow's limit per batch
            self.tracking.log_batch(self.run_id, params=items[start : start + 100])

    def finish(self, status: str = "FINISHED") -> None:
        """Log the run's files, its report and its ONNX model, and close the MLflow run
        (nothing when it never started: it failed before its first epoch, or this process
        is not the one that writes)."""
        if self.run_id is None or self.run_dir is None:
            return
        run_dir = self.run_dir
        if status == "FINISHED":
            self.tags.setdefault("cnnspec.report", _write_report(run_dir))
        for key, value in self.tags.items():
            if value:
                self.tracking.set_tag(self.run_id, key, value)
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.tracking.log_artifact(self.run_id, str(run_dir / name))
        if self.log_model and status == "FINISHED":
            note = self._log_onnx(run_dir)
            if note:
                self.tracking.set_tag(self.run_id, "cnnspec.model", note)
        self.tracking.set_terminated(self.run_id, status)

    def _log_onnx(self, run_dir: Path) -> str:
        """The best checkpoint's verified ONNX export as the run's ``model``; '' when
        logged, else why not (the run itself is not failed for it)."""
        try:
            import mlflow.onnx
            import onnx
        except ImportError:
            return "no ONNX model logged: the onnx extra is not installed (pip install 'cnnspec[onnx]')"
        from cnnspec.porting import exporting
        from cnnspec.runs.loading import load_run
        from cnnspec.runs.weight_files import load_weights

        loaded = load_run(run_dir)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{loaded.graph.name}.onnx"
            try:
                exporting.export(loaded.graph, load_weights(loaded.checkpoint), "onnx", path, weights_from=str(loaded.checkpoint),
                                 extra_metadata=exporting.run_preprocessing(run_dir), preprocessing=loaded.normalization)
            except exporting.ExportFailed as exc:
                return f"no ONNX model logged: {exc}"
            model = Path(folder) / "model"
            mlflow.onnx.save_model(onnx.load(str(path)), str(model), pip_requirements=["onnxruntime", "numpy"],
                                   save_as_external_data=False)
            self.tracking.log_artifacts(self.run_id, str(model), "model")
        return ""


def _write_report(run_dir: Path) -> str:
    """The run's report page (``cnnspec report``) in its folder; '' or why not."""
    from cnnspec.runs.files import write_text
    from cnnspec.views import run_page

    try:
        page, _ = run_page.report(run_dir)
    except CnnspecError as exc:
        return f"no report: {exc}"
    write_text(run_dir / "report.html", page)
    return ""


def study_run(uri: str, experiment: str, name: str, params: dict[str, Any], record: Path) -> str:
    """The parent MLflow run of a study (created once, kept in ``record``); its id."""
    from mlflow.entities import Param

    if record.is_file():
        return str(json.loads(record.read_text())["run_id"])
    check_store(uri)
    tracking = client(uri)
    run = tracking.create_run(experiment_id(tracking, uri, experiment), tags={"mlflow.runName": name, "mlflow.source.name": "cnnspec tune"})
    run_id = str(run.info.run_id)
    write_json(record, {"run_id": run_id, "tracking_uri": uri, "experiment_id": run.info.experiment_id})
    items = [Param(key, value) for key, value in sorted(flattened(params).items())]
    for start in range(0, len(items), 100):
        tracking.log_batch(run_id, params=items[start : start + 100])
    return run_id


def finish_study(uri: str, run_id: str, best: dict[str, Any] | None, files: list[Path]) -> None:
    """The study's best value and its files on the parent run, which is closed."""
    from mlflow.entities import Metric

    tracking = client(uri)
    if best is not None and best.get("value") is not None:
        tracking.log_batch(run_id, metrics=[Metric("best_value", float(best["value"]), int(time.time() * 1000), 0)])
        tracking.set_tag(run_id, "cnnspec.best_trial", str(best["number"]))
    for path in files:
        if path.is_file():
            tracking.log_artifact(run_id, str(path))
    tracking.set_terminated(run_id, "FINISHED")
