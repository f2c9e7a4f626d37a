"""cnnspec train: one process, torchrun (--nproc) or Spark (--engine spark)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnspec.cli.common import (
    ChannelsOpt,
    DeviceOpt,
    Engine,
    InputSizeOpt,
    _classifier,
    _fail,
    _fail_run,
    _input_size,
    _parse_sets,
    _run_errors,
    _usage,
    stderr,
    stdout,
)
from cnnspec.errors import plural
from cnnspec.graph.load import SpecNotFound, load_spec, with_input_size
from cnnspec.spec.diagnostics import SpecError


def train(
    spec: Annotated[str | None, typer.Argument(help="a spec file or zoo name (not needed with --resume)")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="torch, tensorflow or numpy [default: torch; with --resume, the run's]")
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, else fp32), bf16, fp16 or fp32")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (measured not to pay on the CPU; see the README)")] = False,
    memory_format: Annotated[str | None, typer.Option(
        "--memory-format", help="torch: auto (the layout measured faster for this network on this CPU, cached; channels-last on a GPU), channels_last or contiguous (train.memory_format)")] = None,
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
    mlflow: Annotated[str | None, typer.Option("--mlflow", help="also log the run to MLflow: sqlite:///mlflow.db (a file, no server), a folder or a server URL (train.track.mlflow)")] = None,
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
    for key, value in (("track.mlflow", mlflow), ("data.source", data), ("data.workers", workers), ("epochs", epochs), ("batch_size", batch_size), ("optimizer.lr", lr), ("optimizer.name", optimizer), ("seed", seed),
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
        from cnnspec.runs.folder import default_run_dir

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
