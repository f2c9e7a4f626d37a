"""Commands on a spec, no run needed: check, zoo, schema, draw and the calc walkthroughs."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cnnspec.cli.common import (
    ChannelsOpt,
    Format,
    InputSizeOpt,
    SpecArg,
    _fail_run,
    _input_size,
    _print_walkthrough,
    _run_errors,
    _usage,
    stdout,
)
from cnnspec.graph.load import SpecNotFound, load_spec, with_input_size, zoo_names, zoo_path
from cnnspec.strictjson import strict_json
from cnnspec.views.calcview import conv_walkthrough, pool_walkthrough, same_walkthrough


class Rounding(StrEnum):
    exact = "exact"
    floor = "floor"
    ceil = "ceil"


def check(
    spec: SpecArg,
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json")] = Format.table,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
) -> None:
    """Validate a spec and show every layer's output shape, parameters and MACs."""
    from cnnspec.views.check import run_check

    status = run_check(spec, format.value, _input_size(input_size), channels)  # also what `cnnspec check` runs without Typer (cnnspec.launch)
    if status:
        raise typer.Exit(status)


def zoo(
    name: Annotated[str | None, typer.Argument(help="print this zoo spec's YAML, to edit as your own: cnnspec zoo resnet18 > mine.yaml")] = None,
) -> None:
    """List the bundled specs with their parameters and MACs, or print one spec's YAML."""
    if name is not None:
        names = zoo_names()
        if name not in names:
            from cnnspec.errors import did_you_mean

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


def schema() -> None:
    """Print the JSON Schema of the spec format (for editor completion)."""
    from cnnspec.spec.schema import spec_json_schema

    sys.stdout.write(strict_json(spec_json_schema(), indent=2) + "\n")


def draw(
    spec: Annotated[str, typer.Argument(help="a spec file, zoo name or run directory")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help=".svg, .png or .dot [default: NAME.svg]")] = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
) -> None:
    """Draw the network (each layer's name, kind, shape and params): SVG, PNG or DOT."""
    from cnnspec.porting.verify import load_target
    from cnnspec.views.draw import draw as draw_graph

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


SizeOpt = Annotated[int, typer.Option("--size", "-n", min=1, help="input size N along one axis")]


KernelOpt = Annotated[int, typer.Option("--kernel", "-k", min=1, help="kernel size F")]


PaddingOpt = Annotated[str, typer.Option("--padding", "-p", metavar="P|same", help="padding P on each side, or same (TensorFlow's rule)")]


RoundingOpt = Annotated[Rounding, typer.Option("--rounding", help="exact refuses a fraction; floor or ceil round it")]


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
