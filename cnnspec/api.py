"""The Python API that mirrors the command line. Frameworks load only when called."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import ValidationError

from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph
from cnnspec.graph.load import load_spec, parse_input_size, with_input_size
from cnnspec.harness.overrides import OptionError, dotted_settings, option_errors

if TYPE_CHECKING:
    from cnnspec.harness.loop import EpochHook, TrainResult
    from cnnspec.spec.training import TrainConfig

SpecLike = Graph | str | os.PathLike[str]
P = ParamSpec("P")
R = TypeVar("R")


def plainly(function: Callable[P, R]) -> Callable[P, R]:
    """A public function whose every problem a caller can fix comes out as a
    ``CnnspecError``: the one line the command line prints, the original as its cause."""

    @functools.wraps(function)
    def said_plainly(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except CnnspecError:
            raise
        except ValidationError as exc:
            raise OptionError("bad training option: " + "; ".join(option_errors(exc))) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CnnspecError(f"{where}{exc.strerror or exc}") from exc
        except ValueError as exc:
            raise CnnspecError(str(exc)) from exc

    return said_plainly


def lazy_opener(backend: str) -> Any:
    """The backend's ``open_session``, its module imported only when a session is opened
    (an onnxruntime engine never opens one, so never imports the framework)."""

    def open_session(*args: Any, **kwargs: Any) -> Any:
        from cnnspec.backends import load_backend

        return load_backend(backend).open_session(*args, **kwargs)

    return open_session


def _graph(spec: SpecLike) -> Graph:
    return spec if isinstance(spec, Graph) else load_spec(spec)


def train_config(graph: Graph, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The spec's ``train:`` section with dotted overrides ({'optimizer.lr': 0.01})."""
    if not overrides:
        return graph.train
    from cnnspec.spec.training import TrainConfig, with_overrides

    return TrainConfig.model_validate(with_overrides(graph.train.model_dump(exclude_unset=True), overrides))


@plainly
def build(spec: SpecLike, backend: str = "torch", device: str = "auto", seed: int = 0) -> Any:
    """The framework's own model (an ``nn.Module`` for torch), with cnnspec's seeded
    initial weights."""
    from cnnspec.backends import load_backend
    from cnnspec.graph.weights import initial_weights

    graph = _graph(spec)
    session = load_backend(backend).open_session(graph, graph.train, device=device)
    session.set_weights(initial_weights(graph, seed))
    return session.model


@plainly
def train(
    spec: SpecLike,
    backend: str = "torch",
    *,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    out: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    head_only: bool = False,
    keep_head: bool = False,
    input_size: tuple[int, int] | str | None = None,
    channels: int | None = None,
    quiet: bool = True,
    on_epoch: EpochHook | None = None,
    tracking_parent: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train and write a run directory. Keyword overrides use dotted names as
    ``{'optimizer.lr': 0.01}`` or plain ones: ``train("lenet5", epochs=3)``. ``init``, a
    checkpoint (.safetensors) or a run (its folder, ``RUN@best`` or a checkpoint folder),
    starts from its arrays wherever names and shapes fit; from a run, inputs are normalised
    as that run's were unless ``data.normalize`` is set; its classifier is kept only when
    the data's class names are the run's, in order (``keep_head``: whenever it fits).
    ``head_only`` trains the classifier alone, solved on the frozen body's features
    (``train.solve``). ``input_size`` ((H, W) or "H,W") and ``channels`` train the spec at
    another input, as ``--input-size`` and ``--channels`` do; the run records it.
    ``on_epoch(run folder, metrics)`` stops the run when it returns a reason; with
    ``track.mlflow`` set (``mlflow="sqlite:///mlflow.db"``), the run is logged to MLflow
    (under ``tracking_parent``, a study's MLflow run, when given)."""
    from cnnspec.backends import load_backend
    from cnnspec.backends.group import joined, membership
    from cnnspec.graph.load import classifier_name
    from cnnspec.harness.loop import train as run_training
    from cnnspec.spec.training import ClassifierSolve

    graph = _graph(spec)
    if input_size is not None or channels is not None:
        size = parse_input_size(input_size) if isinstance(input_size, str) else input_size
        graph = with_input_size(graph, tuple(size) if size is not None else None, channels)  # type: ignore[arg-type]
    config = train_config(graph, dotted_settings(overrides))
    if head_only:
        config = config.model_copy(update={"freeze": [f"before:{classifier_name(graph)}"], "solve": config.solve or ClassifierSolve()})
    module, group, device = joined(backend, load_backend(backend), device)
    with membership(group), tracked(config, on_epoch, tracking_parent) as hook:
        return run_training(
            graph, config, module, backend, device=device, precision=precision, compile=compile,
            out=Path(out) if out is not None else None, init=Path(init) if init is not None else None, keep_head=keep_head, quiet=quiet, group=group,
            on_epoch=hook,
        )


@plainly
def resume(
    run: str | os.PathLike[str], *, backend: str | None = None, device: str = "auto", quiet: bool = True,
    on_epoch: EpochHook | None = None, tracking_parent: str | None = None, **overrides: Any
) -> TrainResult:
    """Continue a run from its last complete checkpoint, on its own backend or another
    (weights and optimizer state are stored in the canonical layout)."""
    from cnnspec.backends import load_backend
    from cnnspec.backends.group import joined, membership
    from cnnspec.harness.loop import train as run_training
    from cnnspec.runs.loading import load_run
    from cnnspec.spec.training import TrainConfig, with_overrides

    loaded = load_run(Path(run), checked=False)  # the run chooses the newest intact checkpoint itself
    config = TrainConfig.model_validate(with_overrides(loaded.config.model_dump(), dotted_settings(overrides))) if overrides else loaded.config
    backend = backend or loaded.info["backend"]
    module, group, device = joined(backend, load_backend(backend), device)
    with membership(group), tracked(config, on_epoch, tracking_parent) as hook:
        return run_training(loaded.graph, config, module, backend, device=device, resume=loaded.run.path, quiet=quiet, group=group, on_epoch=hook)


@contextlib.contextmanager
def tracked(config: TrainConfig, on_epoch: EpochHook | None, parent: str | None) -> Iterator[EpochHook | None]:
    """The epoch hook of a run: ``on_epoch``, after logging the epoch to MLflow when
    ``config.track.mlflow`` asks; the MLflow run is closed as the training ends (FAILED
    when it raised, with the reason a hook stopped it as a tag)."""
    if config.track.mlflow is None:
        yield on_epoch
        return
    from cnnspec.tracking.mlflow_run import MlflowRun, check_store

    check_store(config.track.mlflow)
    tracker = MlflowRun(config.track.mlflow, config.track.experiment, parent, config.track.log_model)

    def hook(run_dir: Path, row: dict[str, float]) -> str | None:
        tracker.epoch(run_dir, row)
        stop = on_epoch(run_dir, row) if on_epoch is not None else None
        if stop:
            tracker.tags["cnnspec.stopped"] = stop
        return stop

    try:
        yield hook
    except BaseException as exc:
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.finish("FINISHED")


@plainly
def evaluate(run: str | os.PathLike[str], *, data: str | None = None, backend: str | None = None, device: str = "auto",
             runtime: str = "backend", said: Any = None) -> dict[str, Any]:
    """Loss, accuracy, top-k, per-class accuracy and the confusion matrix of a run; ``runtime``
    as for ``predict``."""
    from cnnspec.inference.evaluation import evaluate as run_evaluation
    from cnnspec.runs.loading import load_run

    name = backend or load_run(Path(run)).info["backend"]
    return run_evaluation(Path(run), lazy_opener(name), data=data, device=device, runtime=runtime, said=said)


@plainly
def features(
    run: str | os.PathLike[str], data: str, layer: str, *, out: str | os.PathLike[str] | None = None, backend: str | None = None, device: str = "auto",
    runtime: str = "backend", said: Any = None,
) -> Any:
    """The output of ``layer`` for every image of ``data``: a ``Features`` (values,
    labels, classes, names); with ``out``, also saved as one safetensors file. ``runtime``
    as for ``predict``."""
    from cnnspec.inference.features import features as run_features
    from cnnspec.inference.features import save_features
    from cnnspec.runs.loading import load_run

    name = backend or load_run(Path(run)).info["backend"]
    result = run_features(Path(run), lazy_opener(name), data, layer, device=device, runtime=runtime, said=said)
    if out is not None:
        save_features(result, Path(out), Path(run))
    return result


@plainly
def embed(
    run: str | os.PathLike[str], data: str, *, layer: str | None = None, out: str | os.PathLike[str] | None = None, update: bool = False,
    metric: str = "cosine", dtype: str = "float32", approximate: bool | None = None, backend: str | None = None, device: str = "auto",
    progress: Any = None, runtime: str = "backend", said: Any = None,
) -> Any:
    """Embed every image of ``data`` with the run's network: an ``EmbedReport`` whose
    ``index`` searches (``index.search(queries, k)``); with ``out``, written atomically;
    with ``update``, only new and changed images of ``out``'s index are embedded again.
    ``runtime`` as for ``predict``."""
    from cnnspec.runs.loading import load_run
    from cnnspec.search.index import Index
    from cnnspec.search.index import embed as run_embed

    previous = Index.load(Path(out)) if update and out is not None else None
    name = backend or load_run(Path(run)).info["backend"]
    report = run_embed(
        Path(run), data, lazy_opener(name), layer=layer, metric=metric, dtype=dtype, previous=previous, device=device,
        approximate=approximate, progress=progress, runtime=runtime, said=said,
    )
    if out is not None:
        report.index.save(Path(out))
    return report


@plainly
def similar(
    index: str | os.PathLike[str], queries: list[str | os.PathLike[str]], *, k: int = 10, exact: bool = False, backend: str | None = None, device: str = "auto"
) -> Any:
    """For each query image: (scores, positions) of its k nearest images in the index,
    and the index (``index.paths[positions]``)."""
    from cnnspec.runs.loading import load_run
    from cnnspec.search.index import Index, embed_files

    loaded = Index.load(Path(index))
    name = backend or load_run(Path(loaded.meta["run"])).info["backend"]
    scores, positions = loaded.search(embed_files(loaded, [Path(q) for q in queries], lazy_opener(name), device), k, exact=exact)
    return scores, positions, loaded


@plainly
def predict(
    run: str | os.PathLike[str], inputs: list[str | os.PathLike[str]], *, top: int = 5, backend: str | None = None, device: str = "auto",
    runtime: str = "backend", said: Any = None, batch_size: int | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """Top-k classes per input (image files or .npy batches) and the raw outputs; ``runtime``
    auto, backend or onnxruntime (see ``inference.engines.inference_engine``)."""
    from cnnspec.inference.prediction import predict as run_prediction
    from cnnspec.runs.loading import load_run

    name = backend or load_run(Path(run)).info["backend"]
    return run_prediction(Path(run), [Path(i) for i in inputs], lazy_opener(name), top=top, device=device,
                          runtime=runtime, said=said, batch_size=batch_size)
