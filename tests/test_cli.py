"""The command line as a user meets it: output, exit status, and no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app

runner = CliRunner()


def cnnspec_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh process (exit codes, stderr, imports)."""
    return subprocess.run(
        [sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_check_zoo_name_from_any_directory(tmp_path: Path) -> None:
    for name in ("lenet5", "lenet5.yaml"):
        result = cnnspec_process("check", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "61,706" in result.stdout and "Total" in result.stdout


def test_check_a_file_path(tmp_path: Path) -> None:
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\ninput: {shape: [3, 8, 8]}\nlayers:\n  - conv2d: {filters: 4, kernel: 3}\n")
    result = runner.invoke(app, ["check", str(spec)])
    assert result.exit_code == 0
    assert "4x6x6" in result.stdout and "112" in result.stdout  # 4*3*9 + 4


def test_check_json_format() -> None:
    result = runner.invoke(app, ["check", "resnet18", "--format", "json"])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["name"] == "resnet18"
    assert summary["input_shape"] == [3, 224, 224]
    assert summary["output_shape"] == [1000]
    assert summary["params"] == 11_689_512
    assert summary["non_trainable"] == 9_600
    assert summary["macs"] == cnnspec.load_spec("resnet18").macs
    first = summary["layers"][0]
    assert first == {**first, "name": "conv1", "kind": "conv2d", "output_shape": [64, 112, 112], "params": 9408}
    assert first["macs"] == 112 * 112 * 64 * 3 * 49


def test_errors_go_to_stderr_with_locations_and_exit_1(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text("name: net\ninput: {shape: [3, 7, 7]}\nlayers:\n  - conv2d: {filters: 8, kernel: 3, stride: 3}\n    name: c1\n  - dense: {unit: 3}\n")
    result = cnnspec_process("check", "net.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("net.yaml:4:5: error: conv2d 'c1': window does not fit")
    assert lines[1] == "net.yaml:6:13: error: dense 'dense_1': unknown key 'unit' (did you mean 'units'?)"  # one error, not two
    assert lines[2] == "2 errors"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\x00\x01\x02binary", "file is binary"),
        (b'name: !!python/object/apply:os.system ["echo hi"]\n', "unsupported YAML tag '!!python/object/apply:os.system'"),
        (b"[1, 2\n", "invalid YAML"),
    ],
)
def test_bad_files_exit_1_without_traceback(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    result = cnnspec_process("check", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("bad.yaml:") and message in result.stderr
    assert "Traceback" not in result.stderr and "hi" not in result.stdout


def test_usage_errors_exit_2() -> None:
    missing = runner.invoke(app, ["check", "no/such/spec.yaml"])
    assert missing.exit_code == 2
    assert "no such file 'no/such/spec.yaml'" in missing.output
    typo = runner.invoke(app, ["check", "resnet19"])
    assert typo.exit_code == 2 and "did you mean 'resnet18'?" in typo.output
    assert runner.invoke(app, ["check", "lenet5", "--format", "xml"]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_zoo_lists_every_spec_with_counts() -> None:
    result = runner.invoke(app, ["zoo"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for name in cnnspec.zoo_names():
        assert name in result.stdout
    assert "138,357,544" in result.stdout and "15.47 G" in result.stdout


def test_calc_conv_works_the_formula() -> None:
    result = runner.invoke(app, ["calc", "conv", "--size", "32", "--kernel", "5", "--padding", "2"])
    assert result.exit_code == 0
    assert "(32 + 2*2 - 1*(5-1) - 1) / 1 + 1" in result.stdout
    assert result.stdout.rstrip().endswith("= 32")


def test_calc_refuses_a_fraction_unless_rounding_is_given() -> None:
    refused = runner.invoke(app, ["calc", "conv", "--size", "7", "--kernel", "3", "--stride", "3"])
    assert refused.exit_code == 1
    assert "7/3 = 2.33" in refused.output
    floored = runner.invoke(app, ["calc", "conv", "-n", "7", "-k", "3", "-s", "3", "--rounding", "floor"])
    assert floored.exit_code == 0 and floored.stdout.rstrip().endswith("-> 2 with rounding floor")


def test_calc_pool_defaults_stride_to_kernel_and_ceil() -> None:
    result = runner.invoke(app, ["calc", "pool", "--size", "112", "--kernel", "3", "--stride", "2", "--rounding", "ceil"])
    assert result.exit_code == 0
    assert "-> 56 with rounding ceil" in result.stdout
    plain = runner.invoke(app, ["calc", "pool", "--size", "28", "--kernel", "2"])
    assert "(28 + 2*0 - 2) / 2 + 1" in plain.stdout and plain.stdout.rstrip().endswith("= 14")


def test_internal_errors_say_so_without_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import cnnspec.cli.app as cli
    import cnnspec.graph.load

    def broken(_: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cnnspec.graph.load, "load_spec", broken)
    monkeypatch.setattr(sys, "argv", ["cnnspec", "check", "lenet5"])
    monkeypatch.delenv("CNNSPEC_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 3
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err


def test_no_framework_on_the_check_path() -> None:
    """`python -X importtime -m cnnspec check vgg16` must not import any framework, nor
    NumPy, Pillow or FAISS: checking a spec is arithmetic and starts at once."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnspec", "check", "vgg16"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    imported = {name.split(".")[0] for name in modules}
    assert "cnnspec" in imported and "pydantic" in imported  # the probe sees real imports
    assert not imported & {"torch", "tensorflow", "keras", "jax", "onnx", "onnxruntime", "numpy", "PIL", "faiss"}
    assert not imported & {"typer", "click", "rich"}  # the CLI framework costs more than the check
    # vgg16 has no train: section, so the training models are neither imported nor built
    assert "cnnspec.layers.conv" in modules and not modules & {"cnnspec.spec.training", "cnnspec.graph.tuning"}


def test_piped_output_never_cuts_names_or_numbers() -> None:
    env = {**os.environ, "COLUMNS": "60"}
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "check", "googlenet"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0
    assert "…" not in result.stdout
    assert "global_avgpool2d" in result.stdout and "1,498,376,192" in result.stdout
    assert "inception3a.branch4.1.relu_1" in result.stdout


TYPER_PATH = "import sys; sys.argv[0] = 'cnnspec'; from cnnspec.cli.app import main; main()"


@pytest.mark.parametrize("argv", [
    ["check", "lenet5"],
    ["check", "googlenet"],
    ["check", "resnet18", "--format", "json"],
    ["check", "-f", "json", "lenet5.yaml"],
    ["check", "--format=table", "vgg16"],
    ["check", "net.yaml"],  # a spec error: exit 1, diagnostics on stderr
    ["check", "resnet19"],  # no such spec: exit 2 with a suggestion
    ["check", "nothing/here.yaml"],
])
def test_check_without_typer_is_the_typer_command(argv: list[str], tmp_path: Path) -> None:
    """`cnnspec check` runs without Typer (cnnspec.launch); the Typer command must give the
    same output, errors and exit status."""
    (tmp_path / "net.yaml").write_text("name: net\ninput: {shape: [3, 7, 7]}\nlayers:\n  - conv2d: {filters: 8, kernel: 9}\n")
    env = {**os.environ, "COLUMNS": "100"}
    plain = subprocess.run([sys.executable, "-m", "cnnspec", *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    typer = subprocess.run([sys.executable, "-c", TYPER_PATH, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert (plain.returncode, plain.stdout, plain.stderr) == (typer.returncode, typer.stdout, typer.stderr)
    assert plain.returncode == {"net.yaml": 1, "resnet19": 2, "nothing/here.yaml": 2}.get(argv[-1], 0), plain.stderr
    if plain.returncode == 1:
        assert "net.yaml:4:" in plain.stderr and plain.stderr.endswith("1 error\n")


def test_plain_check_takes_only_what_it_can_run_alone() -> None:
    from cnnspec.cli.launch import plain_check

    assert plain_check(["check", "vgg16"]) == ("vgg16", "table")
    assert plain_check(["check", "-f", "json", "a.yaml"]) == ("a.yaml", "json")
    assert plain_check(["check", "a.yaml", "--format=json"]) == ("a.yaml", "json")
    for argv in (["check"], ["check", "--help"], ["check", "a", "b"], ["check", "--format", "yaml", "a"], ["check", "-f"],
                 ["check", "a", "--verbose"], ["zoo"], ["--version"], [], ["calc", "check"]):
        assert plain_check(argv) is None, argv  # Typer parses it, and explains any mistake


def test_a_closed_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    # 3,000 rows: far more than a pipe holds, so the writer meets the closed pipe for sure
    layers = "".join("  - relu: {}\n" for _ in range(3000))
    (tmp_path / "deep.yaml").write_text(f"name: deep\ninput: {{shape: [4, 8, 8]}}\nlayers:\n{layers}")
    shell = f"{sys.executable} -m cnnspec check deep.yaml | head -n 1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout == "deep: 4x8x8 -> 4x8x8\n"
    assert result.stderr == "" and result.returncode == 1


def test_only_the_invoked_command_is_built_and_it_behaves_the_same() -> None:
    from cnnspec.cli.app import _invoked_only

    for argv in (["check", "--help"], ["calc", "conv", "--help"], ["eval", "--help"], ["import", "--help"], ["check", "--format", "yaml", "x"]):
        narrowed = _invoked_only(argv)
        assert narrowed is not app and len(narrowed.registered_commands) + len(narrowed.registered_groups) == 1
        full, fast = runner.invoke(app, argv), runner.invoke(narrowed, argv)
        assert (fast.exit_code, fast.output) == (full.exit_code, full.output), argv
    for argv in (["--help"], ["chek", "lenet5"], ["--version"], []):
        assert _invoked_only(argv) is app  # nothing to narrow to: every command is listed or suggested
    assert len(app.registered_commands) > 10  # the module's app is never narrowed in place


def test_version_and_help() -> None:
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"cnnspec {cnnspec.__version__}"
    helped = runner.invoke(app, ["--help"])
    assert helped.exit_code == 0
    for command in ("check", "zoo", "schema", "calc"):
        assert command in helped.stdout


def test_zoo_name_prints_the_spec_to_edit_as_ones_own(tmp_path: Path) -> None:
    from cnnspec.graph.load import load_spec as load

    printed = CliRunner().invoke(app, ["zoo", "resnet18"])
    assert printed.exit_code == 0, printed.output
    mine = tmp_path / "mine.yaml"
    mine.write_text(printed.output)
    assert load(str(mine)).params == load("resnet18").params == 11_689_512
    wrong = CliRunner().invoke(app, ["zoo", "resnet19"])
    assert wrong.exit_code == 2 and "did you mean 'resnet18'" in wrong.output
