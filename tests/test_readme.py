"""The README cannot drift from the program: every YAML block checks (a spec, or a `train:`
section on a zoo spec), every `cnnspec` command it shows is one the CLI accepts, and the
output it shows for `check` and `calc` is what they print."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.S | re.M)
BLOCKS = [(kind, textwrap.dedent(body), README[: match.start()].count("\n") + 1)
          for match in FENCE.finditer(README) for kind, body in [(match.group(2), match.group(3))]]
YAML = [(body, line) for kind, body, line in BLOCKS if kind == "yaml"]
runner = CliRunner()


def _spec_for(body: str) -> str:
    """A YAML block as a whole spec: itself, or a `train:` section on the zoo's ResNet-18
    (the README's phases freeze `before:fc`)."""
    if body.lstrip().startswith("train:"):
        return cnnspec.load_spec("resnet18").source + "\n" + body
    return body


@pytest.mark.parametrize(("body", "line"), YAML, ids=[f"README.md:{line}" for _, line in YAML])
def test_every_yaml_block_checks(body: str, line: int, tmp_path: Path) -> None:
    name = re.search(r"#\s*(\w+\.yaml)", body)
    if name and name.group(1) == "net.yaml":  # the error example: its output is compared below
        return
    path = tmp_path / "block.yaml"
    path.write_text(_spec_for(body), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, f"README.md:{line}: {result.output}"


def _commands() -> list[tuple[list[str], int]]:
    """Every cnnspec command line of the console and shell blocks, with its README line."""
    found = []
    for kind, body, line in BLOCKS:
        if kind not in ("console", "sh", "bash"):
            continue
        text = body.replace("\\\n", " ")
        for row in text.splitlines():
            row = row.strip().removeprefix("$ ").strip()
            if "cnnspec" not in row.split("#")[0] or row.startswith(("SPARK_HOME", "make")):
                continue
            words = shlex.split(row, comments=True)
            start = words.index("cnnspec") + 1 if "cnnspec" in words else None
            if start is None or (start > 1 and words[start - 2:start] != ["-m", "cnnspec"] and words[0] != "cnnspec"):
                continue
            words = words[start:]
            cut = next((i for i, w in enumerate(words) if w in (">", ">>", "|", "&&", "&", "2>")), len(words))  # the shell's part
            found.append((words[:cut], line))
    return found


COMMANDS = _commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 25


@pytest.mark.parametrize(("words", "line"), COMMANDS, ids=[f"README.md:{line}:{' '.join(w[:2])}" for w, line in COMMANDS])
def test_every_command_is_one_the_cli_accepts(words: list[str], line: int) -> None:
    """Parsed by the CLI itself (every option, argument and choice), without running."""
    command = typer.main.get_command(app)
    context = command.make_context("cnnspec", list(words), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group (typer's own, not a click.Group subclass)
        remaining = [*getattr(context, "_protected_args", []), *context.args]  # click keeps the subcommand's words here
        if not remaining:
            break
        name, found, rest = command.resolve_command(context, remaining)
        assert found is not None, f"README.md:{line}: no command '{name}'"
        command, context = found, found.make_context(str(name), rest, parent=context)


def _shown_output(command: str) -> tuple[str, int]:
    for kind, body, line in BLOCKS:
        if kind == "console" and body.startswith(f"$ {command}\n"):
            return body.split("\n", 1)[1], line
    raise AssertionError(f"README shows no output of {command}")


@pytest.mark.parametrize("command", ["cnnspec check lenet5", "cnnspec calc conv --size 32 --kernel 5 --padding 2"])
def test_shown_output_is_printed(command: str) -> None:
    shown, line = _shown_output(command)
    result = runner.invoke(app, command.split()[1:], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    printed = [row.rstrip() for row in result.output.splitlines()]
    at = 0
    for row in shown.rstrip("\n").splitlines():
        if row.strip() == "..." or row.rstrip().endswith("..."):
            continue  # the README leaves rows out
        assert row.rstrip() in printed[at:], f"README.md:{line}: {row!r} is not printed (in order)"
        at = printed.index(row.rstrip(), at) + 1


def test_the_error_example_prints_what_the_readme_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = next(body for body, _ in YAML if re.search(r"#\s*net\.yaml", body))
    (tmp_path / "net.yaml").write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    shown, line = _shown_output("cnnspec check net.yaml")
    result = runner.invoke(app, ["check", "net.yaml"], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    assert result.output.splitlines() == shown.rstrip("\n").splitlines(), f"README.md:{line}"


def test_the_demo_figures_are_what_the_seeded_demo_gives(tmp_path: Path) -> None:
    """The front page's training figures come from the seeded run, not from memory: the
    same command, the same seed, within one or two of the 359 validation digits (other
    CPUs round differently)."""
    pytest.importorskip("torch")
    shown = re.search(r"done: val_accuracy ([0-9.]+), val_loss ([0-9.]+) after 10 epochs", README)
    assert shown is not None, "the README's demo no longer shows the final line"
    result = cnnspec.train("lenet5", "torch", out=tmp_path / "demo")
    assert abs(result.final["val_accuracy"] - float(shown.group(1))) <= 0.006
    assert abs(result.final["val_loss"] - float(shown.group(2))) <= 0.02

