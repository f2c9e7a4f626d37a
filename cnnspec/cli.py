"""The ``cnnspec`` command. Thin: each command parses options and calls the library.

Exit status: 0 success, 1 a problem in the input (spec errors print as
``PATH:LINE:COL: error: message``), 2 a usage error.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:

    from cnnspec.graph import Graph
from rich.console import Console
from rich.table import Table

from cnnspec.agreement import TOLERANCE
from cnnspec.calcview import conv_walkthrough, pool_walkthrough, same_walkthrough
from cnnspec.diagnostics import Diagnostic, SpecError, plural
from cnnspec.errors import CnnspecError
from cnnspec.load import SpecNotFound, load_spec, with_input_size, zoo_names, zoo_path
from cnnspec.strictjson import strict_json

app = typer.Typer(
    name="cnnspec",
    help="Declarative CNN specs: check shapes, parameters and cost before running.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
calc_app = typer.Typer(help="Work through the output-size formula, for learning it.", no_args_is_help=True)
app.add_typer(calc_app, name="calc")

stdout = Console(highlight=False, emoji=False)  # "net.yaml:100:3:" is a place, not the emoji :100:
stderr = Console(stderr=True, highlight=False, emoji=False)


def _version(value: bool) -> None:
    if value:
        from cnnspec import __version__

        stdout.print(f"cnnspec {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Declarative CNN specs: check shapes, parameters and cost before running."""


class Format(StrEnum):
    table = "table"
    json = "json"


class Rounding(StrEnum):
    exact = "exact"
    floor = "floor"
    ceil = "ceil"


def _fail(diagnostics: list[Diagnostic]) -> NoReturn:
    from cnnspec.report import report_diagnostics

    raise typer.Exit(report_diagnostics(diagnostics))


def _usage(message: str) -> NoReturn:
    stderr.print(f"cnnspec: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


def _classifier(graph: Graph) -> str:
    from cnnspec.load import classifier_name

    try:
        return classifier_name(graph)
    except ValueError as exc:
        _usage(f"--head-only: {exc}")


SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a zoo spec (see 'cnnspec zoo')")]
InputSizeOpt = Annotated[str | None, typer.Option("--input-size", help="H,W: the spec at another input height and width (e.g. a zoo network at 64,64)")]
ChannelsOpt = Annotated[int | None, typer.Option("--channels", min=1, help="the spec with this many input channels (1 for greyscale)")]


@app.command()
def check(
    spec: SpecArg,
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json")] = Format.table,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
) -> None:
    """Validate a spec and show every layer's output shape, parameters and MACs."""
    from cnnspec.report import run_check

    status = run_check(spec, format.value, _input_size(input_size), channels)  # also what `cnnspec check` runs without Typer (cnnspec.launch)
    if status:
        raise typer.Exit(status)


@app.command()
def zoo(
    name: Annotated[str | None, typer.Argument(help="print this zoo spec's YAML, to edit as your own: cnnspec zoo resnet18 > mine.yaml")] = None,
) -> None:
    """List the bundled specs with their parameters and MACs, or print one spec's YAML."""
    if name is not None:
        names = zoo_names()
        if name not in names:
            from cnnspec.diagnostics import did_you_mean

            _usage(f"no zoo spec '{name}'{did_you_mean(name, names)}; the zoo: {', '.join(names)}")
        sys.stdout.write(zoo_path(name).read_text())
        return
    table = Table(title="cnnspec zoo (cnnspec check NAME shows one; cnnspec zoo NAME prints its YAML)")
    for column, justify in (("Name", "left"), ("Input", "left"), ("Output", "left"), ("Params", "right"), ("MACs", "right"), ("Reference", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name in zoo_names():
        graph = load_spec(zoo_path(name))
        reference = graph.description.split(".")[0].split("(")[0].strip()
        table.add_row(
            name,
            "x".join(map(str, graph.input_shape)),
            "x".join(map(str, graph.output_shape)),
            f"{graph.params:,}",
            f"{graph.macs / 1e9:.2f} G" if graph.macs >= 10**8 else f"{graph.macs / 1e6:.2f} M",
            reference,
        )
    stdout.print(table)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec format (for editor completion)."""
    from cnnspec.schema import spec_json_schema

    sys.stdout.write(strict_json(spec_json_schema(), indent=2) + "\n")


# ---- train, eval, predict ------------------------------------------------------------------

class Engine(StrEnum):
    local = "local"
    spark = "spark"


DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps")]
def _said(line: str) -> None:
    """A line about how the work is done (which runtime computes), on standard error."""
    stderr.print(line, markup=False, soft_wrap=True)


RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", help="what computes the network: backend (--backend's, checked against NumPy once), onnxruntime (the run's verified "
    "ONNX lowering, cached in RUN/.runtime), or auto (onnxruntime where installed, on the CPU, from 64 images or once built)")]


def _run_errors() -> tuple[type[BaseException], ...]:
    """What a train/eval/predict failure looks like: said in one line, exit 1."""
    from cnnspec.backends import BackendUnavailable
    from cnnspec.distributed import DistributedError
    from cnnspec.harness.data import DataError
    from cnnspec.harness.protocol import BackendError
    from cnnspec.harness.run import TrainingError

    lost: tuple[type[BaseException], ...] = ()
    if "torch" in sys.modules:  # a process of a distributed run lost its peers (one died)
        import torch.distributed

        lost = (torch.distributed.DistError,)
    return (CnnspecError, BackendUnavailable, DataError, BackendError, TrainingError, SpecError, DistributedError, ValueError, OSError, *lost)


def _fail_run(exc: BaseException) -> NoReturn:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of the processes of a distributed run
        where = f"rank {os.environ.get('RANK')}: {where}"
        text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__  # a lost peer's error runs to many lines
    stderr.print(f"cnnspec: error: {where}{text}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


def _parse_sets(values: list[str]) -> dict[str, object]:
    import yaml

    overrides: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _usage(f"--set takes KEY=VALUE (e.g. optimizer.momentum=0.95), got '{item}'")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            _usage(f"--set {item}: the value is not valid YAML")
    return overrides


@app.command()
def train(
    spec: Annotated[str | None, typer.Argument(help="a spec file or zoo name (not needed with --resume)")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="torch, tensorflow or numpy [default: torch; with --resume, the run's]")
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, else fp32), bf16, fp16 or fp32")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (measured not to pay on the CPU; see the README)")] = False,
    memory_format: Annotated[str | None, typer.Option(
        "--memory-format", help="torch: auto (channels-last for convolutional networks, where measured faster), channels_last or contiguous (train.memory_format)")] = None,
    data: Annotated[str | None, typer.Option(help="digits, synthetic, or a path (overrides train.data.source)")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="passes over the training data (train.epochs); with --resume, the new total")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="images per step (train.batch_size)")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="learning rate (train.optimizer.lr)")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adagrad, rmsprop, adadelta, adam or adamw")] = None,
    seed: Annotated[int | None, typer.Option(help="seeds the initial weights, the split, the order and augmentation (train.seed)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any train: field, KEY=VALUE, repeatable (schedule.name=cosine)")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/NAME-TIMESTAMP)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run from its last checkpoint")] = None,
    init: Annotated[Path | None, typer.Option(help="start from a checkpoint's weights (a .safetensors file, a run, RUN@best) where names and shapes fit: transfer learning")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="an unreadable image or missing file is an error (default: skipped and counted)")] = False,
    workers: Annotated[int | None, typer.Option(min=0, help="processes decoding image files (train.data.workers) [default: the cores available]")] = None,
    classes: Annotated[str | None, typer.Option(help="the output layer's width: auto (the data's class count), N, or spec (train.classes)")] = None,
    freeze: Annotated[str | None, typer.Option(help="layers that do not train, comma-separated: names, groups, globs (layer1.*) or before:NAME (train.freeze)")] = None,
    head_only: Annotated[bool, typer.Option("--head-only", help="train only the classifier (the last dense layer), solved to convergence on the frozen body's cached features (--freeze before:CLASSIFIER, train.solve)")] = False,
    keep_head: Annotated[bool, typer.Option("--keep-head", help="with --init: keep its classifier whenever the shape fits (default: only when the data's class names are the init run's)")] = False,
    keep: Annotated[str | None, typer.Option(help="epoch checkpoints kept: the N newest and the best, or all (train.keep) [default: 1, the latest and the best]")] = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="data-parallel processes (torchrun on this host; with --engine spark, Spark tasks)")] = None,
    sync_batchnorm: Annotated[bool, typer.Option("--sync-batchnorm", help="batch norm statistics over all processes (CUDA; train.distributed.sync_batchnorm)")] = False,
    engine: Annotated[Engine, typer.Option(help="local (this host; torchrun with --nproc) or spark (TorchDistributor)")] = Engine.local,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[NPROC]]")] = None,
) -> None:
    """Train a spec with the shared harness; writes a run directory."""
    if engine is Engine.spark:
        _train_on_spark(spec, nproc or 1, master, out, resume, device)
        return
    if nproc is not None and nproc > 1 and "RANK" not in os.environ:
        _launch_torchrun(spec, nproc, out, resume)
        return
    overrides: dict[str, Any] = _parse_sets(set_ or [])
    if sync_batchnorm:
        overrides["distributed.sync_batchnorm"] = True
    if strict:
        overrides["data.strict"] = True
    if classes is not None:
        overrides["classes"] = int(classes) if classes.isdigit() else classes
    if head_only and (freeze is not None or resume is not None):
        _usage("--head-only freezes every layer before the classifier: give it without " + ("--freeze" if freeze is not None else "--resume (a resumed run keeps its own freezing)"))
    if freeze is not None:
        overrides["freeze"] = [part.strip() for part in freeze.split(",") if part.strip()]
    if keep is not None:
        if not (keep == "all" or (keep.isdigit() and int(keep) > 0)):
            _usage(f"--keep takes a number of checkpoints (1 or more) or all, got '{keep}'")
        overrides["keep"] = "all" if keep == "all" else int(keep)
    for key, value in (("data.source", data), ("data.workers", workers), ("epochs", epochs), ("batch_size", batch_size), ("optimizer.lr", lr), ("optimizer.name", optimizer), ("seed", seed),
                       ("memory_format", memory_format and memory_format.replace("-", "_"))):
        if value is not None:
            overrides[key] = value
    from cnnspec import api
    from cnnspec.harness.overrides import OptionError

    try:
        if resume is not None:
            result = api.resume(resume, backend=backend, device=device, quiet=quiet, **overrides)
        else:
            if spec is None:
                _usage("train needs a SPEC (or --resume RUN_DIR)")
            graph = load_spec(spec)
            if input_size is not None or channels is not None:
                graph = with_input_size(graph, _input_size(input_size), channels)
            if head_only:
                _classifier(graph)  # a spec without one is a usage error
            result = api.train(graph, backend or "torch", device=device, precision=precision, compile=compile, out=out,
                               init=init, head_only=head_only, keep_head=keep_head, quiet=quiet, **overrides)
    except SpecNotFound as exc:
        _usage(str(exc))
    except SpecError as exc:
        _fail(exc.diagnostics)
    except OptionError as exc:
        _usage(str(exc))
    except _run_errors() as exc:
        _fail_run(exc)
    final = result.final if result.history else {}
    if not quiet and final and os.environ.get("RANK", "0") == "0":
        stdout.print(
            f"done: val_accuracy {final['val_accuracy']:.4f}, val_loss {final['val_loss']:.4f} after {plural(int(final['epoch']), 'epoch')}; "
            f"run in {result.run_dir} (curves.png, metrics.jsonl, checkpoints/)",
            markup=False,
            soft_wrap=True,
        )


def _command_argv(out: Path | None, resume: Path | None, spec: str | None, *drop: str) -> tuple[list[str], Path]:
    """This ``train`` command's own arguments, without ``drop``'s options, naming the run
    folder every process writes to (named here when not given): (argv, run folder)."""
    from cnnspec.distributed.launch import without_option

    argv = sys.argv[1:]
    if "train" not in argv:
        _usage(f"{drop[0]} is for the cnnspec command line; from Python, see cnnspec.distributed")
    argv = argv[argv.index("train") + 1 :]
    for name in drop:
        argv = without_option(argv, name)
    argv = _absolute_paths(argv, spec)
    if resume is not None:
        return argv, resume.absolute()
    if out is None:
        if spec is None:
            _usage("train needs a SPEC (or --resume RUN_DIR)")
        from cnnspec.harness.run import default_run_dir

        try:
            out = default_run_dir(load_spec(spec))
        except SpecNotFound as exc:
            _usage(str(exc))
        except SpecError as exc:
            _fail(exc.diagnostics)
        argv += ["--out", str(out.absolute())]
    return argv, out.absolute()


def _absolute_paths(argv: list[str], spec: str | None) -> list[str]:
    """The paths of a command line made absolute: the processes it runs in may start
    elsewhere (a Spark worker runs in a folder of its own)."""
    named = ("--out", "--resume", "--init", "--data")

    def absolute(option: str, value: str) -> str:
        return str(Path(value).absolute()) if option in named[:3] or Path(value).exists() else value

    out = []
    for position, item in enumerate(argv):
        option, _, value = item.partition("=")
        if option in named and value:  # --out=runs/x
            item = f"{option}={absolute(option, value)}"
        elif position and argv[position - 1] in named:
            item = absolute(argv[position - 1], item)
        elif item == spec and Path(item).is_file():
            item = str(Path(item).absolute())
        out.append(item)
    return out


def _launch_torchrun(spec: str | None, nproc: int, out: Path | None, resume: Path | None) -> None:
    """Run this same command in ``nproc`` processes (torchrun --standalone)."""
    from cnnspec.distributed.launch import launch

    argv, run_dir = _command_argv(out, resume, spec, "--nproc")
    _, failure = launch(nproc, argv, run_dir)
    if failure:
        stderr.print(f"cnnspec: error: {failure}", markup=False, soft_wrap=True)
        raise typer.Exit(1)


def _train_on_spark(spec: str | None, nproc: int, master: str | None, out: Path | None, resume: Path | None, device: str) -> None:
    """Run this same command in ``nproc`` Spark tasks through TorchDistributor."""
    from cnnspec.distributed.spark import SparkError, train

    argv, run_dir = _command_argv(out, resume, spec, "--engine", "--nproc", "--master")
    try:
        result = train(argv, run_dir, nproc, master, use_gpu=device.startswith("cuda"))
    except SparkError as exc:
        _fail_run(exc)
    final = result.get("final") or {}
    if final:
        stdout.print(
            f"done on Spark ({nproc} task{'s' if nproc != 1 else ''}): val_accuracy {final['val_accuracy']:.4f}, "
            f"val_loss {final['val_loss']:.4f} after {plural(final['epoch'], 'epoch')}; run in {run_dir}",
            markup=False,
            soft_wrap=True,
        )


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str | None, typer.Option(help="evaluate on other data (default: the run's validation split)")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
    runtime: RuntimeOpt = "auto",
) -> None:
    """Loss, accuracy, top-k, per-class accuracy and the confusion matrix of a run."""
    from cnnspec import api

    try:
        result = api.evaluate(run, data=data, backend=backend, device=device, runtime=runtime, said=_said if format is Format.table else None)
    except _run_errors() as exc:
        _fail_run(exc)
    if format is Format.json:
        sys.stdout.write(strict_json(result, indent=2) + "\n")
        return
    from cnnspec.report import render_evaluation

    render_evaluation(result, stdout)


@app.command()
def features(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str, typer.Option(help="images: class folders, a manifest, tar shards, or array data")],
    layer: Annotated[str, typer.Option(help="the layer whose output is wanted (e.g. the one before the classifier)")],
    out: Annotated[Path, typer.Option("--output", "-o", help="the safetensors file to write")] = Path("features.safetensors"),
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
) -> None:
    """A layer's output for every image (bottleneck features), saved with labels, class names and paths."""
    from cnnspec import api

    try:
        result = api.features(run, data, layer, out=out, backend=backend, device=device, runtime=runtime, said=_said)
    except _run_errors() as exc:
        _fail_run(exc)
    shape = " x ".join(map(str, result.values.shape))
    stdout.print(f"{out}: features {shape} from '{layer}', {len(result.classes)} classes", markup=False, soft_wrap=True)


@app.command()
def embed(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str, typer.Option(help="images: class folders, a manifest, tar shards, or array data")],
    out: Annotated[Path, typer.Option("--output", "-o", help="the index file")] = Path("embeddings.index"),
    layer: Annotated[str | None, typer.Option(help="the layer whose output is the embedding [default: the input of the last dense layer]")] = None,
    update: Annotated[bool, typer.Option("--update", help="embed only new and changed images of the index at -o; drop deleted ones")] = False,
    metric: Annotated[str, typer.Option(help="cosine (embeddings L2-normalised) or l2")] = "cosine",
    dtype: Annotated[str, typer.Option(help="float32 or float16 storage")] = "float32",
    approximate: Annotated[
        bool | None, typer.Option("--approximate/--exact-only", help="also build an approximate (FAISS) structure [default: from 200,000 images]")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    engine: Annotated[Engine, typer.Option(help="local, or spark: embed on Spark and write Parquet (path, embedding) to --output")] = Engine.local,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[*]]")] = None,
) -> None:
    """Embed a collection of images into a searchable index (see `similar`)."""
    if engine is Engine.spark:
        from cnnspec.harness.run import load_run
        from cnnspec.search import default_layer

        try:
            chosen = layer or default_layer(load_run(run).graph)
        except _run_errors() as exc:
            _fail_run(exc)
        _score_on_spark(run, data, out, layer=chosen, embed_only=True, master=master, backend=backend, runtime=runtime)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnspec import api

    bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr, transient=True,
                   disable=not stderr.is_terminal)
    task = bar.add_task("embed", total=None)
    try:
        with bar:
            report = api.embed(run, data, layer=layer, out=out, update=update, metric=metric, dtype=dtype, approximate=approximate, backend=backend,
                               device=device, progress=lambda done, total: bar.update(task, completed=done, total=total), runtime=runtime, said=_said)
    except _run_errors() as exc:
        _fail_run(exc)
    index = report.index
    what = (f"{report.added} added, {report.changed} changed, {report.removed} removed, {report.kept} kept" if update
            else f"{len(index):,} images")
    structure = f"; approximate structure {out.name}.ivf" if index.approximate is not None else ""
    stdout.print(f"{out}: {what}; {index.embeddings.shape[1]} values each from '{index.meta['layer']}' ({index.metric}, {index.meta['dtype']}){structure}",
                 markup=False, soft_wrap=True)
    if report.skipped:
        stdout.print(f"skipped {len(report.skipped)} unreadable: {', '.join(report.skipped[:3])}", markup=False, soft_wrap=True)


@app.command()
def similar(
    index: Annotated[Path, typer.Argument(help="an index written by `cnnspec embed`")],
    queries: Annotated[list[Path] | None, typer.Argument(help="query images")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="neighbours per query")] = 10,
    sheet: Annotated[Path | None, typer.Option(help="also draw a contact sheet PNG: each query and its neighbours")] = None,
    duplicates: Annotated[bool, typer.Option("--duplicates", help="instead of queries: groups of near-duplicates in the index")] = False,
    threshold: Annotated[float, typer.Option(help="--duplicates: the cosine similarity that makes two images duplicates")] = 0.95,
    exact: Annotated[bool, typer.Option("--exact", help="search every embedding even where an approximate structure exists")] = False,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
) -> None:
    """The images of an index nearest to each query, embedded the way the index was."""
    from cnnspec import api
    from cnnspec.search import Index, contact_sheet, duplicate_groups

    if duplicates:
        try:
            loaded = Index.load(index)
            groups = duplicate_groups(loaded, threshold)
        except _run_errors() as exc:
            _fail_run(exc)
        if format is Format.json:
            sys.stdout.write(strict_json([[loaded.paths[i] for i in group] for group in groups], indent=2) + "\n")
            return
        stdout.print(f"{len(groups)} group(s) of near-duplicates (cosine similarity >= {threshold:g}) among {len(loaded):,} images", markup=False)
        for number, group in enumerate(groups, 1):
            stdout.print(f"group {number} ({len(group)} images):", markup=False)
            for i in group:
                stdout.print(f"  {loaded.paths[i]}", markup=False, soft_wrap=True)
        return
    if not queries:
        _usage("similar needs query images (or --duplicates)")
    try:
        scores, positions, loaded = api.similar(index, list(queries), k=k, exact=exact, backend=backend, device=device)
        if sheet is not None:
            contact_sheet(list(queries), scores, positions, loaded, sheet)
    except _run_errors() as exc:
        _fail_run(exc)
    name = "similarity" if loaded.metric == "cosine" else "distance"
    results: list[dict[str, Any]] = [
        {"query": str(query), "neighbours": [{"path": loaded.paths[p], name: float(v), "class": _class_name(loaded.classes, int(loaded.labels[p])), "label": int(loaded.labels[p])} for v, p in zip(row_scores, row, strict=True)]}
        for query, row_scores, row in zip(queries, scores, positions, strict=True)
    ]
    if format is Format.json:
        sys.stdout.write(strict_json(results, indent=2) + "\n")
        return
    width = max((len(n["class"]) for item in results for n in item["neighbours"]), default=0)
    for item in results:
        stdout.print(f"{item['query']}:", markup=False, soft_wrap=True)
        for rank, neighbour in enumerate(item["neighbours"], 1):
            stdout.print(f"  {rank:>3}  {neighbour[name]:.4f}  {neighbour['class']:<{width}}  {neighbour['path']}", markup=False, soft_wrap=True)


def _class_name(classes: list[str], label: int) -> str:
    """An index row's class name; its number where the index holds no names for it."""
    return classes[label] if 0 <= label < len(classes) else str(label)


def _score_on_spark(run: Path, data: str | None, out: Path | None, *, top: int = 5, layer: str | None = None, embed_only: bool = False,
                    master: str | None, backend: str | None, runtime: str = "auto") -> None:
    from cnnspec.distributed.spark import SparkError, score

    if data is None or out is None:
        _usage("--engine spark needs --data (a folder, file or glob of images) and --output (a .parquet folder to write)")
    failures: tuple[type[BaseException], ...] = (SparkError, *_run_errors())
    try:
        rows = score(run, data, out, top=top, layer=layer, embed_only=embed_only, master=master, backend=backend, runtime=runtime, said=_said)
    except failures as exc:
        _fail_run(exc)
    what = f"embeddings from '{layer}'" if embed_only else f"top {top} classes" + (f" and embeddings from '{layer}'" if layer else "")
    stdout.print(f"{out}: {rows:,} images, {what} (Parquet; unreadable images have their reason in 'error')", markup=False, soft_wrap=True)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    inputs: Annotated[list[str] | None, typer.Argument(help="image files, folders (searched recursively), globs, or .npy batches (N x C x H x W, float32 in [0, 1])")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="how many of the most likely classes to show")] = 5,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="save the raw network outputs as .npy (--engine spark: the Parquet output)")] = None,
    runtime: RuntimeOpt = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="images per engine call [default: the run's train.batch_size]")] = None,
    engine: Annotated[Engine, typer.Option(help="local, or spark: score --data on Spark and write Parquet to --output")] = Engine.local,
    data: Annotated[str | None, typer.Option(help="--engine spark: a folder (searched recursively), file or glob of images")] = None,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[*]]")] = None,
) -> None:
    """The top classes, with probabilities, for each input."""
    if engine is Engine.spark:
        _score_on_spark(run, data, output, top=top, master=master, backend=backend, runtime=runtime)
        return
    if not inputs:
        _usage("predict needs INPUTS (image files, folders, globs or .npy batches), or --engine spark --data PATH --output scores.parquet")
    from cnnspec import api

    try:
        results, outputs = api.predict(run, list(inputs), top=top, backend=backend, device=device, runtime=runtime,
                                       said=_said if format is Format.table else None, batch_size=batch_size)
        if output is not None:
            import numpy as np

            from cnnspec.harness.weights import atomic_write

            atomic_write(output, lambda p: np.save(open(p, "wb"), outputs))
    except _run_errors() as exc:
        _fail_run(exc)
    failed = [item for item in results if item["error"] is not None]
    if format is Format.json:
        sys.stdout.write(strict_json(results, indent=2) + "\n")
    else:
        for item in results:
            if item["error"] is None:
                ranked = ", ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in item["top"])
                stdout.print(f"{item['input']}: {ranked}", markup=False, soft_wrap=True)
            else:
                stderr.print(f"{item['input']}: {item['error']}", markup=False, soft_wrap=True)
    if failed:
        stderr.print(f"{len(failed)} of {len(results)} inputs could not be read (named above); the others were scored", markup=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def inspect(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    inputs: Annotated[list[Path], typer.Argument(help="image files, or .npy batches (N x C x H x W, float32 in [0, 1])")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the page to write")] = Path("inspect.html"),
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="how many of the most likely classes to show")] = 5,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """One HTML page of the network from the inside, for each input: every layer's
    activations and gradients, the first filters, saliency and Grad-CAM."""
    from cnnspec import inspection
    from cnnspec.harness.weights import write_text

    start = time.perf_counter()
    try:
        seen = inspection.inspect(run, list(inputs), backend=backend, device=device, top=top)
        page = inspection.render(seen)
        write_text(out, page)
    except _run_errors() as exc:
        _fail_run(exc)
    stdout.print(f"wrote {out} ({len(page.encode()) / 2**20:.1f} MiB): {len(seen.images)} image(s), {len(seen.graph.nodes)} layers each, "
                 f"{time.perf_counter() - start:.1f} s", markup=False, soft_wrap=True)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the page to write [default: RUN/report.html]")] = None,
    data: Annotated[str | None, typer.Option(help="evaluate on other data than the run's validation split")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """The run on one HTML page: network, hyperparameters, curves, confusion matrix,
    per-class accuracy, the most confident mistakes, timings, environment."""
    from cnnspec import reporting
    from cnnspec.harness.run import RunDir
    from cnnspec.harness.weights import write_text

    try:
        page, figures = reporting.report(run, backend=backend, device=device, data=data)
        target = out or RunDir.find(run)[0].path / "report.html"
        write_text(target, page)
    except _run_errors() as exc:
        _fail_run(exc)
    evaluation = figures["evaluation"]
    stdout.print(f"wrote {target} ({len(page.encode()) / 2**20:.1f} MiB): {plural(figures['epochs'], 'epoch')}, accuracy {evaluation['accuracy']:.4f} on "
                 f"{evaluation['images']:,} images of {figures['data']}", markup=False, soft_wrap=True)


@app.command()
def verify(
    target: Annotated[str, typer.Argument(help="a spec or zoo name (seeded weights), or a run directory/checkpoint")],
    backends: Annotated[
        str | None, typer.Option(help="comma-separated; the first is the reference [default: every installed backend]")
    ] = None,
    device: DeviceOpt = "cpu",
    input_size: Annotated[str | None, typer.Option("--input-size", help="H,W: check a big model at a smaller input")] = None,
    batch: Annotated[int, typer.Option(min=1, help="random inputs compared")] = 2,
    seed: Annotated[int, typer.Option(help="seeds the random inputs (and a spec's initial weights)")] = 0,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest relative error allowed")] = TOLERANCE,
    weights: Annotated[Path | None, typer.Option(help="a .safetensors checkpoint for the spec (from `cnnspec import`)")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
) -> None:
    """Run identical weights and inputs through several backends and compare every layer."""
    from cnnspec.verify import load_target
    from cnnspec.verify import verify as run_verification

    size = _input_size(input_size)
    try:
        graph, arrays, source = load_target(target, size, weights)
        from cnnspec.backends import installed_backends

        names = installed_backends() if backends is None else [b.strip() for b in backends.split(",") if b.strip()]
        result = run_verification(graph, names, weights=arrays,
                                  weights_from=source, device=device, batch=batch, seed=seed, tolerance=tolerance)
    except SpecNotFound as exc:
        _usage(str(exc))
    except _run_errors() as exc:
        _fail_run(exc)
    if format is Format.json:
        sys.stdout.write(strict_json(result.as_json(), indent=2) + "\n")
    else:
        from cnnspec.report import render_verification

        render_verification(result, stdout)
    first = result.first_divergence
    if first is not None:
        worst = max(first.errors, key=lambda b: first.errors[b][1])
        stderr.print(
            f"cnnspec: error: {worst} diverges from {result.reference} first at layer '{first.layer}' ({first.kind}): "
            f"relative error {first.errors[worst][1]:.2e} > {tolerance:g}",
            markup=False, soft_wrap=True,
        )
        raise typer.Exit(1)


def _input_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from cnnspec.load import parse_input_size

    try:
        return parse_input_size(text)
    except ValueError as exc:
        _usage(str(exc))


# ---- export, draw, import ------------------------------------------------------------------

FORMATS_HELP = "onnx, torchscript, torch-export, savedmodel, keras, tflite; or a diagram: dot, svg, png"


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="a spec or zoo name (fresh weights), or a run directory/checkpoint")],
    to: Annotated[str, typer.Option("--to", "-t", help=FORMATS_HELP)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where to write [default: NAME.SUFFIX here, or RUN/exports/]")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (13 and up) [default: 17]")] = None,
    weights: Annotated[Path | None, typer.Option(help="a .safetensors checkpoint for the spec (from `cnnspec import`)")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="H,W: export a spec at another input size")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest relative error allowed")] = TOLERANCE,
    no_preprocessing: Annotated[
        bool, typer.Option("--no-preprocessing", help="a run's export takes inputs already scaled and normalised (default: raw pixels in [0, 1], as predict)")
    ] = False,
) -> None:
    """Write a model another framework runs, verified against cnnspec before it is reported."""
    from cnnspec import exporting
    from cnnspec.verify import load_target

    if to not in exporting.FORMATS and to not in exporting.DIAGRAMS:
        from cnnspec.diagnostics import did_you_mean

        _usage(f"unknown format '{to}'{did_you_mean(to, [*exporting.FORMATS, *exporting.DIAGRAMS])}; use {FORMATS_HELP}")
    try:
        graph, arrays, source = load_target(target, _input_size(input_size), weights)
        path = out or exporting.default_path(graph, to, target)
        if to in exporting.DIAGRAMS:
            from cnnspec.draw import draw

            draw(graph, path.with_suffix(exporting.DIAGRAMS[to]) if out is None else path)
            stdout.print(f"wrote {path}", markup=False)
            return
        if arrays is None:
            from cnnspec.harness.weights import initial_weights

            arrays = initial_weights(graph, 0)
            stderr.print(f"note: {target} is a spec, not a trained run: exporting freshly initialised weights (seed 0)",
                         markup=False, soft_wrap=True)
        extra = exporting.run_preprocessing(Path(target)) if Path(target).is_dir() else {}
        preprocessing = None
        if extra and not no_preprocessing:
            from cnnspec.harness.run import load_run

            preprocessing = load_run(Path(target)).normalization
        with stderr.status(f"exporting {graph.name} to {to}: build, run, compare, write, reload, compare again"):
            report = exporting.export(graph, arrays, to, path, weights_from=source, options={"opset": opset},
                                      tolerance=tolerance, extra_metadata=extra, preprocessing=preprocessing)
    except SpecNotFound as exc:
        _usage(str(exc))
    except (*_run_errors(), exporting.ExportFailed, LookupError) as exc:  # type: ignore[misc]
        _fail_run(exc)
    stdout.print(
        f"wrote {report.path} ({report.format}, {report.bytes / 2**20:.1f} MiB): verified against the {report.reference} "
        f"backend on a batch of {report.batch[0]}, max abs error {report.max_abs_error:.2e}, "
        f"max relative {report.max_rel_error:.2e}; {report.metadata_in}",
        markup=False, soft_wrap=True,
    )
    if preprocessing is not None:
        stdout.print(
            f"inputs are N x {' x '.join(map(str, graph.input_shape))} float32 raw pixels in [0, 1] (8-bit images / 255), as `cnnspec predict` "
            f"takes .npy batches: the run's scaling and normalisation are the model's first layer, '{exporting.PREPROCESS}' "
            f"(--no-preprocessing leaves them to you); verified against predict's path on the same pixels",
            markup=False, soft_wrap=True,
        )
    elif extra:
        norm = json.loads(extra["cnnspec.preprocessing"])
        stdout.print(
            f"inputs are N x {' x '.join(map(str, graph.input_shape))} float32, prepared as in training: x * {norm['scale']:.6g}, "
            f"then (x - mean) / std per channel with mean {[round(m, 4) for m in norm['mean']]}, "
            f"std {[round(v, 4) for v in norm['std']]}" + ("" if report.metadata_in.startswith("no ") else " (stored in the metadata)"),
            markup=False, soft_wrap=True,
        )
    if extra:
        try:
            recipe = exporting.write_preparation(Path(target), report.path, preprocessing is not None) if len(graph.input_shape) == 3 else None
        except (*_run_errors(),) as exc:
            _fail_run(exc)
        stdout.print(f"image files are prepared first, as predict prepares them: {extra['cnnspec.image_preparation']}"
                     + (f"; in plain Pillow and NumPy: prepare(path) in {recipe}" if recipe is not None else "")
                     + f"; outputs are {extra['cnnspec.outputs']}", markup=False, soft_wrap=True)


@app.command()
def draw(
    spec: Annotated[str, typer.Argument(help="a spec file, zoo name or run directory")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help=".svg, .png or .dot [default: NAME.svg]")] = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
) -> None:
    """Draw the network (each layer's name, kind, shape and params): SVG, PNG or DOT."""
    from cnnspec.draw import draw as draw_graph
    from cnnspec.verify import load_target

    try:
        graph, _, _ = load_target(spec, None)
        if input_size is not None or channels is not None:
            graph = with_input_size(graph, _input_size(input_size), channels)
        path = out or Path(f"{graph.name}.svg")
        draw_graph(graph, path)
    except SpecNotFound as exc:
        _usage(str(exc))
    except (*_run_errors(),) as exc:
        _fail_run(exc)
    stdout.print(f"wrote {path}", markup=False)


@app.command("import")
def import_(
    model: Annotated[Path, typer.Argument(help="a model (.onnx, .keras, full-model .h5); or a PyTorch state_dict (.pt, .pth) or Keras .weights.h5 with --spec")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the spec to write (.yaml; a model) or the checkpoint (.safetensors; weights)")] = None,
    spec: Annotated[str | None, typer.Option(help="the spec or zoo name the weights belong to (state_dict, .weights.h5)")] = None,
    run: Annotated[Path | None, typer.Option(help="with --spec: write the weights as a run directory, for predict, eval, inspect and export")] = None,
    classes: Annotated[Path | None, typer.Option(help="with --run: a text file of class names, one a line, in output order")] = None,
    normalize: Annotated[str, typer.Option(help="with --run: auto (ImageNet's mean and std for 3 channels, else [0, 1]), imagenet, unit or none")] = "auto",
) -> None:
    """Bring a model in: ONNX or Keras to a spec and checkpoint; torchvision or Keras weights to a checkpoint or a run."""
    from cnnspec import importing

    if (classes is not None or normalize != "auto") and run is None:
        _usage("--classes and --normalize describe a run: add --run DIR")
    try:
        written = importing.import_model(model, out, spec, run, classes, normalize)
    except SpecNotFound as exc:
        _usage(str(exc))
    except (*_run_errors(), LookupError) as exc:  # type: ignore[misc]
        _fail_run(exc)
    for line in written:
        stdout.print(line, markup=False, soft_wrap=True)


SizeOpt = Annotated[int, typer.Option("--size", "-n", min=1, help="input size N along one axis")]
KernelOpt = Annotated[int, typer.Option("--kernel", "-k", min=1, help="kernel size F")]
PaddingOpt = Annotated[str, typer.Option("--padding", "-p", metavar="P|same", help="padding P on each side, or same (TensorFlow's rule)")]
RoundingOpt = Annotated[Rounding, typer.Option("--rounding", help="exact refuses a fraction; floor or ceil round it")]


@calc_app.command("conv")
def calc_conv(
    size: SizeOpt,
    kernel: KernelOpt,
    stride: Annotated[int, typer.Option("--stride", "-s", min=1, help="stride S")] = 1,
    padding: PaddingOpt = "0",
    dilation: Annotated[int, typer.Option("--dilation", "-d", min=1, help="dilation D (1: none)")] = 1,
    rounding: RoundingOpt = Rounding.exact,
) -> None:
    """Output size of a convolution: (N + 2P - D(F-1) - 1)/S + 1."""
    if padding == "same":
        ok, lines, _ = same_walkthrough(size, kernel, stride, dilation, "conv")
    else:
        ok, lines = conv_walkthrough(size, kernel, stride, _padding_amount(padding), dilation, rounding.value)
    _print_walkthrough(ok, lines)


def _padding_amount(text: str) -> int:
    if not text.isdigit():
        _usage(f"--padding takes a number of pixels or 'same', got {text!r}")
    return int(text)


@calc_app.command("pool")
def calc_pool(
    size: SizeOpt,
    kernel: KernelOpt,
    stride: Annotated[int | None, typer.Option("--stride", "-s", min=1, help="defaults to the kernel size")] = None,
    padding: PaddingOpt = "0",
    rounding: RoundingOpt = Rounding.exact,
) -> None:
    """Output size of a pooling window: (N + 2P - F)/S + 1, stride defaulting to F."""
    if padding == "same":
        ok, lines, _ = same_walkthrough(size, kernel, stride or kernel, 1, "pool")
    else:
        ok, lines = pool_walkthrough(size, kernel, stride or kernel, _padding_amount(padding), rounding.value)
    _print_walkthrough(ok, lines)


def _print_walkthrough(ok: bool, lines: list[str]) -> None:
    for line in lines:
        (stdout if ok else stderr).print(line, markup=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def _invoked_only(argv: list[str]) -> typer.Typer:
    """The app with only the command that ``argv`` names. Typer reads the signature of
    every registered command before it runs one, a sixth of the start-up of ``cnnspec
    check``; help for that command and its errors are the same. Without a known command
    name (``cnnspec --help``, a misspelling) every command stays, to be listed."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    commands = [info for info in app.registered_commands if (info.name or info.callback.__name__.replace("_", "-")) == word]  # type: ignore[union-attr]
    groups = [info for info in app.registered_groups if info.name == word]
    if not (commands or groups):
        return app
    narrowed = copy.copy(app)
    narrowed.registered_commands, narrowed.registered_groups = commands, groups
    return narrowed


def main() -> None:
    """The Typer app, for every command line (``cnnspec.launch.main`` runs the plain
    forms of ``check`` without it)."""
    from cnnspec.launch import guarded

    guarded(_invoked_only(sys.argv[1:]))
