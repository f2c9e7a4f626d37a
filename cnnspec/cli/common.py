"""What every command shares: the consoles, the shared options, and how a failure is said (exit 1, one line)."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from cnnspec.errors import CnnspecError
from cnnspec.spec.diagnostics import Diagnostic, SpecError

if TYPE_CHECKING:

    from cnnspec.graph.dag import Graph


stdout = Console(highlight=False, emoji=False)  # "net.yaml:100:3:" is a place, not the emoji :100:


stderr = Console(stderr=True, highlight=False, emoji=False)


class Format(StrEnum):
    table = "table"
    json = "json"


def _fail(diagnostics: list[Diagnostic]) -> NoReturn:
    from cnnspec.views.check import report_diagnostics

    raise typer.Exit(report_diagnostics(diagnostics))


def _usage(message: str) -> NoReturn:
    stderr.print(f"cnnspec: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


def _classifier(graph: Graph) -> str:
    from cnnspec.graph.load import classifier_name

    try:
        return classifier_name(graph)
    except ValueError as exc:
        _usage(f"--head-only: {exc}")


SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a zoo spec (see 'cnnspec zoo')")]


InputSizeOpt = Annotated[str | None, typer.Option("--input-size", help="H,W: the spec at another input height and width (e.g. a zoo network at 64,64)")]


ChannelsOpt = Annotated[int | None, typer.Option("--channels", min=1, help="the spec with this many input channels (1 for greyscale)")]


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
    from cnnspec.backends.group import DistributedError
    from cnnspec.backends.protocol import BackendError
    from cnnspec.data.errors import DataError
    from cnnspec.errors import TrainingError

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


def _input_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from cnnspec.graph.load import parse_input_size

    try:
        return parse_input_size(text)
    except ValueError as exc:
        _usage(str(exc))


FORMATS_HELP = "onnx, torchscript, torch-export, savedmodel, keras, tflite; or a diagram: dot, svg, png"


def _print_walkthrough(ok: bool, lines: list[str]) -> None:
    for line in lines:
        (stdout if ok else stderr).print(line, markup=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)
