"""The ``cnnspec`` command, assembled: one Typer app, every command registered here. Thin: each command
parses options and calls the library.

Exit status: 0 success, 1 a problem in the input (spec errors print as
``PATH:LINE:COL: error: message``), 2 a usage error, 3 a bug in cnnspec (said plainly)."""

from __future__ import annotations

import copy
import sys
from typing import Annotated

import typer

from cnnspec.cli.common import stdout
from cnnspec.cli.guard import guarded
from cnnspec.cli.porting_commands import export, import_, verify
from cnnspec.cli.run_commands import embed, eval_, features, inspect, predict, report, similar
from cnnspec.cli.serve_command import serve
from cnnspec.cli.spec_commands import calc_conv, calc_pool, check, draw, schema, zoo
from cnnspec.cli.train_command import train
from cnnspec.cli.tune_command import tune

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
    """The Typer app, for every command line (``cnnspec.cli.launch.main`` runs the plain
    forms of ``check`` without it)."""
    guarded(_invoked_only(sys.argv[1:]))


# Every command, in the order `cnnspec --help` lists them.
app.command()(check)
app.command()(zoo)
app.command()(schema)
app.command()(train)
app.command()(tune)
app.command("eval")(eval_)
app.command()(features)
app.command()(embed)
app.command()(similar)
app.command()(predict)
app.command()(serve)
app.command()(inspect)
app.command()(report)
app.command()(verify)
app.command()(export)
app.command()(draw)
app.command("import")(import_)
calc_app.command("conv")(calc_conv)
calc_app.command("pool")(calc_pool)
