"""The README and the reference in docs/ cannot drift from the program: every YAML block
checks (a spec, or a `train:` section on a zoo spec), every `cnnspec` command they show is
one the CLI accepts, the output they show for `check` and `calc` is what those print, every
Python block names real functions with arguments they take, and the site builds strictly."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.S | re.M)


def _blocks(path: Path) -> list[tuple[str, str, str]]:
    """(kind, body, "FILE:LINE") of every fenced block of one page."""
    text = path.read_text(encoding="utf-8")
    where = str(path.relative_to(ROOT))
    return [(match.group(2), textwrap.dedent(match.group(3)), f"{where}:{text[: match.start()].count(chr(10)) + 1}") for match in FENCE.finditer(text)]


BLOCKS = [block for page in PAGES for block in _blocks(page)]
YAML = [(body, line) for kind, body, line in BLOCKS if kind == "yaml"]
PYTHON = [(body, line) for kind, body, line in BLOCKS if kind == "python"]
runner = CliRunner()


def _error_example(body: str) -> str | None:
    """The file name of a YAML block the pages then show `cnnspec check` failing on."""
    name = re.search(r"#\s*([\w-]+\.yaml)", body)
    if name and any(kind == "console" and text.startswith(f"$ cnnspec check {name.group(1)}\n") for kind, text, _ in BLOCKS):
        return name.group(1)
    return None


def _spec_for(body: str) -> str:
    """A YAML block as a whole spec: itself, or a `train:` section on the zoo's ResNet-18
    (the README's phases freeze `before:fc`)."""
    if body.lstrip().startswith("train:"):
        return cnnspec.load_spec("resnet18").source + "\n" + body
    return body


CHECKED = [(body, line) for body, line in YAML if _error_example(body) is None]
FAILING = [(body, line) for body, line in YAML if _error_example(body) is not None]


@pytest.mark.parametrize(("body", "line"), CHECKED, ids=[line for _, line in CHECKED])
def test_every_yaml_block_checks(body: str, line: str, tmp_path: Path) -> None:
    path = tmp_path / "block.yaml"
    path.write_text(_spec_for(body), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, f"{line}: {result.output}"


def _commands() -> list[tuple[list[str], str]]:
    """Every cnnspec command line of the console and shell blocks, with its page and line."""
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


def test_the_pages_show_commands() -> None:
    assert len(COMMANDS) > 25
    assert sum(line.startswith("README.md:") for _, line in COMMANDS) >= 5  # the tour


@pytest.mark.parametrize(("words", "line"), COMMANDS, ids=[f"{line}:{' '.join(w[:2])}" for w, line in COMMANDS])
def test_every_command_is_one_the_cli_accepts(words: list[str], line: str) -> None:
    """Parsed by the CLI itself (every option, argument and choice), without running."""
    command = typer.main.get_command(app)
    context = command.make_context("cnnspec", list(words), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group (typer's own, not a click.Group subclass)
        remaining = [*getattr(context, "_protected_args", []), *context.args]  # click keeps the subcommand's words here
        if not remaining:
            break
        name, found, rest = command.resolve_command(context, remaining)
        assert found is not None, f"{line}: no command '{name}'"
        command, context = found, found.make_context(str(name), rest, parent=context)


def _shown_output(command: str) -> tuple[str, str]:
    for kind, body, line in BLOCKS:
        if kind == "console" and body.startswith(f"$ {command}\n"):
            return body.split("\n", 1)[1], line
    raise AssertionError(f"no page shows the output of {command}")


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
        assert row.rstrip() in printed[at:], f"{line}: {row!r} is not printed (in order)"
        at = printed.index(row.rstrip(), at) + 1


@pytest.mark.parametrize(("body", "line"), FAILING, ids=[line for _, line in FAILING])
def test_each_error_example_prints_what_the_page_shows(body: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _error_example(body)
    assert name is not None
    (tmp_path / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    shown, where = _shown_output(f"cnnspec check {name}")
    result = runner.invoke(app, ["check", name], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    assert result.output.splitlines() == shown.rstrip("\n").splitlines(), where


def test_there_are_error_examples() -> None:
    assert len(FAILING) >= 2  # the README's and the spec language's


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



def _api_calls(body: str) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(body)
    return [(node.func.attr, node) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "cnnspec"]


@pytest.mark.parametrize(("body", "line"), PYTHON, ids=[line for _, line in PYTHON])
def test_every_python_block_calls_the_api_as_it_is(body: str, line: str) -> None:
    """Every ``cnnspec.NAME`` a block uses exists, and every call's arguments bind to its
    signature (a renamed or dropped keyword fails here)."""
    tree = ast.parse(body)
    names = {node.attr for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cnnspec"}
    assert names, f"{line}: the block uses no cnnspec name"
    assert [name for name in names if not hasattr(cnnspec, name)] == [], line
    for name, call in _api_calls(body):
        target = getattr(cnnspec, name)
        if not callable(target) or isinstance(target, type):
            continue
        args = [None] * len(call.args)
        kwargs = {keyword.arg: None for keyword in call.keywords if keyword.arg is not None}
        inspect.signature(target).bind(*args, **kwargs)


def test_shown_python_values_are_what_python_gives() -> None:
    """``graph.params, ...  # (25557032, ...)``: every line whose comment is a Python value,
    after a ``NAME = cnnspec.load_spec(...)`` line, is computed and compared."""
    checked = 0
    for body, line in PYTHON:
        scope: dict[str, object] = {"cnnspec": cnnspec}
        for row in body.splitlines():
            code, _, comment = row.partition("  #")
            if re.match(r"^\w+ = cnnspec\.load_spec\(", code):
                exec(code, scope)
                continue
            try:
                shown = ast.literal_eval(comment.strip())
            except (ValueError, SyntaxError):
                continue
            if len(scope) > 1 and code.strip() and not code.startswith(" "):
                assert eval(code, scope) == shown, f"{line}: {code.strip()} is not {shown!r}"
                checked += 1
    assert checked >= 2


def test_the_site_builds_strictly_and_strict_catches_a_page_left_out(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes on docs/ as it is, and fails on a copy with a page
    missing from the navigation and a link to nowhere: the rule `make test` relies on."""
    pytest.importorskip("mkdocs")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides what --strict counts
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    built = subprocess.run([*command, "--site-dir", str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n\nSee [nowhere](nowhere.md).\n", encoding="utf-8")
    broken = subprocess.run([*command, "--site-dir", str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert broken.returncode != 0
    assert "orphan.md" in broken.stdout + broken.stderr
