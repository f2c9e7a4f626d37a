"""The ``cnnspec`` command. Thin: each command parses options and calls the library.

Exit status: 0 success, 1 a problem in the input (spec errors print as
``PATH:LINE:COL: error: message``), 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from cnnspec.calcview import conv_walkthrough, pool_walkthrough
from cnnspec.diagnostics import Diagnostic, SpecError
from cnnspec.load import SpecNotFound, load_spec, zoo_names, zoo_path

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

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


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
    for diagnostic in diagnostics:
        stderr.print(str(diagnostic), markup=False, soft_wrap=True)
    errors = sum(d.severity == "error" for d in diagnostics)
    stderr.print(f"{errors} error{'s' * (errors != 1)}", markup=False)
    raise typer.Exit(1)


def _usage(message: str) -> NoReturn:
    stderr.print(f"cnnspec: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a zoo spec (see 'cnnspec zoo')")]


@app.command()
def check(
    spec: SpecArg,
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json")] = Format.table,
) -> None:
    """Validate a spec and show every layer's output shape, parameters and MACs."""
    try:
        graph = load_spec(spec)
    except SpecNotFound as exc:
        _usage(str(exc))
    except SpecError as exc:
        _fail(exc.diagnostics)
    except OSError as exc:
        _fail([Diagnostic.at_file(spec, f"cannot read: {exc.strerror or exc}")])
    for warning in graph.warnings:
        stderr.print(str(warning), markup=False, soft_wrap=True)
    if format is Format.json:
        from cnnspec.report import check_json

        sys.stdout.write(json.dumps(check_json(graph), indent=2) + "\n")
    else:
        from cnnspec.report import render_check

        render_check(graph, stdout)


@app.command()
def zoo() -> None:
    """List the bundled specs with their parameters and MACs."""
    table = Table(title="cnnspec zoo (cnnspec check NAME shows one)")
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

    sys.stdout.write(json.dumps(spec_json_schema(), indent=2) + "\n")


SizeOpt = Annotated[int, typer.Option("--size", "-n", min=1, help="input size N along one axis")]
KernelOpt = Annotated[int, typer.Option("--kernel", "-k", min=1, help="kernel size F")]
PaddingOpt = Annotated[int, typer.Option("--padding", "-p", min=0, help="padding P on each side")]
RoundingOpt = Annotated[Rounding, typer.Option("--rounding", help="exact refuses a fraction; floor or ceil round it")]


@calc_app.command("conv")
def calc_conv(
    size: SizeOpt,
    kernel: KernelOpt,
    stride: Annotated[int, typer.Option("--stride", "-s", min=1)] = 1,
    padding: PaddingOpt = 0,
    dilation: Annotated[int, typer.Option("--dilation", "-d", min=1)] = 1,
    rounding: RoundingOpt = Rounding.exact,
) -> None:
    """Output size of a convolution: (N + 2P - D(F-1) - 1)/S + 1."""
    ok, lines = conv_walkthrough(size, kernel, stride, padding, dilation, rounding.value)
    _print_walkthrough(ok, lines)


@calc_app.command("pool")
def calc_pool(
    size: SizeOpt,
    kernel: KernelOpt,
    stride: Annotated[int | None, typer.Option("--stride", "-s", min=1, help="defaults to the kernel size")] = None,
    padding: PaddingOpt = 0,
    rounding: RoundingOpt = Rounding.exact,
) -> None:
    """Output size of a pooling window: (N + 2P - F)/S + 1, stride defaulting to F."""
    ok, lines = pool_walkthrough(size, kernel, stride or kernel, padding, rounding.value)
    _print_walkthrough(ok, lines)


def _print_walkthrough(ok: bool, lines: list[str]) -> None:
    for line in lines:
        (stdout if ok else stderr).print(line, markup=False)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: known failures exit 1 or 2 with a message, never a traceback."""
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # a bug in cnnspec itself: say so plainly
        if os.environ.get("CNNSPEC_DEBUG"):
            raise
        stderr.print(f"cnnspec: internal error: {type(exc).__name__}: {exc} (set CNNSPEC_DEBUG=1 for a traceback)", markup=False)
        sys.exit(3)
